//! The hand-over: who runs the VM once the source has sent its final state (issue 11 item 3).
//!
//! The destination acks the Commit and runs the VM; the source stops for good on that ack. If
//! the ack is lost (the link dies in that instant, the destination's host stalls), the source
//! cannot tell a destination that never got the Commit from one that runs the VM. Before
//! protocol version 5 it resumed, and both ran. Now:
//!
//! * **Before the Commit** leaves, any failure resumes the source: the destination cannot run a
//!   VM whose final state it never had.
//! * **After it, without an arbiter**, the source resumes only if the destination said it will
//!   not run the VM (its Abort: the restore failed, the VM did not fit). Otherwise it stays
//!   paused and the migration ends as [`MigrationError::OutcomeUnknown`]: an operator checks the
//!   destination, then deletes the source's VM or forces it to resume. The destination runs the
//!   VM as soon as it restored it, whether or not its ack gets through.
//! * **With an arbiter** (the same store as FT's, given to both sides) the source picks the
//!   next generation before pre-copy and tells the destination in a `Handover` frame. The
//!   destination claims that generation before it resumes and runs only if it won. A source
//!   whose ack is lost claims it too and resumes only if it won; losing to the destination's
//!   claim (recognised by this migration's token) proves the VM runs there, and the migration
//!   succeeded. Exactly one side runs, whatever the link did. Only an arbiter that cannot be
//!   reached within [`CLAIM_TIMEOUT`] leaves the outcome unknown (then neither side runs).

use super::MigrationError;
use crate::arbiter::{Arbiter, ArbiterError, Claim, Holder, Identity, Outcome};
use crate::status::Role;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a side retries an arbiter that does not answer before giving up its claim.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause between attempts.
const CLAIM_RETRY: Duration = Duration::from_millis(500);

/// The arbiter a migration hands over through (optional, on both sides).
#[derive(Clone)]
pub struct HandoverArbiter(pub Arc<dyn Arbiter>);

impl std::fmt::Debug for HandoverArbiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandoverArbiter")
    }
}

/// What a migration's claims are about: the generation, this migration's token, and the
/// arbiter store both sides must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Terms {
    pub(crate) generation: u64,
    pub(crate) token: u64,
    pub(crate) identity: Identity,
}

impl Terms {
    /// The source's terms: the generation after the highest taken, a fresh token.
    pub(crate) fn new(arbiter: &dyn Arbiter) -> Result<Terms, ArbiterError> {
        let identity = arbiter.identity()?;
        let current = arbiter.current()?.map_or(0, |h| h.generation);
        Ok(Terms {
            generation: current.saturating_add(1),
            token: fresh_token(),
            identity,
        })
    }

    /// The reason the destination's claim carries; the source recognises its win by it.
    fn destination_reason(&self) -> String {
        format!(
            "live migration {:016x}: the destination runs the VM",
            self.token
        )
    }

    /// Whether `holder` is this migration's destination.
    pub(crate) fn is_destination(&self, holder: &Holder) -> bool {
        holder.generation == self.generation
            && holder
                .claim
                .as_ref()
                .is_some_and(|c| c.reason == self.destination_reason())
    }

    /// The destination's claim.
    pub(crate) fn destination_claim(&self) -> Claim {
        Claim::here(Role::Standalone, self.destination_reason())
    }

    /// The source's claim, taking the VM back because `why`.
    pub(crate) fn source_claim(&self, why: &str) -> Claim {
        Claim::here(
            Role::Standalone,
            format!(
                "live migration {:016x}: the source takes the VM back ({why})",
                self.token
            ),
        )
    }
}

/// Unique per migration (not a secret: it only tells two claims apart).
fn fresh_token() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// Why the arbiter did not settle a hand-over.
#[derive(Debug, thiserror::Error)]
pub enum Unsettled {
    /// It did not answer within [`CLAIM_TIMEOUT`].
    #[error("the arbiter did not answer for generation {generation}: {}", errors::chain(.source))]
    Unreachable {
        /// The generation claimed.
        generation: u64,
        /// The last error.
        source: ArbiterError,
    },
    /// Someone other than this migration's two sides holds the generation (or a higher one).
    #[error("generation {generation} went to neither side: {holder}")]
    Other {
        /// The generation claimed.
        generation: u64,
        /// Who holds it (or the higher one).
        holder: Holder,
    },
}

