//! Why a request cannot be applied in the current state. The dispatch (`Vmm::apply`) lists, in
//! one `match`, every (request, owner) pair that is allowed; every other pair ends here, so
//! each refusal and its precedence is written once.

use super::owner::{Kind, VmState};
use super::VmmError;
use crate::api::ApiRequest;
use ft::status::{FtState, Role};

/// The verb a wrong-state error names.
fn action(req: &ApiRequest) -> &'static str {
    match req {
        ApiRequest::VmBoot => "boot",
        ApiRequest::VmPause => "pause",
        ApiRequest::VmResume | ApiRequest::VmResumeForced => "resume",
        ApiRequest::VmShutdown => "shut down",
        ApiRequest::VmReboot => "reboot",
        ApiRequest::VmSnapshot(_) => "snapshot",
        ApiRequest::VmSendMigration(_) => "migrate",
        ApiRequest::VmCounters => "read counters of",
        ApiRequest::FtEnable(_) => "enable FT on",
        ApiRequest::VmDelete => "delete",
        _ => "change",
    }
}

/// Calls that bring a VM into an empty VMM.
fn brings_a_vm(req: &ApiRequest) -> bool {
    matches!(
        req,
        ApiRequest::VmCreate(_)
            | ApiRequest::VmRestore(_)
            | ApiRequest::VmReceiveMigration(_)
            | ApiRequest::FtReceive(_)
    )
}

/// Why `ft.verify` is refused: it needs a protected primary.
fn verify_refusal(owner: Kind<'_>, ft: (Role, FtState)) -> VmmError {
    match (owner, ft.1) {
        (Kind::Backup, _) => VmmError::FtVerifyOnBackup,
        (Kind::Primary { .. }, FtState::Syncing) => VmmError::FtSyncing,
        (Kind::Primary { .. }, state) => VmmError::FtNotProtected {
            state: state_name(state),
        },
        _ => VmmError::FtNotEnabled,
    }
}

/// A state as `ft.status` spells it.
fn state_name(s: FtState) -> &'static str {
    match s {
        FtState::Syncing => "syncing",
        FtState::Protected => "protected",
        FtState::Unprotected => "unprotected",
        FtState::FailingOver => "failing_over",
        FtState::Halted => "halted",
    }
}

/// Why `req` is refused while `owner` holds the VM and the FT status is `ft`.
pub(super) fn refusal(req: &ApiRequest, owner: Kind<'_>, ft: (Role, FtState)) -> VmmError {
    match req {
        ApiRequest::FtPromote if matches!(owner, Kind::Backup) => {
            return VmmError::FtNothingToPromote
        }
        ApiRequest::FtPromote => return VmmError::FtNotBackup,
        ApiRequest::FtDisable => return VmmError::FtNotEnabled,
        ApiRequest::FtVerify(_) => return verify_refusal(owner, ft),
        ApiRequest::FtEnable(_) | ApiRequest::FtReceive(_)
            if matches!(owner, Kind::Primary { .. } | Kind::Backup) =>
        {
            return VmmError::FtAlready
        }
        ApiRequest::FtEnable(_)
            if !matches!(
                ft,
                (Role::Standalone, _) | (Role::Primary, FtState::Unprotected)
            ) =>
        {
            return VmmError::FtAlready
        }
        _ => {}
    }
    let state = owner.vm_state();
    match owner {
        Kind::Primary { .. }
            if ft.1 == FtState::Syncing
                && matches!(
                    req,
                    ApiRequest::VmPause
                        | ApiRequest::VmResume
                        | ApiRequest::VmShutdown
                        | ApiRequest::VmReboot
                ) =>
        {
            VmmError::FtSyncing
        }
        Kind::Primary { .. } if matches!(req, ApiRequest::VmPause | ApiRequest::VmResume) => {
            VmmError::WrongState {
                action: action(req),
                state: state.unwrap_or(VmState::Running),
            }
        }
        Kind::Primary { .. } => VmmError::FtEnabled,
        Kind::Backup => VmmError::FtBackup,
        Kind::MigratingOut | Kind::Receiving => VmmError::MigrationInProgress,
        Kind::Fenced(reason) if matches!(req, ApiRequest::VmBoot | ApiRequest::VmReboot) => {
            VmmError::Fenced {
                reason: reason.to_string(),
            }
        }
        Kind::InDoubt(reason) if matches!(req, ApiRequest::VmResume) => VmmError::OutcomeUnknown {
            reason: reason.to_string(),
        },
        _ if brings_a_vm(req) && owner.has_config() => VmmError::VmExists,
        // Only a standalone VMM becomes a backup (a halted or failed-over member: ft.disable).
        Kind::Empty if matches!(req, ApiRequest::FtReceive(_)) => VmmError::FtAlready,
        Kind::Empty => VmmError::NoVm,
        _ => VmmError::WrongState {
            action: action(req),
            state: state.unwrap_or(VmState::Shutdown),
        },
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
