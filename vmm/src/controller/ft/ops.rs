//! VM operations on a pair member, carried to the backup by the primary's pair thread: pause,
//! resume, shutdown, reboot, the guest's own power-off, and leaving the pair when the VMM exits.

use super::super::lifecycle::stop_vm;
use super::super::owner::{Backup, Fenced, Local, Owner, Primary, Stopped};
use super::super::{Step, Vmm, VmmError};
use crate::api::types::FtEnableConfig;
use crate::ft::pair::{PairCommand, PrimaryEnd, OP_TIMEOUT};
use crate::vm::Vm;
use std::time::Duration;

/// Longest an `ft.disable` call waits for the pair to end before answering (the API's own
/// answer timeout is 60 s).
const DISABLE_WAIT_MAX: Duration = Duration::from_secs(20);

impl Vmm {
    /// `vm.pause` (`pause`) or `vm.resume` on a protected primary: the guest pauses after a
    /// checkpoint that tells the backup so, and stays protected.
    pub(in super::super) fn ft_pause(&mut self, mut p: Primary, pause: bool) -> Step {
        let (action, op): (_, fn(_) -> _) = if pause {
            ("pause", PairCommand::Pause)
        } else {
            ("resume", PairCommand::Resume)
        };
        // The pair thread answers within OP_TIMEOUT; a little more for the thread's own turn.
        let r = p.pair.op(op, OP_TIMEOUT + Duration::from_secs(1));
        let r = match r {
            Ok(()) => {
                p.paused = pause;
                log::info!("ft: guest {action}d; still protected");
                Ok(None)
            }
            Err(crate::ft::pair::PairError::Ended) => Err(VmmError::FtEndedMeanwhile),
            Err(source) => Err(VmmError::FtOp { action, source }),
        };
        (Owner::Primary(p), r)
    }

    /// Ends a protected primary's pair synchronously with `c`; what the VM becomes, and the
    /// error to answer with if the pair did not end as asked. `Err(p)`: the pair thread had
    /// ended on its own just now; its report brings the VM back.
    fn ft_end_primary(
        &mut self,
        mut p: Primary,
        c: PairCommand,
    ) -> Result<(Owner, Option<VmmError>), Box<Primary>> {
        let Some((vm, end)) = p.pair.end(c) else {
            return Err(Box::new(p));
        };
        log::info!("ft: primary pair thread ended ({end:?})");
        Ok(self.primary_returned(p, vm, &end))
    }

    /// `ft.disable` on a primary: answered once the pair has ended (the backup confirmed, or
    /// this member won the next generation), so that the caller's next `ft.status` says
    /// standalone. An arbiter that does not answer within a few failure timeouts leaves it
    /// settling in the background (output held; ft.status says so); its report ends it.
    pub(in super::super) fn ft_disable_primary(&mut self, mut p: Primary) -> Step {
        let timeout = Duration::from_millis(p.enable.failure_timeout_ms.unwrap_or(1000));
        let bound = (timeout * 3 + Duration::from_secs(1)).min(DISABLE_WAIT_MAX);
        match p.pair.end_within(PairCommand::Disable, bound) {
            Some((vm, end)) => {
                log::info!("ft: primary pair thread ended ({end:?})");
                match self.primary_returned(p, vm, &end) {
                    (owner, None) => (owner, Ok(None)),
                    (owner, Some(e)) => (owner, Err(e)),
                }
            }
            None => (Owner::Primary(p), Ok(None)),
        }
    }

    /// `vm.shutdown` on a protected primary: the pair ends on purpose, the backup discards.
    pub(in super::super) fn ft_shutdown(&mut self, p: Primary) -> Step {
        match self.ft_end_primary(p, PairCommand::Shutdown("vm.shutdown on the primary")) {
            Ok((owner, None)) => (owner, Ok(None)),
            Ok((owner, Some(e))) => (owner, Err(e)),
            Err(p) => (Owner::Primary(*p), Err(VmmError::FtEndedMeanwhile)),
        }
    }

