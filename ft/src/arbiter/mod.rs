//! Split-brain arbitration (DESIGN.md invariant 3: at most one VM of a pair is live in a
//! generation; the loser halts and says so).
//!
//! Before a member goes live alone (backup failing over) or releases held output without a backup
//! (primary losing its backup), it must win generation `current + 1` from the [`Arbiter`]. A
//! generation is won by exactly one claimant, ever; generations only increase, and a claim for `G`
//! fails once anything above `G` exists. [`FileArbiter`] does this with an `O_EXCL` create on a
//! directory of shared storage, [`EtcdArbiter`] with a compare-and-swap transaction on an etcd
//! cluster; [`open`] turns the API's [`ArbiterConfig`] into one of them.
//!
//! Each store also has an [`Identity`], created there at first use, so that the two members of a
//! pair can tell whether they name the same storage (an unmounted mount point is writable too).

mod config;
pub mod etcd;
mod file;
mod identity;

pub use config::{open, ArbiterConfig};
pub use etcd::{EtcdArbiter, EtcdConfig, EtcdError};
pub use file::{check_writable, FileArbiter};
pub use identity::Identity;

use crate::status::Role;
use std::path::PathBuf;
use std::sync::Arc;

/// Who claims a generation and why; stored with the win so that the loser can say who beat it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claim {
    /// The claimant's role when claiming.
    pub role: Role,
    /// Host name of the claimant.
    pub host: String,
    /// Process id of the claimant's VMM.
    pub pid: u32,
    /// Claimant's wall clock at the claim, milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// Why it claims (e.g. "backup silent for 3.0 s").
    pub reason: String,
}

impl Claim {
    /// A claim by this process on this host, now.
    pub fn here(role: Role, reason: impl Into<String>) -> Claim {
        Claim {
            role,
            host: hostname(),
            pid: std::process::id(),
            time_unix_ms: crate::status::unix_ms(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} on {} (pid {}) at {} ms: {}",
            self.role, self.host, self.pid, self.time_unix_ms, self.reason
        )
    }
}

/// The host name, from the kernel; "unknown" where it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Who holds a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The generation held.
    pub generation: u64,
    /// The winner's claim; `None` when the record is empty or unreadable (its claimant died
    /// between creating and writing it). The generation is taken all the same.
    pub claim: Option<Claim>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.claim {
            Some(c) => write!(f, "generation {} held by {c}", self.generation),
            None => write!(
                f,
                "generation {} held by an unknown claimant (empty or unreadable record)",
                self.generation
            ),
        }
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// This claimant holds the generation: it may go live / release output in it.
    Won,
    /// Someone else holds this generation.
    Lost(Holder),
    /// A higher generation exists: the pair has moved on without this claimant.
    Superseded(Holder),
}

/// Errors of the arbiter layer. None of them means "won": callers must not go live on an error.
#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    /// The arbiter directory does not exist.
    #[error("arbiter directory {path} does not exist")]
    Missing {
        /// The directory.
        path: PathBuf,
    },
    /// The arbiter path is not a directory.
    #[error("arbiter path {path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The arbiter directory cannot be written (permissions, read-only mount, full disk).
    #[error("arbiter directory {path} is not writable")]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// An I/O operation on the arbiter's storage failed.
    #[error("arbiter {op} failed on {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The claim could not be encoded.
    #[error("cannot encode the claim")]
    Encode(#[source] serde_json::Error),
    /// The etcd arbiter failed (bad configuration, no endpoint answered, a refused request).
    #[error("etcd")]
    Etcd(#[from] EtcdError),
    /// No random identity could be made (the kernel's random source failed).
    #[error("cannot make a random arbiter identity")]
    Random(#[source] getrandom::Error),
    /// The store holds an identity record that is not one (hand-edited or corrupted).
    #[error("the arbiter identity record {place} holds {found:?}, not an identity; remove it")]
    BadIdentity {
        /// Where: a file or an etcd key.
        place: String,
        /// What it holds (at most a line).
        found: String,
    },
}

/// Atomic, monotonic generation ownership on storage both members of a pair can reach.
pub trait Arbiter: Send + Sync {
    /// Claims `generation` for `claimant`. `Won` is returned to exactly one claimant per
    /// generation, and never once a higher generation exists. Retrying with an equal `Claim`
    /// after an error returns `Won` again if the first attempt took the generation.
    fn try_acquire(&self, generation: u64, claimant: &Claim) -> Result<Outcome, ArbiterError>;

    /// The highest generation taken so far and its holder (`None`: no generation taken yet).
    fn current(&self) -> Result<Option<Holder>, ArbiterError>;

    /// The store's identity: created there by the first caller (atomically: concurrent first
    /// callers agree), read back by every later one. Two members whose arbiters answer
    /// different identities do not share arbiter storage and must not pair.
    fn identity(&self) -> Result<Identity, ArbiterError>;
}

/// Pair threads hold their arbiter as `Arc<dyn Arbiter>` (from [`open`]).
impl<T: Arbiter + ?Sized> Arbiter for Arc<T> {
    fn try_acquire(&self, generation: u64, claimant: &Claim) -> Result<Outcome, ArbiterError> {
        (**self).try_acquire(generation, claimant)
    }

    fn current(&self) -> Result<Option<Holder>, ArbiterError> {
        (**self).current()
    }

    fn identity(&self) -> Result<Identity, ArbiterError> {
        (**self).identity()
    }
}

impl<T: Arbiter + ?Sized> Arbiter for Box<T> {
    fn try_acquire(&self, generation: u64, claimant: &Claim) -> Result<Outcome, ArbiterError> {
        (**self).try_acquire(generation, claimant)
    }

    fn current(&self) -> Result<Option<Holder>, ArbiterError> {
        (**self).current()
    }

    fn identity(&self) -> Result<Identity, ArbiterError> {
        (**self).identity()
    }
}

#[cfg(test)]
mod tests;
