//! The VMM thread: the one owner of the VM. It applies API calls and guest and thread events one
//! at a time; who holds the VM is one value ([`owner::Owner`]), and what may be done in each
//! state is one `match` ([`Vmm::apply`]) whose fall-through is [`rules::refusal`].
//!
//! Read-only calls do not wait for this thread: it publishes a [`View`] after every change, which
//! the API and metrics threads answer from.
//!
//! Files: `owner.rs` (the states and what each holds), `rules.rs` (refusals), `lifecycle.rs`
//! (create, boot, pause, resume, shutdown, reboot, delete), `snapshot.rs`, `migration.rs`,
//! `ft/` (pair members), `view.rs` (what readers see), `events.rs` (the inbox), `error.rs`.

mod error;
mod events;
mod ft;
mod lifecycle;
mod migration;
mod overrides;
mod owner;
mod rules;
mod snapshot;
mod view;

pub use error::{SnapshotFailure, VmmError};
pub use events::VmmEvent;
pub use migration::{DestinationConfigError, ReceiveError};
pub use overrides::{ArrivingConfigError, OverrideError};
pub use owner::VmState;
pub use view::View;

use crate::api::{ApiError, ApiRequest, ApiResponse};
use crate::vm::handlers::VmHandlers;
use devices::GuestEvent;
use owner::Owner;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

/// What the event loop does after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep handling events.
    Continue,
    /// `vmm.shutdown` was answered: leave the loop and exit.
    Exit,
}

/// One step of the state machine: who holds the VM afterwards, and the call's answer.
type Step = (Owner, Result<Option<serde_json::Value>, VmmError>);

/// The VMM: at most one VM, as in Cloud Hypervisor.
pub struct Vmm {
    events: Sender<VmmEvent>,
    owner: Owner,
    /// This VMM's FT role and state (`ft.status`); standalone when no pair. Pair threads update
    /// its figures and in-pair states; the VMM thread enters and leaves pairs.
    ft_status: ::ft::status::StatusHandle,
    /// Bumped at every VM build and teardown, so that events from a VM already torn down are
    /// recognised.
    boot_id: u64,
    /// VM builds so far (boots, reboots, restores, incoming migrations, failovers).
    builds: u64,
    /// Exit the process when the guest powers off (no API socket to report it through).
    exit_on_guest_shutdown: bool,
    /// The last migration that ended, for `vm.info`.
    last_migration: Option<migration::MigrationStatus>,
    view: View,
    /// An `ft.verify` pass the call just started: [`Vmm::handle_event`] hands its answer to a
    /// thread that waits for the report, so this thread does not.
    pending_verify: Option<ft::PendingVerify>,
}

impl Vmm {
    /// A VMM whose guest events and vCPU failures come back through `events`.
    pub fn new(events: Sender<VmmEvent>, exit_on_guest_shutdown: bool) -> Self {
        let ft_status = ::ft::status::StatusHandle::new();
        Vmm {
            events,
            owner: Owner::Empty,
            view: View::new(ft_status.clone()),
            ft_status,
            boot_id: 0,
            builds: 0,
            exit_on_guest_shutdown,
            last_migration: None,
            pending_verify: None,
        }
    }

    /// What the read-only calls answer from; hand it to the API and metrics servers.
    pub fn view(&self) -> View {
        self.view.clone()
    }

    /// Runs until `vmm.shutdown` (or guest power-off when so configured).
    pub fn run(mut self, rx: Receiver<VmmEvent>) {
        while let Ok(ev) = rx.recv() {
            if self.handle_event(ev) == Flow::Exit {
                break;
            }
        }
        let owner = std::mem::replace(&mut self.owner, Owner::Empty);
        self.owner = self.leave(owner);
        self.publish();
    }

    fn publish(&self) {
        self.publish_owner(&self.owner);
    }

    /// Publishes `owner` before it is installed, where a status change must not be seen first.
    fn publish_owner(&self, owner: &Owner) {
        self.view
            .publish(owner, self.last_migration.as_ref(), self.builds);
    }

    /// Applies one event.
    pub fn handle_event(&mut self, ev: VmmEvent) -> Flow {
        if let VmmEvent::ActivateDevice(activation) = ev {
            // Whoever holds the VM (this thread, a pair or a migration thread), the device
            // starts here; a stale request (the VM was reset, paused or torn down since) is a
            // no-op. Nothing to publish: the owner did not change.
            activation.run();
            return Flow::Continue;
        }
        if let VmmEvent::Api(req, reply) = ev {
            let exit = matches!(req, ApiRequest::VmmShutdown);
            // Published before the answer: a caller's next read sees what its call did.
            let r = self.handle_api(req);
            let ok = r.is_ok();
            match self.pending_verify.take() {
                // ft.verify started a pass: answered once it ends, off this thread.
                Some(v) if ok => v.answer_later(reply),
                // The caller may have gone away; nothing to do about it here.
                _ => {
                    let _ = reply.send(r);
                }
            }
            return if exit && ok {
                Flow::Exit
            } else {
                Flow::Continue
            };
        }
        let owner = std::mem::replace(&mut self.owner, Owner::Empty);
        let (owner, flow) = self.on_event(ev, owner);
        self.owner = owner;
        self.publish();
        flow
    }

