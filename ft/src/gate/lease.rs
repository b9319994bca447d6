//! The primary's lease on the shared disk (fencing, issue 11 item 4).
//!
//! In shared mode a committed epoch's writes reach the image after the backup's ack, from the
//! releaser thread. A primary stopped between the ack and those writes (SIGSTOP, a stalled disk,
//! a host hiccup) would, when it continues, write them over sectors that a backup gone live
//! meanwhile has written since. So a protected primary writes the shared disk only while it
//! holds a lease, checked before every write:
//!
//! * **Granted by acks.** The backup acks checkpoint N after receiving its Commit, so it heard
//!   this primary at or after the moment the Commit was sent (`s`, this host's monotonic clock):
//!   it will not take over before `s + failure_timeout`, and a new primary waits until
//!   `last frame heard + duration` before its first write (`vmm::ft::hooks`, which also covers
//!   `ft.promote`). The lease therefore runs from `s`, not from the ack's arrival, and lasts
//!   [`LeaseTerms::duration`], which every checkpoint announces to the backup.
//! * **Revoked** for good when the backup is promoted (`ft.promote`) and asks this primary to
//!   stop: no renewal brings it back, so the promoted backup may write at once.
//! * **Margin.** A write is started only if the lease still has [`LeaseTerms::margin`] to run:
//!   the check and the write it allows are not atomic, and the margin bounds the time between
//!   them (being scheduled out, the write itself). Monotonic clocks of two hosts drift by parts
//!   per million, which the margin also covers.
//! * **What it cannot stop** (DESIGN/README "Safety"): a write already in the kernel when the
//!   process stops lands when it continues; a process stopped between the check and the write
//!   for longer than the margin; storage or client caches (NFS) that reorder or delay writes
//!   after the call returned. File-level fencing bounds these; only the storage itself (SCSI
//!   persistent reservations, a fencing token the storage checks) closes them.
//!
//! Time is [`Instant`] (CLOCK_MONOTONIC): wall-clock steps cannot extend a lease.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a lease lasts and how much of its end is kept clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms {
    /// From the send of the Commit the backup acked. The backup waits this long after the last
    /// frame it heard before its first write as a new primary.
    pub duration: Duration,
    /// A write starts only while at least this much of the lease is left.
    pub margin: Duration,
}

impl LeaseTerms {
    /// The terms for a pair whose failure timeout is `failure_timeout`: the lease lasts the
    /// timeout, so a backup that failed over after that much silence has nothing more to wait
    /// for; writes stop a quarter of it earlier (250 ms at the default 1 s: far above the
    /// scheduling delays of a loaded host, yet a normal ack renews the lease every checkpoint).
    pub fn for_failure_timeout(failure_timeout: Duration) -> LeaseTerms {
        LeaseTerms {
            duration: failure_timeout,
            margin: failure_timeout / 4,
        }
    }
}

/// Why the shared disk may not be written now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// The gates are halted: this member lost, or handed over; it never writes again.
    #[error("halted: this member must not write the shared disk")]
    Halted,
    /// No lease terms were set or no checkpoint has been acked yet.
    #[error("no disk lease: the backup has acknowledged no checkpoint yet")]
    NoLease,
    /// The backup is being promoted and this primary gave its lease up.
    #[error("the disk lease was given up: the backup is being promoted")]
    Revoked,
    /// The lease ended, or ends within the margin.
    #[error("the disk lease ran out {late:?} ago (counting its {margin:?} margin): the backup may have taken over")]
    Expired {
        /// How far past the usable end of the lease.
        late: Duration,
        /// The margin kept clear.
        margin: Duration,
    },
}

/// A primary's lease; all atomics, so the check costs a clock read per write.
#[derive(Debug)]
pub struct Lease {
    /// What the nanosecond fields count from.
    base: Instant,
    duration_ns: AtomicU64,
    margin_ns: AtomicU64,
    /// End of the lease, nanoseconds after `base`; 0 while none was granted, `u64::MAX`
    /// once revoked.
    end_ns: AtomicU64,
}

/// `end_ns` of a revoked lease.
const REVOKED: u64 = u64::MAX;

