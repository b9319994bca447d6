//! `vm.send-migration` and `vm.receive-migration`: the VMM thread checks, connects and runs the
//! handshake (so that a bad URL, an unreachable peer or a wrong key is the caller's immediate 4xx
//! and the VM runs on untouched), then a migration thread runs ft's pre-copy engine and reports
//! back with a `VmmEvent`. `vm.info` shows the progress meanwhile. With a key (the same file on
//! both ends) the stream is encrypted and authenticated as an FT pair's is; without one a
//! destination listens only on a local address unless the call says `"insecure": true`.
//!
//! Hand-over (`ft::migration::handover`): once the final state has left, the source never runs
//! the VM again unless it knows the destination does not. When neither the destination's ack,
//! its Abort nor the arbiter (`arbiter` on both calls) says who runs it, the VM stays here,
//! paused, as [`InDoubt`] (`vm.info` state `OutcomeUnknown`, `migration.error` and
//! `migration.action` say why and what to do): `vm.delete` once the destination is seen running
//! it, `vm.resume` with `{"force": true}` once it is known not to.

// Host-side: migration calls and their threads.
#![allow(clippy::disallowed_macros)]

use super::overrides::{arriving_config, ArrivingConfigError};
use super::owner::{InDoubt, Incoming, Local, Outgoing, Owner};
use super::{Step, Vmm, VmmError, VmmEvent};
use crate::api::types::ArbiterConfig;
use crate::api::{ReceiveMigrationConfig, SendMigrationConfig};
use crate::config::VmConfig;
use crate::migration::incoming::IncomingVm;
use crate::migration::source::SourceVm;
use crate::vm::memory::MemoryError;
use crate::vm::Vm;
use ft::auth::{check_listener, handshake, PairKey, Purpose, Side};
use ft::migration::{
    accept_source, send_migration, HandoverArbiter, IncomingMigration, MigrationError,
    ProgressHandle, ReceiveOptions, Role, SendOptions, SendReport,
};
use ft::transport::{self, Endpoint, Listener, TransportError};
use serde_json::json;
use std::time::Duration;

/// How long `vm.send-migration` tries to reach the destination before answering 400.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence on the stream before a migration is given up (a cut link shows up as this).
/// Generous: the source's first pass over a large, mostly zero guest sends little for a while,
/// and a loaded 2-core host stretches that.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the source waits for the destination to restore the state and ack before it takes
/// the VM back (a restore takes well under a second even for GiB guests).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a destination waits for the source to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest handshake either end waits through (a destination then takes the next connection).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the key a migration call names (400 when the file is missing, short or open to others).
fn load_key(c: Option<&crate::api::types::FtKeyConfig>) -> Result<Option<PairKey>, VmmError> {
    c.map(|k| PairKey::load(&k.path).map_err(VmmError::MigrationKey))
        .transpose()
}

/// What an operator does about a migration whose outcome is unknown.
pub(super) const IN_DOUBT_ACTION: &str = "check the destination's vm.info: if the VM runs \
    there, vm.delete it here; if it does not (its vm.receive-migration failed, or that VMM is \
    gone), vm.resume here with {\"force\": true}";

/// Opens the arbiter a migration call names, if any (the same object as FT's `arbiter`).
fn handover_arbiter(c: Option<&ArbiterConfig>) -> Result<Option<HandoverArbiter>, VmmError> {
    c.map(|c| {
        ft::arbiter::open(c)
            .map(HandoverArbiter)
            .map_err(VmmError::FtArbiter)
    })
    .transpose()
}

