//! The replica scrub: checks that the backup's copy is what the primary replicated, and heals it
//! where it is not (issue 11 item 10: a replicated disk that was never copied went unnoticed
//! because nobody compared).
//!
//! **What is compared.** Guest memory in regions of [`ScrubOptions::region_bytes`], the state
//! blobs (devices and each vCPU) and, in replicated-disk mode, each disk in regions of the same
//! size — all at a committed checkpoint N. The primary hashes (xxh3-64) what it captured for N
//! while the guest is still paused for N's capture ([`PrimaryScrub::while_paused`]), so the
//! memory and disks it reads are exactly the state N; the digest (frame `ScrubDigest`) goes out
//! right after N's Commit. The backup reads it after applying N and before applying N+1 (frames
//! arrive in order, and N+1 stays in staging until its Commit), hashes the same regions of its
//! copy and answers (frame `ScrubResult`) with the regions that differ. A backup whose last
//! committed checkpoint is not N (which the ordering rules out) answers "stale" and the regions
//! are checked again at a later checkpoint.
//!
//! **A difference** is counted (metrics, `ft.status`'s `scrub`), logged on both sides naming the
//! region (guest-physical range, device, disk bytes and sectors), noted as `ft.status`'s reason,
//! and healed: at the next checkpoint the primary copies the region while paused and sends it
//! whole inside that checkpoint's digest (a repair), which the backup writes before it hashes, so
//! that the same digest re-checks it. Pages go whole, never as a delta against the backup's
//! (wrong) copy; the state blobs need no repair (every checkpoint carries them whole) and are
//! simply checked again. A region still different after [`MAX_REPAIR_ATTEMPTS`] repairs is
//! reported unhealed.
//!
//! **When.** In the background, rate-limited: a budget of guest memory and disk bytes that fills
//! at (everything) / [`ScrubOptions::period`], spent in whole regions at each checkpoint's pause
//! and never more than [`ScrubOptions::max_bytes_per_checkpoint`] (nor
//! [`ScrubOptions::max_hash_time_per_checkpoint`]) in one pause, so the whole
//! replicated state is covered once per period at a small, steady cost. On demand (`ft.verify`,
//! [`PrimaryScrub::verify`]): one full pass at [`ScrubOptions::verify_bytes_per_checkpoint`] per
//! checkpoint (or what the time limit allows) (the background scrub waits meanwhile), answered once every region was compared
//! and every difference found was repaired and checked again (or given up on).
//!
//! Files: `region.rs` (the layout of what is scrubbed, and region names), `cursor.rs` (a walk
//! over it), `hash.rs` (hashing memory, disks and state), `disks.rs` (how the scrub reaches the
//! VMM's disks), `planner.rs` (the primary's schedule, repairs and passes), `primary.rs` (its
//! thread-safe face for the checkpoint engine), `backup.rs` (the backup's check),
//! `report.rs` (what `ft.status` and `ft.verify` show).

mod backup;
mod cursor;
mod disks;
mod hash;
mod planner;
mod primary;
mod region;
mod report;

pub(crate) use backup::check;
pub use disks::{ScrubDisk, ScrubDisks};
pub use primary::{PrimaryScrub, VerifyTicket};
pub use region::Layout;
pub use report::{Mismatch, ScrubChecked, ScrubStatus, VerifyReport};

use crate::vm::VmOpError;
use std::time::Duration;

/// How often a region is repaired before the scrub gives up on it and reports it unhealed.
pub const MAX_REPAIR_ATTEMPTS: u32 = 3;

/// The scrub's settings (primary side; the backup only answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubOptions {
    /// Background scrub: cover all replicated memory and disks once per this period; `None`
    /// turns it off (`ft.verify` still works).
    pub period: Option<Duration>,
    /// Background scrub: most bytes hashed in one checkpoint's pause.
    pub max_bytes_per_checkpoint: u64,
    /// `ft.verify`: bytes hashed per checkpoint's pause while a pass runs.
    pub verify_bytes_per_checkpoint: u64,
    /// Size of a memory or disk region (a multiple of the page size): what one hash covers and
    /// one repair re-sends.
    pub region_bytes: u32,
    /// Most bytes of repairs copied in one checkpoint's pause.
    pub max_repair_bytes_per_checkpoint: u64,
    /// Longest the primary hashes in one pause (at least one region is always hashed): what is
    /// left waits for the next pause. It also bounds the backup's work on the digest, which
    /// hashes the same regions on its receiving thread, where a long stall would delay acks past
    /// the peer's failure timeout on a slow or loaded host.
    pub max_hash_time_per_checkpoint: Duration,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        ScrubOptions {
            period: Some(Duration::from_secs(300)),
            max_bytes_per_checkpoint: 1 << 20,
            verify_bytes_per_checkpoint: 8 << 20,
            region_bytes: 64 << 10,
            max_repair_bytes_per_checkpoint: 8 << 20,
            max_hash_time_per_checkpoint: Duration::from_millis(10),
        }
    }
}

/// Errors of the scrub.
#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    /// `ft.verify` could not finish: the pair ended, or checkpointing stopped.
    #[error("the pair ended before the verify finished: {0}")]
    Ended(String),
    /// `ft.verify` did not finish in time; the pass goes on and `ft.status` shows its result.
    #[error(
        "the verify did not finish within {0:?}; it goes on, and ft.status's scrub.verify shows \
         its result"
    )]
    Timeout(Duration),
    /// The backup could not write a repair into its copy.
    #[error("cannot repair {region}")]
    Repair {
        /// The region's name.
        region: String,
        /// The VM's or disk's error.
        #[source]
        source: VmOpError,
    },
}

#[cfg(test)]
mod tests;
