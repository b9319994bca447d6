use super::*;
use crate::api::types::SnapshotConfig;

const STANDALONE: (Role, FtState) = (Role::Standalone, FtState::Unprotected);
const SYNCING: (Role, FtState) = (Role::Primary, FtState::Syncing);
const PROTECTED: (Role, FtState) = (Role::Primary, FtState::Protected);
const BACKUP_SYNCING: (Role, FtState) = (Role::Backup, FtState::Syncing);
const HALTED: (Role, FtState) = (Role::Primary, FtState::Halted);

/// The refusal's variant name and status.
fn refused(req: ApiRequest, kind: Kind<'_>, ft: (Role, FtState)) -> (String, u16) {
    let e = refusal(&req, kind, ft);
    let name = format!("{e:?}");
    let name = name
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string();
    (name, e.status())
}

fn create() -> ApiRequest {
    let cfg = serde_json::from_value(serde_json::json!({"memory": {"size": 1 << 26}}))
        .expect("a minimal config");
    ApiRequest::VmCreate(Box::new(cfg))
}

fn snap() -> ApiRequest {
    ApiRequest::VmSnapshot(SnapshotConfig {
        destination_url: "file:///tmp".into(),
    })
}

#[test]
fn calls_before_a_vm_exists_are_404() {
    for req in [
        ApiRequest::VmBoot,
        ApiRequest::VmPause,
        ApiRequest::VmShutdown,
        ApiRequest::VmDelete,
        snap(),
    ] {
        assert_eq!(refused(req, Kind::Empty, STANDALONE), ("NoVm".into(), 404));
    }
}

#[test]
fn a_second_vm_is_refused_whatever_the_state() {
    for kind in [
        Kind::Created,
        Kind::Running,
        Kind::Paused,
        Kind::Shutdown,
        Kind::Migrated,
        Kind::Fenced("lost"),
        Kind::InDoubt("ack lost"),
    ] {
        let (name, status) = refused(create(), kind, STANDALONE);
        assert_eq!((name.as_str(), status), ("VmExists", 409), "{kind:?}");
    }
}

#[test]
fn wrong_state_names_the_state() {
    let e = refusal(&ApiRequest::VmResume, Kind::Running, STANDALONE);
    assert_eq!(e.to_string(), "cannot resume a VM that is Running");
    let e = refusal(&snap(), Kind::Running, STANDALONE);
    assert_eq!(e.to_string(), "cannot snapshot a VM that is Running");
    assert_eq!(
        refused(ApiRequest::VmBoot, Kind::Running, STANDALONE),
        ("WrongState".into(), 409)
    );
}

#[test]
fn a_primary_carries_only_pause_resume_shutdown_and_reboot() {
    let primary = Kind::Primary { paused: false };
    for req in [ApiRequest::VmDelete, snap(), ApiRequest::VmBoot] {
        assert_eq!(refused(req, primary, PROTECTED), ("FtEnabled".into(), 409));
    }
    for req in [
        ApiRequest::VmPause,
        ApiRequest::VmShutdown,
        ApiRequest::VmReboot,
    ] {
        assert_eq!(refused(req, primary, SYNCING), ("FtSyncing".into(), 409));
    }
    // Resuming a running guest is a state error, not an FT one.
    assert_eq!(
        refused(ApiRequest::VmResume, primary, PROTECTED),
        ("WrongState".into(), 409)
    );
}

#[test]
fn a_backup_runs_no_vm_and_cannot_be_promoted_before_its_first_checkpoint() {
    for req in [create(), ApiRequest::VmPause, ApiRequest::VmDelete] {
        assert_eq!(
            refused(req, Kind::Backup, BACKUP_SYNCING),
            ("FtBackup".into(), 409)
        );
    }
    assert_eq!(
        refused(ApiRequest::FtPromote, Kind::Backup, BACKUP_SYNCING),
        ("FtNothingToPromote".into(), 409)
    );
    assert_eq!(
        refused(ApiRequest::FtPromote, Kind::Running, STANDALONE),
        ("FtNotBackup".into(), 409)
    );
}

#[test]
fn a_fenced_member_never_boots_its_guest_again() {
    for req in [ApiRequest::VmBoot, ApiRequest::VmReboot] {
        let e = refusal(&req, Kind::Fenced("lost arbitration to B"), HALTED);
        assert_eq!(e.status(), 409);
        assert!(e.to_string().contains("lost arbitration to B"), "{e}");
    }
}

#[test]
fn ft_calls_in_a_pair_or_migration_are_refused() {
    let enable = || {
        let c = serde_json::json!({"peer": "tcp:127.0.0.1:1", "disk_mode": "shared",
                                   "arbiter": {"path": "/tmp"}});
        ApiRequest::FtEnable(Box::new(serde_json::from_value(c).expect("an ft.enable")))
    };
    assert_eq!(
        refused(enable(), Kind::Primary { paused: false }, PROTECTED),
        ("FtAlready".into(), 409)
    );
    assert_eq!(
        refused(enable(), Kind::Running, HALTED),
        ("FtAlready".into(), 409)
    );
    assert_eq!(
        refused(enable(), Kind::MigratingOut, STANDALONE),
        ("MigrationInProgress".into(), 409)
    );
    assert_eq!(
        refused(ApiRequest::FtDisable, Kind::Running, STANDALONE),
        ("FtNotEnabled".into(), 409)
    );
    assert_eq!(
        refused(ApiRequest::VmPause, Kind::Receiving, STANDALONE),
        ("MigrationInProgress".into(), 409)
    );
}

#[test]
fn a_vm_whose_migration_is_in_doubt_only_resumes_by_force() {
    let e = refusal(&ApiRequest::VmResume, Kind::InDoubt("ack lost"), STANDALONE);
    assert_eq!(e.status(), 409);
    let text = e.to_string();
    assert!(
        text.contains("ack lost") && text.contains("force") && text.contains("vm.delete"),
        "{text}"
    );
    for req in [
        ApiRequest::VmBoot,
        ApiRequest::VmPause,
        ApiRequest::VmShutdown,
        ApiRequest::VmReboot,
        snap(),
    ] {
        let (name, status) = refused(req, Kind::InDoubt("ack lost"), STANDALONE);
        assert_eq!((name.as_str(), status), ("WrongState", 409));
    }
}

#[test]
fn verify_needs_a_protected_primary() {
    let verify = || ApiRequest::FtVerify(Default::default());
    let primary = Kind::Primary { paused: false };
    let cases = [
        (Kind::Backup, BACKUP_SYNCING, "FtVerifyOnBackup"),
        (
            Kind::Backup,
            (Role::Backup, FtState::Protected),
            "FtVerifyOnBackup",
        ),
        (primary, SYNCING, "FtSyncing"),
        (primary, HALTED, "FtNotProtected"),
        (
            primary,
            (Role::Primary, FtState::Unprotected),
            "FtNotProtected",
        ),
        (Kind::Running, STANDALONE, "FtNotEnabled"),
        (Kind::Empty, STANDALONE, "FtNotEnabled"),
        (Kind::Fenced("lost"), HALTED, "FtNotEnabled"),
    ];
    for (kind, ft, want) in cases {
        assert_eq!(
            refused(verify(), kind, ft),
            (want.into(), 409),
            "{kind:?} {ft:?}"
        );
    }
    let e = refusal(&verify(), primary, HALTED);
    assert_eq!(
        e.to_string(),
        "ft.verify needs a protected pair; this primary is halted (ft.status says why)"
    );
}
