//! Pre-copy live migration over the frame stream: the source copies memory while the guest runs,
//! then rounds of dirty pages until the rest fits the downtime limit, then pauses, sends the last
//! pages and the VM state, and waits for the destination to say it restored them.
//!
//! Stream, source → destination: `Hello` (ack requested) · `Handover` (ack requested; only with
//! an arbiter) · `MemoryPages`* `EndOfRound` (round 0:
//! every non-zero page) · (`MemoryPages`* `EndOfRound`)* (dirty rounds) · `MemoryPages`*
//! `VcpuState`* `DeviceState` `Commit` (ack requested). Destination → source: `Ack` of Hello, `Ack`
//! of Commit once the state is restored, or `Abort` at any point. The header's epoch is the round.
//!
//! Both ends open the stream with `auth`'s handshake for a migration first (with or without a
//! key; with one, every byte travels encrypted): `accept_source` on the destination, which goes
//! on waiting through refused connections.
//!
//! Hand-over ([`handover`]): the destination restores, (with an arbiter) wins the generation the
//! source named, runs the VM and acks Commit; the source reports success on that ack. Once the
//! Commit has left, a source that gets no ack never resumes unless it knows the destination does
//! not run the VM (its Abort, or the source's own win at the arbiter); otherwise the migration
//! ends as [`MigrationError::OutcomeUnknown`], the source VM paused.

mod accept;
pub(crate) mod channel;
pub mod handover;
mod policy;
mod progress;
mod receiver;
mod sender;

pub use accept::accept_source;
/// The error and its causes on one line (the workspace's one helper, under the name this
/// crate's modules use).
pub use errors::chain as error_chain;
pub use handover::{HandoverArbiter, Unsettled};
pub use policy::{ConvergencePolicy, StopReason};
pub use progress::{MigrationPhase, MigrationProgress, ProgressHandle, Role};
pub use receiver::{receive_migration, IncomingMigration, ReceiveOptions, ReceiveReport};
pub(crate) use sender::ft_initial_sync;
pub use sender::{open_ft_stream, OpenedStream};
pub use sender::{send_migration, Confirmation, SendOptions, SendReport};

use crate::arbiter::{ArbiterError, Holder};
use crate::frame::{FrameError, FrameType};
use crate::vm::VmOpError;

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
    /// The final Commit went out (or may have) but its ack never came: the peer may hold the
    /// whole state and act on it (a destination resumes, an FT backup counts itself protected).
    /// The sender must not act as if it never happened.
    #[error("the peer may have committed the final state: its ack never came")]
    CommitUnconfirmed {
        /// What went wrong after the Commit was sent.
        #[source]
        source: Box<MigrationError>,
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
    /// The arbiter the hand-over goes through cannot be used.
    #[error("the hand-over's arbiter failed")]
    Arbiter(#[source] Box<ArbiterError>),
    /// The final state left and neither an ack, the destination's Abort nor the arbiter says
    /// who runs the VM: the source VM is left paused; the destination may be running it.
    #[error(
        "the hand-over's outcome is unknown{}: the destination may be running the VM, so this \
         source stays paused",
        unsettled.as_ref().map(|u| format!(" ({u})")).unwrap_or_default()
    )]
    OutcomeUnknown {
        /// What cut the hand-over short.
        #[source]
        cause: Box<MigrationError>,
        /// With an arbiter: why it did not settle it.
        unsettled: Option<Box<Unsettled>>,
    },
    /// The final ack was lost, and the source won the hand-over's generation: it runs the VM
    /// again (the destination, should it have the state, lost the same claim and never runs).
    #[error("the destination never confirmed; this source won generation {generation} at the arbiter and runs the VM again")]
    TookBack {
        /// The generation won.
        generation: u64,
        /// What cut the hand-over short.
        #[source]
        cause: Box<MigrationError>,
    },
    /// Destination: the source won the hand-over's generation first (it took the VM back).
    #[error("the source kept the VM: {holder}")]
    SourceKeptVm {
        /// Who holds the generation.
        holder: Box<Holder>,
    },
    /// Destination: the arbiter did not answer, so the VM is not run here.
    #[error("cannot claim the VM")]
    Unsettled(#[source] Box<Unsettled>),
}

impl MigrationError {
    /// Whether the peer already knows the migration is over (it aborted or the stream is gone),
    /// so sending it an Abort is pointless.
    pub(crate) fn peer_knows(&self) -> bool {
        match self {
            MigrationError::CommitUnconfirmed { source } => source.peer_knows(),
            e => matches!(
                e,
                MigrationError::PeerAborted { .. }
                    | MigrationError::PeerClosed
                    | MigrationError::Send(_)
                    | MigrationError::Receive(_)
            ),
        }
    }

    /// Whether the peer may hold the complete final state although this side saw no ack.
    pub fn commit_unconfirmed(&self) -> bool {
        matches!(self, MigrationError::CommitUnconfirmed { .. })
    }
}

/// Wraps a VM error with the trait method that produced it.
fn vm_err(op: &'static str) -> impl FnOnce(VmOpError) -> MigrationError {
    move |source| MigrationError::Vm { op, source }
}

/// An error for a frame type the protocol does not expect at this point.
pub(crate) fn unexpected(expected: &'static str, got: FrameType) -> MigrationError {
    MigrationError::Frame(FrameError::UnexpectedType { expected, got })
}