impl Default for Lease {
    fn default() -> Self {
        Self::new()
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl Lease {
    /// No terms, nothing granted: every check fails until [`Lease::set_terms`] and a renewal.
    pub fn new() -> Lease {
        Lease {
            base: Instant::now(),
            duration_ns: AtomicU64::new(0),
            margin_ns: AtomicU64::new(0),
            end_ns: AtomicU64::new(0),
        }
    }

    /// Sets the terms (before the first checkpoint).
    pub fn set_terms(&self, t: LeaseTerms) {
        self.margin_ns.store(nanos(t.margin), Ordering::Release);
        self.duration_ns.store(nanos(t.duration), Ordering::Release);
    }

    /// The terms, once set.
    pub fn terms(&self) -> Option<LeaseTerms> {
        let duration = self.duration_ns.load(Ordering::Acquire);
        (duration > 0).then(|| LeaseTerms {
            duration: Duration::from_nanos(duration),
            margin: Duration::from_nanos(self.margin_ns.load(Ordering::Acquire)),
        })
    }

    /// The backup acked a frame this primary sent at `sent`: the lease runs to `sent + duration`
    /// (never shortened by a late ack of an older frame).
    pub fn renew(&self, sent: Instant) {
        let since = nanos(sent.saturating_duration_since(self.base));
        let end = since.saturating_add(self.duration_ns.load(Ordering::Acquire));
        // Never past REVOKED, which fetch_max then keeps.
        self.end_ns
            .fetch_max(end.clamp(1, REVOKED - 1), Ordering::AcqRel);
    }

    /// Gives the lease up for good (the backup is promoted): every later check fails, whatever
    /// acks still arrive. The caller must still wait for a write already past its check.
    pub fn revoke(&self) {
        self.end_ns.store(REVOKED, Ordering::Release);
    }

    /// Whether a write may start now.
    pub fn check(&self) -> Result<(), FenceError> {
        self.check_at(Instant::now())
    }

    /// [`Lease::check`] at `now`.
    pub fn check_at(&self, now: Instant) -> Result<(), FenceError> {
        let end = self.end_ns.load(Ordering::Acquire);
        if end == REVOKED {
            return Err(FenceError::Revoked);
        }
        if end == 0 || self.duration_ns.load(Ordering::Acquire) == 0 {
            return Err(FenceError::NoLease);
        }
        let margin = self.margin_ns.load(Ordering::Acquire);
        let usable_end = end.saturating_sub(margin);
        let now = nanos(now.saturating_duration_since(self.base));
        if now < usable_end {
            return Ok(());
        }
        Err(FenceError::Expired {
            late: Duration::from_nanos(now - usable_end),
            margin: Duration::from_nanos(margin),
        })
    }

    /// How long writes may still start (zero once expired or never granted).
    pub fn remaining(&self) -> Duration {
        let end = self.end_ns.load(Ordering::Acquire);
        if end == REVOKED {
            return Duration::ZERO;
        }
        let usable_end = end.saturating_sub(self.margin_ns.load(Ordering::Acquire));
        let now = nanos(self.base.elapsed());
        Duration::from_nanos(usable_end.saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ms: u64) -> Lease {
        let l = Lease::new();
        l.set_terms(LeaseTerms::for_failure_timeout(Duration::from_millis(ms)));
        l
    }

    #[test]
    fn nothing_is_allowed_before_the_first_ack() {
        let l = Lease::new();
        assert_eq!(l.check(), Err(FenceError::NoLease));
        let l = lease(1000);
        assert_eq!(l.check(), Err(FenceError::NoLease));
        assert_eq!(l.remaining(), Duration::ZERO);
    }

    #[test]
    fn a_lease_runs_from_the_send_and_stops_a_margin_early() {
        let l = lease(1000);
        let sent = Instant::now();
        l.renew(sent);
        assert_eq!(l.check_at(sent), Ok(()));
        assert_eq!(l.check_at(sent + Duration::from_millis(749)), Ok(()));
        assert!(matches!(
            l.check_at(sent + Duration::from_millis(750)),
            Err(FenceError::Expired { .. })
        ));
        match l.check_at(sent + Duration::from_millis(900)) {
            Err(FenceError::Expired { late, margin }) => {
                assert_eq!(late, Duration::from_millis(150));
                assert_eq!(margin, Duration::from_millis(250));
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn a_revoked_lease_stays_revoked() {
        let l = lease(1000);
        l.renew(Instant::now());
        l.revoke();
        assert_eq!(l.check(), Err(FenceError::Revoked));
        l.renew(Instant::now());
        assert_eq!(l.check(), Err(FenceError::Revoked));
        assert_eq!(l.remaining(), Duration::ZERO);
    }

    #[test]
    fn a_late_ack_of_an_older_frame_does_not_shorten_it() {
        let l = lease(1000);
        let t0 = Instant::now();
        l.renew(t0 + Duration::from_millis(500));
        l.renew(t0);
        assert_eq!(l.check_at(t0 + Duration::from_millis(1200)), Ok(()));
        assert!(l.check_at(t0 + Duration::from_millis(1250)).is_err());
    }
}
