//! Why an API call could not be applied, and the HTTP status each reason answers with.

use super::overrides::OverrideError;
use super::VmState;
use crate::api::ApiError;
use crate::config::ConfigError;
use crate::ft::pair::PairError;
use crate::ft::second_path::HeartbeatSetupError;
use crate::state::snapshot::SnapshotError;
use crate::vm::VmError;
use ft::arbiter::ArbiterError;
use ft::auth::AuthError;
use ft::transport::TransportError;

/// What went wrong while taking or restoring a snapshot: the files, the VM, or the host
/// resources named in the call.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFailure {
    /// A bad URL, a missing directory or file, a corrupt or unreadable state.
    #[error(transparent)]
    Files(#[from] SnapshotError),
    /// Capturing or rebuilding the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A host resource override names a device the snapshot does not have.
    #[error(transparent)]
    Override(#[from] OverrideError),
    /// The snapshot's config is not valid on this host.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Why an API call could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("no VM has been created")]
    NoVm,
    #[error("a VM already exists; delete it first")]
    VmExists,
    #[error("cannot {action} a VM that is {state:?}")]
    WrongState {
        action: &'static str,
        state: VmState,
    },
    #[error("invalid VM config")]
    Config(#[from] ConfigError),
    #[error("cannot boot the VM")]
    Boot(#[source] VmError),
    #[error("cannot {action} the VM")]
    Vm {
        action: &'static str,
        #[source]
        source: VmError,
    },
    #[error("cannot snapshot the VM")]
    Snapshot(#[source] SnapshotFailure),
    #[error("cannot restore the VM")]
    Restore(#[source] SnapshotFailure),
    #[error("a migration is in progress")]
    MigrationInProgress,
    #[error("bad migration URL")]
    MigrationUrl(#[source] TransportError),
    #[error("cannot reach the migration destination")]
    MigrationConnect(#[source] TransportError),
    #[error("cannot listen for the migration")]
    MigrationListen(#[source] TransportError),
    #[error("cannot start the migration thread")]
    MigrationThread(#[source] std::io::Error),
    #[error("FT is enabled; ft.disable first (only pause, resume, shutdown and reboot are carried to the backup)")]
    FtEnabled,
    #[error(
        "this VMM is an FT backup; it runs no VM until it goes live (ft.disable to leave the pair)"
    )]
    FtBackup,
    #[error("FT is still syncing the backup; try again once protected")]
    FtSyncing,
    #[error("the FT pair ended meanwhile; try again")]
    FtEndedMeanwhile,
    #[error("cannot {action} the protected VM")]
    FtOp {
        action: &'static str,
        #[source]
        source: PairError,
    },
    #[error("this VMM is already in an FT pair; ft.disable first")]
    FtAlready,
    #[error("only a backup can be promoted")]
    FtNotBackup,
    #[error("FT is not enabled")]
    FtNotEnabled,
    #[error("the backup has no complete checkpoint yet: nothing to go live from")]
    FtNothingToPromote,
    #[error("this member must not run the guest: {reason}; ft.disable clears it once the operator knows where the guest runs")]
    Fenced { reason: String },
    #[error(
        "the migration's outcome is unknown ({reason}): {}",
        super::migration::IN_DOUBT_ACTION
    )]
    OutcomeUnknown { reason: String },
    #[error("the VM is stopped, but the end of the pair is not settled: {reason}")]
    FtEndUnconfirmed { reason: String },
    #[error("cannot use the arbiter")]
    FtArbiter(#[source] ArbiterError),
    #[error("the FT peer must be tcp:HOST:PORT, got {peer}")]
    FtPeerNotTcp { peer: String },
    #[error("cannot reach the FT peer")]
    FtPeer(#[source] TransportError),
    #[error("cannot start FT")]
    FtStart(#[source] PairError),
    #[error("cannot use the pair key")]
    FtKey(#[source] AuthError),
    #[error("the FT peer was refused")]
    FtAuth(#[source] AuthError),
    #[error("the backup refused the pair")]
    FtRefused(#[source] ft::migration::MigrationError),
    #[error("bad heartbeat path")]
    FtHeartbeat(#[source] HeartbeatSetupError),
    /// A keyless listener other hosts could reach, without `"insecure": true`.
    #[error(transparent)]
    InsecureListen(AuthError),
    #[error("cannot use the migration key")]
    MigrationKey(#[source] AuthError),
    #[error("the migration destination was refused")]
    MigrationAuth(#[source] AuthError),
    #[error("ft.verify runs on the primary; this VMM is the backup")]
    FtVerifyOnBackup,
    #[error("ft.verify needs a protected pair; this primary is {state} (ft.status says why)")]
    FtNotProtected { state: &'static str },
    #[error("the replica scrub did not finish")]
    FtVerify(#[source] ft::scrub::ScrubError),
}

impl VmmError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            VmmError::NoVm => 404,
            VmmError::VmExists
            | VmmError::WrongState { .. }
            | VmmError::MigrationInProgress
            | VmmError::FtEnabled
            | VmmError::FtBackup
            | VmmError::FtAlready
            | VmmError::FtNotBackup
            | VmmError::FtNotEnabled
            | VmmError::FtNothingToPromote
            | VmmError::FtSyncing
            | VmmError::FtEndedMeanwhile
            | VmmError::FtVerifyOnBackup
            | VmmError::FtNotProtected { .. }
            | VmmError::Fenced { .. }
            | VmmError::OutcomeUnknown { .. } => 409,
            VmmError::FtVerify(e) => super::ft::verify_status(e),
            VmmError::FtOp { .. } | VmmError::FtStart(_) | VmmError::MigrationThread(_) => 500,
            VmmError::FtEndUnconfirmed { .. } => 503,
            // The caller's input: a bad URL or key file, an unreachable peer or arbiter, an
            // address we cannot listen on, a config that does not fit this host.
            VmmError::FtArbiter(_)
            | VmmError::FtPeerNotTcp { .. }
            | VmmError::FtPeer(_)
            | VmmError::FtKey(_)
            | VmmError::FtAuth(_)
            | VmmError::FtRefused(_)
            | VmmError::FtHeartbeat(_)
            | VmmError::InsecureListen(_)
            | VmmError::MigrationKey(_)
            | VmmError::MigrationAuth(_)
            | VmmError::MigrationUrl(_)
            | VmmError::MigrationConnect(_)
            | VmmError::MigrationListen(_)
            | VmmError::Config(_) => 400,
            // A payload, disk or tap the VMM cannot open is the caller's input; the rest is ours.
            VmmError::Boot(e) if e.is_input_error() => 400,
            VmmError::Snapshot(f) | VmmError::Restore(f) => match f {
                SnapshotFailure::Vm(e) if !e.is_input_error() => 500,
                _ => 400,
            },
            VmmError::Boot(_) | VmmError::Vm { .. } => 500,
        }
    }
}

impl From<VmmError> for ApiError {
    fn from(e: VmmError) -> Self {
        ApiError::from_error(e.status(), &e)
    }
}
