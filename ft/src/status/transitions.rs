//! The allowed state changes, as one table (DESIGN.md: backup failure, primary failure, invariant 3).

use super::{FtState, Role};

/// Whether `from -> to` is allowed for a member in `role`.
///
/// * `Syncing -> Protected`: the first checkpoint is acked (primary) / complete (backup).
/// * `Syncing | Protected -> Unprotected`, primary only: the backup died and the primary won
///   arbitration, so it releases held output and runs alone.
/// * `Protected -> FailingOver`, backup only: the primary died and the backup won arbitration.
///   Not from `Syncing`: a backup without a complete checkpoint has nothing to go live from
///   (invariant 2), so it halts instead.
/// * `FailingOver -> Unprotected`: the backup went live; it is the primary now (the role change is
///   done by [`super::StatusHandle::transition`]). `FailingOver -> Protected` is impossible: being
///   protected again needs a new backup and a new sync.
/// * `Unprotected -> Syncing`, primary only: re-protecting with a new backup (after a failover,
///   after losing its backup, or after a guest reboot).
/// * `Protected -> Syncing`, backup only: the primary's guest rebooted; the backup discarded its
///   copy and waits for a fresh initial sync (it has nothing to go live from until then).
/// * anything but `Halted -> Halted`: lost arbitration or a fatal error.
/// * `Halted` is terminal; only ft.disable ([`super::StatusHandle::disable`]) leaves it.
/// * a state never "changes" into itself: such a call is a caller bug worth seeing.
pub fn transition_allowed(role: Role, from: FtState, to: FtState) -> bool {
    use FtState::*;
    match (from, to) {
        (Halted, _) => false,
        (_, Halted) => role != Role::Standalone,
        (Syncing, Protected) => matches!(role, Role::Primary | Role::Backup),
        (Syncing | Protected, Unprotected) => role == Role::Primary,
        (Protected, FailingOver) => role == Role::Backup,
        (FailingOver, Unprotected) => role == Role::Backup,
        (Unprotected, Syncing) => role == Role::Primary,
        (Protected, Syncing) => role == Role::Backup,
        _ => false,
    }
}