    fn on_event(&mut self, ev: VmmEvent, owner: Owner) -> (Owner, Flow) {
        let current = |boot_id: u64| boot_id == self.boot_id;
        match ev {
            VmmEvent::GuestReset { boot_id } if current(boot_id) => {
                devices::guest_warn!("guest requested a reset");
                let owner = match owner {
                    Owner::Local(l) => {
                        let (owner, r) = self.reboot(l);
                        if let Err(e) = r {
                            devices::guest_error!("reset failed: {}", errors::chain(&e));
                        }
                        owner
                    }
                    // Carried to the backup without waiting (the pair may still be syncing):
                    // the pair thread reports once it has ended the pair for the reboot.
                    Owner::Primary(mut p) => {
                        p.reset_pending = true;
                        p.pair.command(crate::ft::pair::PairCommand::GuestReset);
                        Owner::Primary(p)
                    }
                    other => other,
                };
                (owner, Flow::Continue)
            }
            VmmEvent::GuestPowerOff { boot_id } if current(boot_id) => {
                devices::guest_info!("guest powered off");
                self.guest_stopped(owner)
            }
            VmmEvent::VcpuFailed { boot_id, id, error } if current(boot_id) => {
                devices::guest_error!("vCPU {id} failed: {error}; shutting the VM down");
                self.guest_stopped(owner)
            }
            VmmEvent::MigrationSent { vm, result } => match owner {
                Owner::MigratingOut(o) => (self.migration_sent(o, vm, result), Flow::Continue),
                other => {
                    devices::guest_error!(
                        "a migration thread handed back a VM nobody sent; stopping it"
                    );
                    lifecycle::stop_vm(vm);
                    (other, Flow::Continue)
                }
            },
            VmmEvent::MigrationReceived { result } => match owner {
                Owner::Receiving(i) => (self.migration_received(i, result), Flow::Continue),
                other => {
                    if let Ok((_, vm)) = result {
                        devices::guest_error!(
                            "an incoming migration ended while not receiving; stopping it"
                        );
                        lifecycle::stop_vm(vm);
                    }
                    (other, Flow::Continue)
                }
            },
            VmmEvent::Pair(report) => self.pair_report(report, owner),
            VmmEvent::Api(..) | VmmEvent::ActivateDevice(_) => (owner, Flow::Continue),
            stale => {
                devices::guest_debug!("ignoring event from an earlier boot: {stale:?}");
                (owner, Flow::Continue)
            }
        }
    }

    /// Answers one API call. An `ft.verify` that starts a pass answers `Ok(None)` here and
    /// leaves the pass in `pending_verify`: only [`Vmm::handle_event`] delivers its report.
    pub fn handle_api(&mut self, req: ApiRequest) -> ApiResponse {
        // A pass left by an earlier direct call must never answer this one.
        self.pending_verify = None;
        let owner = std::mem::replace(&mut self.owner, Owner::Empty);
        let (owner, r) = self.apply(req, owner);
        self.owner = owner;
        self.publish();
        r.map_err(ApiError::from)
    }

