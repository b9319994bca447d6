//! The failover decision: what a pair member does when the failure detector says the peer is
//! gone (DESIGN.md: backup failure, primary failure, invariant 3).
//!
//! ```text
//! peer silent ─ try_acquire(generation + 1) ─┬ won ─┬ primary: Protected/Syncing → Unprotected, release held output
//!                                            │      └ backup:  Protected → FailingOver → (caller goes live) → Unprotected as primary
//!                                            ├ lost / superseded: → Halted, reason names the winner
//!                                            └ error: nothing changes; retry later
//! ```
//!
//! **Arbiter errors never let anyone go live, and do not halt either.** Halting would turn a
//! storage hiccup during a real failure into a total outage, while staying put is just as safe
//! (nobody is live without a win) and keeps the chance to win once storage answers again. A
//! primary that stays keeps its output held, so its guest stalls on backpressure rather than
//! running unprotected. Retries of one generation reuse the same [`Claim`], so that a retry after
//! an error past the create (write/fsync failed) recognises its own record instead of losing to it.
//!
//! A backup still `Syncing` has no complete checkpoint to go live from (invariant 2): it halts
//! without claiming, leaving the generation to the primary if the primary is in fact alive.

use crate::arbiter::{Arbiter, Claim, Outcome};
use crate::heartbeat::Verdict;
use crate::status::{FtState, Role, StatusError, StatusHandle};
use errors::chain;
use std::time::Duration;

/// How long to wait before asking an unreachable arbiter again.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the caller must do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: the peer is alive, the detector closed, or this state has no peer to lose.
    Stay,
    /// Primary won `generation`: release all held output and run unprotected (already recorded).
    ReleaseOutputs {
        /// The generation now held.
        generation: u64,
    },
    /// Backup won `generation`: go live from the last complete checkpoint, then call
    /// [`FailoverCoordinator::went_live`] (or halt if going live fails).
    GoLive {
        /// The generation now held.
        generation: u64,
    },
    /// This member must stop: it lost, was superseded, or cannot go live. Already recorded.
    Halt {
        /// Why, naming the winner where known.
        reason: String,
    },
    /// The arbiter could not answer; nothing changed. Call again after `after` if still silent.
    Retry {
        /// The error, with its causes.
        error: String,
        /// Suggested pause.
        after: Duration,
    },
}

/// Applies the failover rules for one pair member over an [`Arbiter`] and its [`StatusHandle`].
pub struct FailoverCoordinator<A: Arbiter> {
    arbiter: A,
    status: StatusHandle,
    /// The claim of a generation whose attempt errored, reused on retry.
    pending: Option<(u64, Claim)>,
    retry_after: Duration,
    /// What this member saw go wrong before the silence (e.g. a corrupt frame), if anything.
    cause: Option<String>,
}

impl<A: Arbiter> FailoverCoordinator<A> {
    /// A coordinator for the member whose status is `status`.
    pub fn new(arbiter: A, status: StatusHandle) -> Self {
        FailoverCoordinator {
            arbiter,
            status,
            pending: None,
            retry_after: DEFAULT_RETRY_AFTER,
            cause: None,
        }
    }

    /// Records what this member saw fail before the peer fell silent (a corrupt, truncated or
    /// unexpected frame, the peer's Abort), so that the claim, the status reason of the winner
    /// and of the loser say why and not only "silent". The first cause is kept.
    pub fn set_cause(&mut self, cause: impl Into<String>) {
        if self.cause.is_none() {
            self.cause = Some(cause.into());
        }
    }

    /// `what`, followed by the recorded cause if there is one.
    fn with_cause(&self, what: String) -> String {
        match &self.cause {
            Some(c) => format!("{what}; before that: {c}"),
            None => what,
        }
    }

    /// Overrides the retry pause suggested after an arbiter error.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// The arbiter (for `current()` in status or tests).
    pub fn arbiter(&self) -> &A {
        &self.arbiter
    }

