//! Errors of the pair layer: starting a member's thread and the operations it carries.

use super::super::second_path::HeartbeatSetupError;
use crate::vm::VmError;
use ft::checkpoint::CheckpointError;
use std::time::Duration;

/// Why a pair member could not start, or an operation on it failed.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// The device gates could not be put in front of the VM's outputs.
    #[error("cannot gate the VM's outputs")]
    Gates(#[source] VmError),
    /// The replicated disks' images could not be opened for the initial copy.
    #[error("cannot open the disk images for the initial copy")]
    DiskImages(#[source] std::io::Error),
    /// The thread that releases committed output could not start.
    #[error("cannot start the output releaser")]
    Releaser(#[source] std::io::Error),
    /// The second heartbeat path could not start.
    #[error("cannot start the heartbeats")]
    Heartbeats(#[source] HeartbeatSetupError),
    /// The member's thread could not start.
    #[error("cannot start the FT thread")]
    Thread(#[source] std::io::Error),
    /// The checkpoint engine refused or failed the operation.
    #[error("the checkpoint engine failed")]
    Checkpoint(#[source] CheckpointError),
    /// The pair thread gave no answer in time.
    #[error("the pair thread did not answer within {0:?}")]
    NoAnswer(Duration),
    /// The pair ended (or is ending) meanwhile.
    #[error("the FT pair ended meanwhile")]
    Ended,
    /// A VM operation was asked of a backup.
    #[error("a backup runs no guest")]
    NotPrimary,
}
