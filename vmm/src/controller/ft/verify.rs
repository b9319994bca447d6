//! `ft.verify` on a protected primary: one full replica scrub pass (`ft::scrub`), answered with
//! its report once every region was compared and every difference repaired and checked again.
//!
//! The VMM thread only asks the pair thread for the pass's ticket; the wait for the report (up to
//! [`MAX_WAIT`]) happens on a thread of its own ([`PendingVerify::answer_later`]), so guest
//! events and pair reports are not held up meanwhile. A pair that ends during the pass answers
//! 409; a pass that outlives the wait answers 504 and goes on (`ft.status`'s `scrub.last_verify`
//! shows its result).

// Host-side: the operator's ft.verify call decides these lines, not the guest.
#![allow(clippy::disallowed_macros)]

use super::super::owner::{Owner, Primary};
use super::super::{Step, Vmm, VmmError};
use crate::api::types::FtVerifyConfig;
use crate::api::{ApiError, ApiResponse};
use crate::ft::pair::{PairError, OP_TIMEOUT};
use ft::scrub::{ScrubError, VerifyTicket};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// How long `ft.verify` waits for its pass unless the call says.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest wait a call may ask for: the API gives up on the VMM thread's answer after 60 s.
pub const MAX_WAIT: Duration = Duration::from_secs(50);

/// A pass whose report the call still waits for.
pub(in super::super) struct PendingVerify {
    ticket: VerifyTicket,
    wait: Duration,
}

impl PendingVerify {
    /// Waits for the report on a thread of its own and sends the answer to `reply`. Should the
    /// thread not start, waits here (the VMM thread) instead: late, but answered.
    pub(in super::super) fn answer_later(self, reply: Sender<ApiResponse>) {
        let (tx, rx) = std::sync::mpsc::channel::<PendingVerify>();
        let reply2 = reply.clone();
        // Started from the VMM thread, it keeps the VMM thread's seccomp filter; it only waits
        // on a channel and sends on another.
        let spawned = std::thread::Builder::new()
            .name("tandem_ft_verify".into())
            .spawn(move || {
                if let Ok(p) = rx.recv() {
                    let _ = reply2.send(p.wait());
                }
            });
        match spawned {
            Ok(_) => {
                if let Err(std::sync::mpsc::SendError(p)) = tx.send(self) {
                    let _ = reply.send(p.wait());
                }
            }
            Err(e) => {
                log::warn!("ft.verify: cannot start a thread to wait on ({e}); waiting here");
                let _ = reply.send(self.wait());
            }
        }
    }

    /// The pass's report as the API answers it.
    fn wait(self) -> ApiResponse {
        let pass = self.ticket.pass;
        match self.ticket.wait(self.wait) {
            Ok(report) => {
                log::info!(
                    "ft.verify: pass {pass}: {} regions, {} differences ({})",
                    report.regions,
                    report.mismatches.len(),
                    if report.clean {
                        "clean"
                    } else if report.healed {
                        "all repaired"
                    } else {
                        "NOT all repaired"
                    }
                );
                serde_json::to_value(&report)
                    .map(Some)
                    .map_err(|e| ApiError::new(500, format!("cannot encode the report: {e}")))
            }
            Err(e) => Err(VmmError::FtVerify(e).into()),
        }
    }
}

impl Vmm {
    /// `ft.verify` on a protected primary: starts (or joins) a full scrub pass; the answer is
    /// sent once it ends (see [`PendingVerify`]).
    pub(in super::super) fn ft_verify(&mut self, p: Primary, c: &FtVerifyConfig) -> Step {
        let wait = c
            .timeout_ms
            .map_or(DEFAULT_WAIT, Duration::from_millis)
            .min(MAX_WAIT);
        let r = match p.pair.verify(OP_TIMEOUT + Duration::from_secs(1)) {
            Ok(ticket) => {
                log::info!("ft.verify: pass {} (waiting up to {wait:?})", ticket.pass);
                self.pending_verify = Some(PendingVerify { ticket, wait });
                Ok(None)
            }
            Err(PairError::Ended) => Err(VmmError::FtEndedMeanwhile),
            Err(source) => Err(VmmError::FtOp {
                action: "verify",
                source,
            }),
        };
        (Owner::Primary(p), r)
    }
}

/// The HTTP status of a pass that did not end in a report.
pub(in super::super) fn status(e: &ScrubError) -> u16 {
    match e {
        // The pair ended or stopped checkpointing: the state changed under the call.
        ScrubError::Ended(_) => 409,
        ScrubError::Timeout(_) => 504,
        ScrubError::Repair { .. } => 500,
    }
}