    /// Decides and records what to do on `verdict`.
    pub fn on_verdict(&mut self, verdict: Verdict) -> Decision {
        let silent_for = match verdict {
            Verdict::Failed { silent_for } => silent_for,
            Verdict::Alive | Verdict::Closed => return Decision::Stay,
        };
        let (role, state) = (self.status.role(), self.status.state());
        match (role, state) {
            (Role::Primary, FtState::Syncing | FtState::Protected) => {}
            (Role::Backup, FtState::Protected) => {}
            (Role::Backup, FtState::Syncing) => {
                return self.halt(format!(
                    "primary silent for {silent_for:?} before the first complete checkpoint: \
                     nothing to go live from"
                ))
            }
            _ => return Decision::Stay,
        }
        self.claim(
            role,
            format!("peer silent for {:.1} s", silent_for.as_secs_f64()),
        )
    }

    /// A primary ends its pair on purpose (`why`) but the backup did not confirm that it
    /// discarded its copy: the Abort may never have reached it, and it may be about to go live.
    /// Only winning the next generation lets the guest run on alone here (and a backup that
    /// claims after that loses and halts): [`Decision::ReleaseOutputs`] once won,
    /// [`Decision::Halt`] if the backup won first, [`Decision::Retry`] while the arbiter cannot
    /// answer.
    pub fn claim_end(&mut self, why: &str) -> Decision {
        let (role, state) = (self.status.role(), self.status.state());
        if role != Role::Primary || !matches!(state, FtState::Syncing | FtState::Protected) {
            return Decision::Stay;
        }
        self.claim(
            role,
            format!("ending the pair ({why}) without the backup's confirmation"),
        )
    }

    /// Claims the next generation for `role`, giving `why`.
    fn claim(&mut self, role: Role, why: String) -> Decision {
        let generation = self.status.generation().saturating_add(1);
        let claim = match self.pending.take() {
            Some((g, c)) if g == generation => c,
            _ => Claim::here(role, self.with_cause(why)),
        };
        match self.arbiter.try_acquire(generation, &claim) {
            Err(e) => {
                let error = chain(&e);
                log::warn!("arbitration for generation {generation} failed, will retry: {error}");
                self.status.set_arbiter_error(Some(error.clone()));
                self.pending = Some((generation, claim));
                Decision::Retry {
                    error,
                    after: self.retry_after,
                }
            }
            Ok(Outcome::Won) => {
                self.status.set_arbiter_error(None);
                self.won(role, generation, &claim)
            }
            Ok(Outcome::Lost(h)) | Ok(Outcome::Superseded(h)) => {
                self.status.set_arbiter_error(None);
                self.halt(format!("lost arbitration for generation {generation}: {h}"))
            }
        }
    }

    fn won(&self, role: Role, generation: u64, claim: &Claim) -> Decision {
        let to = match role {
            Role::Primary => FtState::Unprotected,
            _ => FtState::FailingOver,
        };
        let reason = format!("won generation {generation}: {}", claim.reason);
        let recorded = self
            .status
            .set_generation(generation)
            .and_then(|()| self.status.transition(to, &reason));
        if let Err(e) = recorded {
            // Someone changed the state meanwhile (ft.disable, a fatal error): holding the
            // generation is harmless, acting on it from an unknown state is not.
            return self.halt(format!("won generation {generation} but {e}"));
        }
        match role {
            Role::Primary => Decision::ReleaseOutputs { generation },
            _ => Decision::GoLive { generation },
        }
    }

    fn halt(&self, reason: String) -> Decision {
        let reason = self.with_cause(reason);
        log::error!("halting: {reason}");
        // Refused only if already halted or standalone: nothing to record then.
        let _ = self.status.transition(FtState::Halted, &reason);
        Decision::Halt { reason }
    }

    /// The backup is live after [`Decision::GoLive`]: it becomes the primary, unprotected.
    pub fn went_live(&self) -> Result<(), StatusError> {
        self.status
            .transition(FtState::Unprotected, &self.live_reason())
    }

    /// The reason [`Self::went_live`] records, for a caller that makes the transition itself
    /// once the live VM is really in place (so ft.status never says live before it is).
    pub fn live_reason(&self) -> String {
        let g = self.status.generation();
        self.with_cause(format!("live as primary in generation {g}"))
    }
}

#[cfg(test)]
#[path = "failover_tests.rs"]
mod tests;