/// How a claim ended.
pub(crate) enum Claimed {
    Won,
    Lost(Holder),
    Unreachable(ArbiterError),
}

/// Claims `generation`, retrying arbiter errors (with the same claim, so that a retry after an
/// error past the create recognises its own record) until [`CLAIM_TIMEOUT`].
pub(crate) fn claim(arbiter: &dyn Arbiter, generation: u64, claim: &Claim) -> Claimed {
    let deadline = Instant::now() + CLAIM_TIMEOUT;
    loop {
        match arbiter.try_acquire(generation, claim) {
            Ok(Outcome::Won) => return Claimed::Won,
            Ok(Outcome::Lost(h) | Outcome::Superseded(h)) => return Claimed::Lost(h),
            Err(e) if Instant::now() >= deadline => return Claimed::Unreachable(e),
            Err(e) => {
                log::warn!(
                    "migration: claiming generation {generation} failed, retrying: {}",
                    errors::chain(&e)
                );
                std::thread::sleep(CLAIM_RETRY);
            }
        }
    }
}

/// The destination's check of the source's terms, before pre-copy: the same arbiter store
/// (else each side could win "its" generation), and the generation still free.
pub(crate) fn check_terms(arbiter: &dyn Arbiter, t: &Terms) -> Result<(), MigrationError> {
    let ours = arbiter
        .identity()
        .map_err(|e| MigrationError::Arbiter(Box::new(e)))?;
    if ours != t.identity {
        return Err(MigrationError::Incompatible(format!(
            "the source hands over through arbiter store {} and this destination names store \
             {ours}: the two sides must name the same arbiter",
            t.identity
        )));
    }
    match arbiter
        .current()
        .map_err(|e| MigrationError::Arbiter(Box::new(e)))?
    {
        Some(h) if h.generation >= t.generation => Err(MigrationError::Incompatible(format!(
            "the source hands over in generation {}, but this destination's arbiter already \
             has {h}: the two sides must name the same arbiter",
            t.generation
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arbiter::FileArbiter;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tandem-handover-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn exactly_one_side_wins_and_the_source_recognises_the_destination() {
        let d = dir("one");
        let a = FileArbiter::open(&d).unwrap();
        assert!(matches!(
            a.try_acquire(3, &Claim::here(Role::Primary, "an earlier pair")),
            Ok(Outcome::Won)
        ));
        let t = Terms::new(&a).unwrap();
        assert_eq!(t.generation, 4);
        check_terms(&a, &t).unwrap();
        assert!(matches!(
            claim(&a, t.generation, &t.destination_claim()),
            Claimed::Won
        ));
        // The generation is taken now: a second destination for the same terms is refused.
        assert!(check_terms(&a, &t).is_err());
        match claim(&a, t.generation, &t.source_claim("ack lost")) {
            Claimed::Lost(h) => assert!(t.is_destination(&h), "{h}"),
            _ => panic!("the source won a generation the destination holds"),
        }
        // Another migration's destination is not this one's.
        let other = Terms {
            token: t.token ^ 1,
            ..t.clone()
        };
        match claim(&a, t.generation, &other.source_claim("x")) {
            Claimed::Lost(h) => assert!(!other.is_destination(&h)),
            _ => panic!(),
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_source_that_wins_keeps_the_destination_out() {
        let d = dir("src");
        let a = FileArbiter::open(&d).unwrap();
        let t = Terms::new(&a).unwrap();
        assert!(matches!(
            claim(&a, t.generation, &t.source_claim("ack lost")),
            Claimed::Won
        ));
        match claim(&a, t.generation, &t.destination_claim()) {
            Claimed::Lost(h) => assert!(!t.is_destination(&h)),
            _ => panic!("the destination won what the source holds"),
        }
        std::fs::remove_dir_all(d).unwrap();
    }
}