    /// The one place that decides what a request may do in the current state: every allowed
    /// (request, owner) pair is an arm; everything else is refused by [`rules::refusal`].
    fn apply(&mut self, req: ApiRequest, owner: Owner) -> Step {
        use ApiRequest as R;
        use Owner as O;
        let ft = (self.ft_status.role(), self.ft_status.state());
        let protected = ft.1 != ::ft::status::FtState::Syncing;
        let standalone = ft.0 == ::ft::status::Role::Standalone;
        let reprotect = ft
            == (
                ::ft::status::Role::Primary,
                ::ft::status::FtState::Unprotected,
            );
        match (req, owner) {
            // Reads: the same answers the API thread gives from the view.
            (R::VmmPing, o) => (o, Ok(Some(self.view.ping()))),
            (R::VmInfo, o) => (o, self.view.info().map(Some)),
            (R::VmCounters, o) => (o, self.view.counters().map(Some)),
            (R::FtStatus, o) => (o, Ok(Some(self.view.ft_status()))),
            (R::Metrics, o) => (o, Ok(Some(serde_json::Value::String(self.view.metrics())))),
            // A pair member ends its pair on purpose before the process exits.
            (R::VmmShutdown, o) => (self.leave(o), Ok(None)),

            (R::VmCreate(cfg), O::Empty) => self.create(*cfg),
            (R::VmRestore(c), O::Empty) => self.restore(*c),
            (R::VmReceiveMigration(c), O::Empty) => self.receive_migration(*c),
            (R::FtReceive(c), O::Empty) if standalone => self.ft_receive(*c),

            (R::VmBoot, O::Stopped(s)) => self.boot(s),
            (R::VmDelete, O::Stopped(_) | O::Migrated(_) | O::Fenced(_)) => (O::Empty, Ok(None)),

            (R::VmDelete, O::Local(l)) => {
                lifecycle::stop_vm(l.vm);
                (O::Empty, Ok(None))
            }
            // The operator checked the destination: it runs the VM (delete) or not (resume).
            (R::VmDelete, O::InDoubt(d)) => {
                lifecycle::stop_vm(d.vm);
                (O::Empty, Ok(None))
            }
            (R::VmResumeForced, O::InDoubt(d)) => self.force_resume(d),
            // Forcing only matters where a migration's outcome is unknown.
            (R::VmResumeForced, o) => self.apply(R::VmResume, o),
            (R::VmPause, O::Local(l)) if !l.paused => self.pause(l),
            (R::VmResume, O::Local(l)) if l.paused => self.resume(l),
            (R::VmShutdown, O::Local(l)) => (O::Stopped(self.shut_down(l)), Ok(None)),
            (R::VmReboot, O::Local(l)) => self.reboot(l),
            (R::VmSnapshot(c), O::Local(l)) if l.paused => self.snapshot(l, &c),
            (R::VmSendMigration(c), O::Local(l)) if !l.paused => self.send_migration(l, &c),
            (R::FtEnable(c), O::Local(l)) if !l.paused && (standalone || reprotect) => {
                self.ft_enable(l, *c, reprotect)
            }

            (R::VmPause, O::Primary(p)) if protected && !p.paused => self.ft_pause(p, true),
            (R::VmResume, O::Primary(p)) if protected && p.paused => self.ft_pause(p, false),
            (R::VmShutdown, O::Primary(p)) if protected => self.ft_shutdown(p),
            (R::VmReboot, O::Primary(p)) if protected => self.ft_reboot(p),
            (R::FtVerify(c), O::Primary(p)) if ft.1 == ::ft::status::FtState::Protected => {
                self.ft_verify(p, &c)
            }
            (R::FtDisable, O::Primary(p)) => self.ft_disable_primary(p),

            (R::FtPromote, O::Backup(b)) if protected => {
                b.pair.command(crate::ft::pair::PairCommand::Promote);
                (O::Backup(b), Ok(None))
            }
            (R::FtDisable, O::Backup(b)) => {
                b.pair.command(crate::ft::pair::PairCommand::Disable);
                (O::Backup(b), Ok(None))
            }
            // A halted or failed-over member goes back to standalone; a fenced one may then
            // run its guest again, on the operator's word.
            (R::FtDisable, o) if !standalone => {
                self.ft_status.disable("ft.disable");
                let o = match o {
                    O::Fenced(f) => O::Stopped(owner::Stopped {
                        config: f.config,
                        booted: true,
                    }),
                    o => o,
                };
                (o, Ok(None))
            }

            (req, o) => {
                let e = rules::refusal(&req, o.kind(), ft);
                (o, Err(e))
            }
        }
    }

    /// The guest powered off, or a vCPU failed: stop the VM (a primary ends its pair first).
    fn guest_stopped(&mut self, owner: Owner) -> (Owner, Flow) {
        match owner {
            Owner::Local(l) => {
                let owner = Owner::Stopped(self.shut_down(l));
                let flow = if self.exit_on_guest_shutdown {
                    Flow::Exit
                } else {
                    Flow::Continue
                };
                (owner, flow)
            }
            Owner::Primary(p) => (self.ft_guest_stopped(p), Flow::Continue),
            other => (other, Flow::Continue),
        }
    }

    /// Starts a new boot generation and the handlers its VM reports through.
    fn new_boot_handlers(&mut self) -> VmHandlers {
        self.boot_id += 1;
        self.builds += 1;
        let boot_id = self.boot_id;
        let events = self.events.clone();
        let guest_events = Arc::new(move |e: GuestEvent| {
            let ev = match e {
                GuestEvent::Reset => VmmEvent::GuestReset { boot_id },
                GuestEvent::PowerOff => VmmEvent::GuestPowerOff { boot_id },
            };
            let _ = events.send(ev);
        });
        let events = self.events.clone();
        let on_failure = Arc::new(move |id: u8, error: String| {
            let _ = events.send(VmmEvent::VcpuFailed { boot_id, id, error });
        });
        let events = self.events.clone();
        let activate = Arc::new(move |a| {
            // The VMM thread's loop may have ended (shutting down); the VM goes with it.
            let _ = events.send(VmmEvent::ActivateDevice(a));
        });
        VmHandlers {
            guest_events,
            on_failure,
            activate,
        }
    }

    /// Events already queued by the old VM's threads now refer to a stale boot.
    fn forget_boot(&mut self) {
        self.boot_id += 1;
    }
}