/// Why an incoming migration did not produce a VM here.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// No source connected and passed the handshake before the timeout.
    #[error("no source connected")]
    Accept(#[source] TransportError),
    /// The migration stream broke or carried something invalid.
    #[error("the migration stream failed")]
    Stream(#[source] MigrationError),
    /// The source's config or memory cannot be taken here; the source was told why.
    #[error("the source's VM cannot run here")]
    Refused(#[source] MigrationError),
    /// The stream completed but left no VM to run.
    #[error("the stream ended without a VM")]
    NoVm,
}

/// Why the source's VM cannot be built here.
#[derive(Debug, thiserror::Error)]
pub enum DestinationConfigError {
    /// The source's config is not valid on this host, with its overrides.
    #[error(transparent)]
    Config(#[from] ArrivingConfigError),
    /// Guest RAM of the arriving size cannot be allocated.
    #[error("cannot allocate the guest's memory")]
    Memory(#[source] MemoryError),
}

/// The current or last migration.
#[derive(Clone)]
pub(super) struct MigrationStatus {
    role: Role,
    peer: String,
    progress: ProgressHandle,
    active: bool,
    /// The report of a finished migration, or why it failed (its causes, outermost first).
    outcome: Option<Result<serde_json::Value, Vec<String>>>,
    /// What the operator must do now, if anything.
    action: Option<&'static str>,
}

impl MigrationStatus {
    fn new(role: Role, peer: String, progress: ProgressHandle) -> Self {
        MigrationStatus {
            role,
            peer,
            progress,
            active: true,
            outcome: None,
            action: None,
        }
    }

    /// Marks it ended with `outcome`.
    fn ended(mut self, outcome: Result<serde_json::Value, &dyn std::error::Error>) -> Self {
        self.active = false;
        self.outcome = Some(outcome.map_err(errors::messages));
        self
    }

    /// What `vm.info` shows under `migration`.
    pub(super) fn to_json(&self) -> serde_json::Value {
        let mut v = json!({
            "role": self.role,
            "peer": self.peer,
            "active": self.active,
            "progress": self.progress.snapshot(),
        });
        match &self.outcome {
            Some(Ok(report)) => v["report"] = report.clone(),
            Some(Err(e)) => v["error"] = json!(e.join(": ")),
            None => {}
        }
        if let Some(a) = self.action {
            v["action"] = json!(a);
        }
        v
    }

    /// Migration gauges for the metrics endpoint.
    pub(super) fn add_metrics(&self, e: &mut crate::api::metrics::Exposition) {
        let p = self.progress.snapshot();
        let role = serde_json::to_value(self.role)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let l = || vec![("role", role.clone())];
        e.gauge(
            "tandem_migration_active",
            "1 while a migration runs",
            l(),
            f64::from(u8::from(self.active)),
        );
        e.gauge(
            "tandem_migration_bytes",
            "stream bytes of the current or last migration",
            l(),
            p.bytes as f64,
        );
        e.gauge(
            "tandem_migration_round",
            "pre-copy round",
            l(),
            f64::from(p.round),
        );
        e.gauge(
            "tandem_migration_dirty_rate_pages_per_second",
            "guest dirtying rate in the last round",
            l(),
            p.dirty_rate_pages_per_s as f64,
        );
        if let Some(d) = p.downtime_ms {
            e.gauge(
                "tandem_migration_downtime_seconds",
                "guest pause of the last migration",
                l(),
                d as f64 / 1e3,
            );
        }
    }
}

impl Vmm {
    /// `vm.send-migration` on a running VM: connects and runs the handshake, then migrates it
    /// in the background.
    pub(super) fn send_migration(&mut self, l: Local, c: &SendMigrationConfig) -> Step {
        let arbiter = match handover_arbiter(c.arbiter.as_ref()) {
            Ok(a) => a,
            Err(e) => return (Owner::Local(l), Err(e)),
        };
        let (endpoint, conn, authenticated) = match connect_destination(c) {
            Ok(c) => c,
            Err(e) => return (Owner::Local(l), Err(e)),
        };
        let Local { config, vm, .. } = l;
        let counters = vm.counter_source();
        // The thread takes the VM from this slot, so it can be put back if the thread never starts.
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(vm)));
        let thread_slot = slot.clone();
        let opts = SendOptions {
            max_downtime: Duration::from_millis(c.downtime_ms.unwrap_or(300)),
            io_timeout: IO_TIMEOUT,
            commit_timeout: COMMIT_TIMEOUT,
            arbiter,
            ..SendOptions::default()
        };
        let progress = ProgressHandle::new(Role::Source);
        progress.set_authenticated(authenticated);
        let p = progress.clone();
        let events = self.events.clone();
        let config_json = serde_json::to_string(&config).unwrap_or_default();
        let vcpus = config.cpus.boot_vcpus;
        let spawned = std::thread::Builder::new()
            .name("tandem_migrate_out".into())
            .spawn(move || {
                crate::seccomp::apply(crate::seccomp::ThreadKind::Migration);
                let taken = thread_slot.lock().map(|mut s| s.take()).ok().flatten();
                let Some(mut vm) = taken else { return };
                let result = {
                    let mut source = SourceVm::new(&mut vm, vcpus, config_json);
                    send_migration(&mut source, conn, &opts, &p)
                };
                let _ = events.send(VmmEvent::MigrationSent { vm, result });
            });
        if let Err(e) = spawned {
            return match slot.lock().ok().and_then(|mut s| s.take()) {
                Some(vm) => (
                    Owner::Local(Local {
                        config,
                        vm,
                        paused: false,
                        announce_on_resume: false,
                    }),
                    Err(VmmError::MigrationThread(e)),
                ),
                None => (
                    Owner::Stopped(super::owner::Stopped {
                        config,
                        booted: true,
                    }),
                    { Err(VmmError::MigrationThread(e)) },
                ),
            };
        }
        log::info!("migrating to {endpoint}");
        let migration = MigrationStatus::new(Role::Source, endpoint.to_string(), progress);
        (
            Owner::MigratingOut(Outgoing {
                config,
                counters,
                migration,
            }),
            Ok(None),
        )
    }

    /// The migration thread is done with the VM.
    pub(super) fn migration_sent(
        &mut self,
        o: Outgoing,
        mut vm: Vm,
        result: Result<SendReport, MigrationError>,
    ) -> Owner {
        let Outgoing {
            config, migration, ..
        } = o;
        match result {
            Ok(report) => {
                let report = serde_json::to_value(report).unwrap_or_default();
                log::info!("migration completed: {report}");
                // The guest runs on the destination now; this copy must never run again.
                if let Err(e) = vm.stop() {
                    log::error!("stopping the migrated VM: {}", errors::chain(&e));
                }
                self.last_migration = Some(migration.ended(Ok(report)));
                Owner::Migrated(config)
            }
            Err(e @ MigrationError::OutcomeUnknown { .. }) => {
                let reason = errors::chain(&e);
                log::error!("migration: {reason}; {IN_DOUBT_ACTION}");
                let mut m = migration.ended(Err(&e));
                m.action = Some(IN_DOUBT_ACTION);
                self.last_migration = Some(m);
                Owner::InDoubt(InDoubt { config, vm, reason })
            }
            Err(e) => {
                log::warn!(
                    "migration failed, the VM keeps running here: {}",
                    errors::chain(&e)
                );
                self.last_migration = Some(migration.ended(Err(&e)));
                Owner::Local(Local {
                    config,
                    vm,
                    paused: false,
                    announce_on_resume: false,
                })
            }
        }
    }

    /// `vm.receive-migration` on an empty VMM: listens, then receives a VM in the background.
    pub(super) fn receive_migration(&mut self, c: ReceiveMigrationConfig) -> Step {
        let arbiter = match handover_arbiter(c.request.arbiter.as_ref()) {
            Ok(a) => a,
            Err(e) => return (Owner::Empty, Err(e)),
        };
        let (endpoint, key, listener) = match listen(&c) {
            Ok(l) => l,
            Err(e) => return (Owner::Empty, Err(e)),
        };
        let handlers = self.new_boot_handlers();
        let progress = ProgressHandle::new(Role::Destination);
        let p = progress.clone();
        let events = self.events.clone();
        let spawned = std::thread::Builder::new()
            .name("tandem_migrate_in".into())
            .spawn(move || {
                crate::seccomp::apply(crate::seccomp::ThreadKind::Migration);
                let result = (|| -> Result<(Box<VmConfig>, Vm), ReceiveError> {
                    let (conn, _) = accept_source(
                        &listener,
                        key.as_ref(),
                        ACCEPT_TIMEOUT,
                        HANDSHAKE_TIMEOUT,
                        &p,
                    )
                    .map_err(ReceiveError::Accept)?;
                    let opts = ReceiveOptions {
                        io_timeout: IO_TIMEOUT,
                        arbiter,
                        ..ReceiveOptions::default()
                    };
                    let incoming =
                        IncomingMigration::accept(conn, &opts, &p).map_err(ReceiveError::Stream)?;
                    let built = arriving_config(&incoming.identity().config, &c.host)
                        .map_err(DestinationConfigError::Config)
                        .and_then(|config| {
                            IncomingVm::new(config.clone(), handlers)
                                .map(|vm| (config, vm))
                                .map_err(DestinationConfigError::Memory)
                        });
                    let (config, mut vm) = match built {
                        Ok(b) => b,
                        Err(e) => {
                            let refused = incoming.reject(&errors::chain(&e));
                            return Err(ReceiveError::Refused(refused));
                        }
                    };
                    incoming
                        .receive_into(&mut vm)
                        .map_err(ReceiveError::Stream)?;
                    let vm = vm.into_vm().ok_or(ReceiveError::NoVm)?;
                    Ok((Box::new(config), vm))
                })();
                let _ = events.send(VmmEvent::MigrationReceived { result });
            });
        if let Err(e) = spawned {
            return (Owner::Empty, Err(VmmError::MigrationThread(e)));
        }
        log::info!("waiting for a migration on {endpoint}");
        let migration = MigrationStatus::new(Role::Destination, endpoint.to_string(), progress);
        (Owner::Receiving(Incoming { migration }), Ok(None))
    }

    /// `vm.resume` with `{"force": true}` on a VM whose migration's outcome is unknown: the
    /// operator has checked that the destination does not run it.
    pub(super) fn force_resume(&mut self, d: InDoubt) -> Step {
        log::warn!(
            "vm.resume forced on a VM whose migration's outcome was unknown ({}): the operator \
             vouches that the destination does not run it",
            d.reason
        );
        if let Some(m) = self.last_migration.as_mut() {
            m.action = None;
        }
        let l = Local {
            config: d.config,
            vm: d.vm,
            paused: true,
            announce_on_resume: true,
        };
        self.resume(l)
    }

    /// The migration thread built (or failed to build) the VM.
    pub(super) fn migration_received(
        &mut self,
        i: Incoming,
        result: Result<(Box<VmConfig>, Vm), ReceiveError>,
    ) -> Owner {
        match result {
            Ok((config, vm)) => {
                log::info!("migration received; the VM runs here now");
                self.last_migration = Some(i.migration.ended(Ok(json!({}))));
                Owner::Local(Local {
                    config: *config,
                    vm,
                    paused: false,
                    announce_on_resume: false,
                })
            }
            Err(e) => {
                log::warn!("incoming migration failed: {}", errors::chain(&e));
                self.last_migration = Some(i.migration.ended(Err(&e)));
                Owner::Empty
            }
        }
    }
}

/// Everything `vm.send-migration` checks before the VM is touched: the URL, the key file, the
/// connection, and the handshake (a destination with another key, or none, is refused here).
/// Returns where, the stream, and whether it is encrypted.
fn connect_destination(
    c: &SendMigrationConfig,
) -> Result<(Endpoint, Box<dyn ft::transport::Connection>, bool), VmmError> {
    let endpoint: Endpoint = c.destination_url.parse().map_err(VmmError::MigrationUrl)?;
    let key = load_key(c.key.as_ref())?;
    let conn =
        transport::connect(&endpoint, CONNECT_TIMEOUT).map_err(VmmError::MigrationConnect)?;
    let (conn, session) = handshake(
        conn,
        key.as_ref(),
        Side::Initiator,
        Purpose::Migration,
        HANDSHAKE_TIMEOUT,
    )
    .map_err(|e| {
        log::error!("migration to {endpoint} refused: {}", errors::chain(&e));
        VmmError::MigrationAuth(e)
    })?;
    if !session.authenticated {
        log::warn!(
            "migration to {endpoint}: the stream is NOT encrypted or authenticated (no key)"
        );
    }
    Ok((endpoint, conn, session.authenticated))
}

/// Everything `vm.receive-migration` checks before it listens: the URL, the key file, and that a
/// keyless listener is local or said `insecure` (a keyless destination runs whatever VM whoever
/// connects sends it).
fn listen(c: &ReceiveMigrationConfig) -> Result<(Endpoint, Option<PairKey>, Listener), VmmError> {
    let endpoint: Endpoint = c
        .request
        .receiver_url
        .parse()
        .map_err(VmmError::MigrationUrl)?;
    let key = load_key(c.request.key.as_ref())?;
    check_listener(&endpoint, key.is_some(), c.request.insecure)
        .map_err(VmmError::InsecureListen)?;
    let listener = Listener::bind(&endpoint).map_err(VmmError::MigrationListen)?;
    Ok((endpoint, key, listener))
}
