//! A pair thread's report, when it ends on its own: the primary hands its VM back, the backup
//! went live (the VM runs here now) or stopped without going live.

// Host-side: pair threads' reports: peers, the arbiter and timers.
#![allow(clippy::disallowed_macros)]

use super::super::lifecycle::stop_vm;
use super::super::owner::{Local, Owner};
use super::super::{Flow, Vmm};
use crate::ft::pair::{PairReport, PrimaryEnd};
use ft::status::FtState;

impl Vmm {
    /// Applies a pair thread's report to the member it belongs to.
    pub(in super::super) fn pair_report(&mut self, r: PairReport, owner: Owner) -> (Owner, Flow) {
        match (r, owner) {
            (PairReport::PrimaryEnded { vm, end }, Owner::Primary(p)) => {
                log::info!("ft: primary pair thread ended ({end:?})");
                let exit = p.powering_off && self.exit_on_guest_shutdown;
                let (reset, enable) = (p.reset_pending, p.enable.clone());
                let (owner, _) = self.primary_returned(p, vm, &end);
                let owner = match (owner, end) {
                    // The guest's reset ended the pair for a re-sync: reboot, protect again.
                    (Owner::Stopped(s), PrimaryEnd::Reboot) => self.reboot_protected(s, enable).0,
                    // The pair ended otherwise meanwhile; the guest still wants its reset.
                    (Owner::Local(l), _) if reset => self.reboot(l).0,
                    (owner, _) => owner,
                };
                (owner, if exit { Flow::Exit } else { Flow::Continue })
            }
            (
                PairReport::BackupLive {
                    config,
                    vm,
                    paused,
                    reason,
                },
                Owner::Backup(_),
            ) => {
                log::warn!(
                    "ft: this VMM holds the guest now (failover){}",
                    if paused { ", paused" } else { "" }
                );
                let owner = Owner::Local(Local {
                    config: *config,
                    vm,
                    paused,
                    announce_on_resume: paused,
                });
                // Only now: a client that sees "unprotected" on ft.status finds the VM on vm.info.
                self.publish_owner(&owner);
                if let Err(e) = self.ft_status.transition(FtState::Unprotected, &reason) {
                    log::error!("ft: status after going live: {}", errors::chain(&e));
                }
                (owner, Flow::Continue)
            }
            (PairReport::BackupEnded, Owner::Backup(_)) => {
                log::info!("ft: backup ended: {}", self.ft_status.snapshot().reason);
                (Owner::Empty, Flow::Continue)
            }
            (r, owner) => {
                // A report from a member this VMM no longer is: never let its VM run.
                log::error!("ft: ignoring a report from a pair that ended already: {r:?}");
                match r {
                    PairReport::PrimaryEnded { vm: Some(vm), .. }
                    | PairReport::BackupLive { vm, .. } => stop_vm(vm),
                    _ => {}
                }
                (owner, Flow::Continue)
            }
        }
    }
}
