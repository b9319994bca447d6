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
    /// The call needs a VM and `vm.create` (or a restore) made none.
    #[error("no VM has been created")]
    NoVm,
    /// `vm.create`, a restore or a migration target would replace the VM that exists.
    #[error("a VM already exists; delete it first")]
    VmExists,
    /// The VM's state does not allow this call (e.g. resuming a running VM).
    #[error("cannot {action} a VM that is {state:?}")]
    WrongState {
        /// The call, as a verb (`pause`, `boot`, `read counters of`).
        action: &'static str,
        /// The state the VM was in.
        state: VmState,
    },
    /// The VM config given to `vm.create` is not valid.
    #[error("invalid VM config")]
    Config(#[from] ConfigError),
    /// Building or starting the VM at `vm.boot` failed.
    #[error("cannot boot the VM")]
    Boot(#[source] VmError),
    /// Pausing, resuming, stopping or rebooting the VM failed.
    #[error("cannot {action} the VM")]
    Vm {
        /// The call, as a verb (`pause`, `resume`, ...).
        action: &'static str,
        /// What the VM said.
        #[source]
        source: VmError,
    },
    /// `vm.snapshot` failed.
    #[error("cannot snapshot the VM")]
    Snapshot(#[source] SnapshotFailure),
    /// `vm.restore` failed.
    #[error("cannot restore the VM")]
    Restore(#[source] SnapshotFailure),
    /// A migration (out or in) owns the VM until it ends.
    #[error("a migration is in progress")]
    MigrationInProgress,
    /// A migration or FT URL is not `tcp:HOST:PORT` or `unix:PATH`.
    #[error("bad migration URL")]
    MigrationUrl(#[source] TransportError),
    /// Connecting to the migration destination failed.
    #[error("cannot reach the migration destination")]
    MigrationConnect(#[source] TransportError),
    /// Binding the migration (or `ft.receive`) listener failed.
    #[error("cannot listen for the migration")]
    MigrationListen(#[source] TransportError),
    /// Spawning the migration thread failed.
    #[error("cannot start the migration thread")]
    MigrationThread(#[source] std::io::Error),
    /// A VM call other than pause, resume, shutdown and reboot on a protected primary.
    #[error("FT is enabled; ft.disable first (only pause, resume, shutdown and reboot are carried to the backup)")]
    FtEnabled,
    /// A VM call on an FT backup, which has no VM to act on.
    #[error(
        "this VMM is an FT backup; it runs no VM until it goes live (ft.disable to leave the pair)"
    )]
    FtBackup,
    /// A call that needs a protected pair while the primary still syncs the backup.
    #[error("FT is still syncing the backup; try again once protected")]
    FtSyncing,
    /// The pair ended (failover, halt) while the call was being carried out.
    #[error("the FT pair ended meanwhile; try again")]
    FtEndedMeanwhile,
    /// Carrying a VM call out on the protected pair failed.
    #[error("cannot {action} the protected VM")]
    FtOp {
        /// The call, as a verb (`pause`, `verify`, ...).
        action: &'static str,
        /// What the pair said.
        #[source]
        source: PairError,
    },
    /// `ft.enable` or `ft.receive` on a VMM that is already in a pair (or not standalone).
    #[error("this VMM is already in an FT pair; ft.disable first")]
    FtAlready,
    /// `ft.promote` on a VMM that is not a backup.
    #[error("only a backup can be promoted")]
    FtNotBackup,
    /// An FT call (`ft.disable`, ...) on a VMM that is in no pair.
    #[error("FT is not enabled")]
    FtNotEnabled,
    /// `ft.promote` before the backup received a complete checkpoint.
    #[error("the backup has no complete checkpoint yet: nothing to go live from")]
    FtNothingToPromote,
    /// Booting on a halted or fenced member: another may be running the guest.
    #[error("this member must not run the guest: {reason}; ft.disable clears it once the operator knows where the guest runs")]
    Fenced {
        /// Why it is fenced, as `ft.status` says.
        reason: String,
    },
    /// `vm.resume` after a migration whose outcome is in doubt (the destination may run it).
    #[error(
        "the migration's outcome is unknown ({reason}): {}",
        super::migration::IN_DOUBT_ACTION
    )]
    OutcomeUnknown {
        /// Why the outcome is unknown.
        reason: String,
    },
    /// The primary stopped its VM but could not confirm at the arbiter how the pair ended.
    #[error("the VM is stopped, but the end of the pair is not settled: {reason}")]
    FtEndUnconfirmed {
        /// Why, as `ft.status` says.
        reason: String,
    },
    /// Reading, claiming or naming this member at the arbiter failed.
    #[error("cannot use the arbiter")]
    FtArbiter(#[source] ArbiterError),
    /// `ft.enable`'s peer is not a `tcp:` URL.
    #[error("the FT peer must be tcp:HOST:PORT, got {peer}")]
    FtPeerNotTcp {
        /// The peer as given.
        peer: String,
    },
    /// Connecting to the FT peer failed.
    #[error("cannot reach the FT peer")]
    FtPeer(#[source] TransportError),
    /// Starting the pair's threads or the first sync failed.
    #[error("cannot start FT")]
    FtStart(#[source] PairError),
    /// The FT pair key file cannot be read or is not a valid key.
    #[error("cannot use the pair key")]
    FtKey(#[source] AuthError),
    /// The FT handshake with the peer failed (wrong key, or one side keyless).
    #[error("the FT peer was refused")]
    FtAuth(#[source] AuthError),
    /// The backup refused the pair in the FT hello (config or version mismatch).
    #[error("the backup refused the pair")]
    FtRefused(#[source] ft::migration::MigrationError),
    /// The heartbeat second path cannot be set up (bad address, bind failed).
    #[error("bad heartbeat path")]
    FtHeartbeat(#[source] HeartbeatSetupError),
    /// A keyless listener other hosts could reach, without `"insecure": true`.
    #[error(transparent)]
    InsecureListen(AuthError),
    /// The migration key file cannot be read or is not a valid key.
    #[error("cannot use the migration key")]
    MigrationKey(#[source] AuthError),
    /// The migration handshake with the destination failed (wrong key, or one side keyless).
    #[error("the migration destination was refused")]
    MigrationAuth(#[source] AuthError),
    /// `ft.verify` on the backup.
    #[error("ft.verify runs on the primary; this VMM is the backup")]
    FtVerifyOnBackup,
    /// `ft.verify` on a primary that is not protected (and not syncing).
    #[error("ft.verify needs a protected pair; this primary is {state} (ft.status says why)")]
    FtNotProtected {
        /// The primary's FT state (`halted`, `failed_over`, ...).
        state: &'static str,
    },
    /// `ft.verify`'s replica scrub failed or was cut short.
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