    /// `vm.reboot` on a protected primary: the backup discards its copy and waits; the guest
    /// reboots; FT is enabled again with the same settings (a fresh initial sync). Should that
    /// fail, the guest runs on unprotected (see ft.status) and `ft.enable` can protect it again.
    pub(in super::super) fn ft_reboot(&mut self, p: Primary) -> Step {
        let enable = p.enable.clone();
        let s = match self.ft_end_primary(p, PairCommand::Reboot) {
            Ok((Owner::Stopped(s), None)) => s,
            Ok((owner, e)) => return (owner, Err(e.unwrap_or(VmmError::FtEndedMeanwhile))),
            Err(p) => return (Owner::Primary(*p), Err(VmmError::FtEndedMeanwhile)),
        };
        self.reboot_protected(s, enable)
    }

    /// Boots the stopped guest again and protects it with the same settings (a fresh sync);
    /// should that fail, the guest runs unprotected and ft.status says why.
    pub(in super::super) fn reboot_protected(
        &mut self,
        s: Stopped,
        enable: FtEnableConfig,
    ) -> Step {
        let vm = match self.build(&s.config) {
            Ok(vm) => vm,
            Err(e) => return (Owner::Stopped(s), Err(e)),
        };
        self.ft_status.set_guest_paused(false);
        let l = Local {
            config: s.config,
            vm,
            paused: false,
            announce_on_resume: false,
        };
        let (owner, r) = self.ft_enable(l, enable, true);
        if let Err(e) = r {
            let why = format!(
                "vm.reboot: the rebooted guest runs UNPROTECTED: ft.enable failed: {}",
                errors::chain(&e)
            );
            log::error!("ft: {why}");
            // The operator polling ft.status must see it, not only the log.
            self.ft_status.note(&why);
        }
        (owner, Ok(None))
    }

    /// The guest powered off (or a vCPU failed) on an FT primary: end the pair on purpose; the
    /// VM is stopped when the pair thread hands it back.
    pub(in super::super) fn ft_guest_stopped(&mut self, mut p: Primary) -> Owner {
        p.powering_off = true;
        p.pair.command(PairCommand::PowerOff);
        Owner::Primary(p)
    }

    /// `vmm.shutdown` on a primary: the pair ends on purpose (the backup discards) before the
    /// process exits.
    pub(in super::super) fn ft_leave_primary(&mut self, p: Primary) -> Owner {
        match self.ft_end_primary(p, PairCommand::Shutdown("vmm.shutdown on the primary")) {
            Ok((owner, _)) => owner,
            Err(p) => Owner::Primary(*p),
        }
    }

    /// `vmm.shutdown` on a backup: it leaves the pair; its primary goes on unprotected.
    pub(in super::super) fn ft_leave_backup(&mut self, mut b: Backup) -> Owner {
        let _ = b.pair.end(PairCommand::Leave);
        Owner::Empty
    }
}

impl Vmm {
    /// What a primary's VM becomes once its pair thread hands it back, and the error an API
    /// call that ended the pair answers with when it did not end as asked.
    pub(super) fn primary_returned(
        &mut self,
        p: Primary,
        vm: Option<Vm>,
        end: &PrimaryEnd,
    ) -> (Owner, Option<VmmError>) {
        let Primary {
            config,
            paused,
            powering_off,
            ..
        } = p;
        let vm = match (vm, end) {
            (Some(vm), PrimaryEnd::Alone | PrimaryEnd::Disabled) if !powering_off => {
                // A guest paused through the pair stays paused (FtPrimary hands it back so).
                if paused {
                    self.ft_status.set_guest_paused(true);
                }
                let l = Local {
                    config,
                    vm,
                    paused,
                    announce_on_resume: false,
                };
                return (Owner::Local(l), None);
            }
            (vm, _) => vm,
        };
        if let Some(vm) = vm {
            stop_vm(vm);
        }
        self.forget_boot();
        let reason = || self.ft_status.snapshot().reason;
        match end {
            PrimaryEnd::Halted => {
                let reason = reason();
                let e = VmmError::Fenced {
                    reason: reason.clone(),
                };
                (Owner::Fenced(Fenced { config, reason }), Some(e))
            }
            PrimaryEnd::Unresolved => {
                let reason = reason();
                let e = VmmError::FtEndUnconfirmed {
                    reason: reason.clone(),
                };
                (Owner::Fenced(Fenced { config, reason }), Some(e))
            }
            _ => (
                Owner::Stopped(Stopped {
                    config,
                    booted: true,
                }),
                None,
            ),
        }
    }
}
