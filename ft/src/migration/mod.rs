//! Pre-copy live migration over the frame stream: the source copies memory while the guest runs,
//! then rounds of dirty pages until the rest fits the downtime limit, then pauses, sends the last
//! pages and the VM state, and waits for the destination to say it restored them.
//!
//! Stream, source → destination: `Hello` (ack requested) · `MemoryPages`* `EndOfRound` (round 0:
//! every non-zero page) · (`MemoryPages`* `EndOfRound`)* (dirty rounds) · `MemoryPages`*
//! `VcpuState`* `DeviceState` `Commit` (ack requested). Destination → source: `Ack` of Hello, `Ack`
//! of Commit once the state is restored, or `Abort` at any point. The header's epoch is the round.
//!
//! Handover: the destination acks Commit after restoring and before resuming, and the source
//! reports success only on that ack. If the ack is lost after it was sent (the link dies in that
//! instant), the source resumes while the destination runs too: the two-generals window every
//! pre-copy VMM has. FT must fence it with the arbiter's generation (DESIGN.md) before relying on it.

pub(crate) mod channel;
mod converge;
mod policy;
mod progress;
mod receiver;
mod sender;

pub use policy::{ConvergencePolicy, StopReason};
pub use progress::{MigrationPhase, MigrationProgress, ProgressHandle, Role};
pub use receiver::{receive_migration, IncomingMigration, ReceiveOptions, ReceiveReport};
pub(crate) use sender::ft_initial_sync;
pub use sender::{send_migration, SendOptions, SendReport};

use crate::frame::{FrameError, FrameType};
use crate::vm::VmOpError;
use std::error::Error;

/// Why a migration failed, on either side.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Setting up the connection (timeouts, reader thread) failed.
    #[error("cannot set up the migration connection")]
    Connection(#[source] std::io::Error),
    /// Writing to the peer failed (connection dropped, reset or write timeout).
    #[error("cannot send to the peer")]
    Send(#[source] std::io::Error),
    /// Reading from the peer failed.
    #[error("cannot receive from the peer")]
    Receive(#[source] std::io::Error),
    /// The peer closed the connection between frames.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// Nothing arrived in time.
    #[error("timed out waiting for {waiting_for}")]
    Timeout {
        /// What was awaited.
        waiting_for: &'static str,
    },
    /// The peer's bytes are not a valid frame (corrupt, truncated, hostile).
    #[error("bad frame from the peer")]
    Frame(#[source] FrameError),
    /// A frame of ours could not be encoded (state too large for one frame).
    #[error("cannot encode a frame")]
    Encode(#[source] FrameError),
    /// The peer skipped or repeated a frame.
    #[error("frame out of sequence: expected {expected}, got {got}")]
    OutOfSequence {
        /// Sequence number expected.
        expected: u64,
        /// Sequence number received.
        got: u64,
    },
    /// A valid frame that the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer gave up and said why.
    #[error("the peer aborted: {reason}")]
    PeerAborted {
        /// The peer's reason.
        reason: String,
    },
    /// The two VMs do not match (memory size, vCPUs, page size, versions, purpose).
    #[error("incompatible VM: {0}")]
    Incompatible(String),
    /// An operation on the local VM failed.
    #[error("VM {op} failed")]
    Vm {
        /// The trait method.
        op: &'static str,
        /// The VM's error.
        #[source]
        source: VmOpError,
    },
    /// Migration failed and then the paused source could not be resumed: the guest is stopped.
    #[error("migration failed ({cause}) and the source VM could not be resumed")]
    SourceNotResumed {
        /// Why the migration failed.
        cause: String,
        /// Why resuming failed.
        #[source]
        source: VmOpError,
    },
}

impl MigrationError {
    /// Whether the peer already knows the migration is over (it aborted or the stream is gone),
    /// so sending it an Abort is pointless.
    pub(crate) fn peer_knows(&self) -> bool {
        matches!(
            self,
            MigrationError::PeerAborted { .. }
                | MigrationError::PeerClosed
                | MigrationError::Send(_)
                | MigrationError::Receive(_)
        )
    }
}

/// Wraps a VM error with the trait method that produced it.
fn vm_err(op: &'static str) -> impl FnOnce(VmOpError) -> MigrationError {
    move |source| MigrationError::Vm { op, source }
}

/// An error and all its causes on one line, for logs, Abort reasons and the progress view.
pub fn error_chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An error for a frame type the protocol does not expect at this point.
pub(crate) fn unexpected(expected: &'static str, got: FrameType) -> MigrationError {
    MigrationError::Frame(FrameError::UnexpectedType { expected, got })
}
