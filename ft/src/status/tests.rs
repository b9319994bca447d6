use super::*;
use crate::heartbeat::{FailureDetector, Path};
use std::time::Duration;
use FtState::*;

const ALL_STATES: [FtState; 5] = [Syncing, Protected, Unprotected, FailingOver, Halted];
const ALL_ROLES: [Role; 3] = [Role::Standalone, Role::Primary, Role::Backup];

/// Every allowed (role, from, to); everything else must be refused.
const ALLOWED: &[(Role, FtState, FtState)] = &[
    (Role::Primary, Syncing, Protected),
    (Role::Backup, Syncing, Protected),
    (Role::Primary, Syncing, Unprotected),
    (Role::Primary, Protected, Unprotected),
    (Role::Backup, Protected, FailingOver),
    (Role::Backup, FailingOver, Unprotected),
    (Role::Primary, Unprotected, Syncing),
    (Role::Backup, Protected, Syncing),
    (Role::Primary, Syncing, Halted),
    (Role::Primary, Protected, Halted),
    (Role::Primary, Unprotected, Halted),
    (Role::Primary, FailingOver, Halted),
    (Role::Backup, Syncing, Halted),
    (Role::Backup, Protected, Halted),
    (Role::Backup, Unprotected, Halted),
    (Role::Backup, FailingOver, Halted),
];

#[test]
fn transition_table_is_exactly_the_allowed_list() {
    for role in ALL_ROLES {
        for from in ALL_STATES {
            for to in ALL_STATES {
                let want = ALLOWED.contains(&(role, from, to));
                assert_eq!(
                    transition_allowed(role, from, to),
                    want,
                    "{role:?}: {from:?} -> {to:?}"
                );
            }
        }
    }
}

#[test]
fn refused_transitions_that_matter() {
    // A backup that started failing over cannot become protected without a new sync.
    assert!(!transition_allowed(Role::Backup, FailingOver, Protected));
    // Halted is terminal.
    for to in ALL_STATES {
        assert!(!transition_allowed(Role::Primary, Halted, to));
        assert!(!transition_allowed(Role::Backup, Halted, to));
    }
    // A backup without a complete checkpoint never goes live (invariant 2).
    assert!(!transition_allowed(Role::Backup, Syncing, FailingOver));
    // A primary never "fails over"; a backup never runs unprotected without failing over first.
    assert!(!transition_allowed(Role::Primary, Protected, FailingOver));
    assert!(!transition_allowed(Role::Backup, Protected, Unprotected));
}

#[test]
fn backup_failover_path_makes_it_primary() {
    let s = StatusHandle::new();
    assert_eq!((s.role(), s.state()), (Role::Standalone, Unprotected));
    s.enable(Role::Backup, 4, Some("10.0.0.1:7000".into()), "ft.receive")
        .unwrap();
    s.transition(Protected, "first checkpoint").unwrap();
    s.set_generation(5).unwrap();
    s.transition(FailingOver, "won generation 5").unwrap();
    assert_eq!(
        s.transition(Protected, "nope"),
        Err(StatusError::Refused {
            role: Role::Backup,
            from: FailingOver,
            to: Protected
        })
    );
    s.transition(Unprotected, "live").unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.role, Role::Primary);
    assert_eq!(snap.state, Unprotected);
    assert_eq!(snap.generation, 5);
    assert_eq!(snap.failover_count, 1);
    assert_eq!(snap.reason, "live");
}

#[test]
fn halted_is_left_only_by_disable() {
    let s = StatusHandle::new();
    s.enable(Role::Primary, 1, None, "ft.enable").unwrap();
    s.transition(Halted, "lost arbitration").unwrap();
    assert!(s.transition(Syncing, "again").is_err());
    assert!(matches!(
        s.enable(Role::Primary, 2, None, "again"),
        Err(StatusError::BadEnable { .. })
    ));
    s.disable("ft.disable");
    assert_eq!((s.role(), s.state()), (Role::Standalone, Unprotected));
    s.enable(Role::Primary, 2, None, "ft.enable").unwrap();
    assert_eq!(s.state(), Syncing);
}

#[test]
fn enable_needs_a_pair_role_and_generations_only_increase() {
    let s = StatusHandle::new();
    assert!(s.enable(Role::Standalone, 1, None, "x").is_err());
    assert!(s.transition(Halted, "standalone cannot halt").is_err());
    s.enable(Role::Primary, 3, None, "ft.enable").unwrap();
    assert_eq!(
        s.set_generation(3),
        Err(StatusError::GenerationNotIncreasing {
            current: 3,
            requested: 3
        })
    );
    assert!(s.set_generation(2).is_err());
    s.set_generation(4).unwrap();
}

#[test]
fn figures_and_serialized_names() {
    let s = StatusHandle::new();
    s.enable(Role::Primary, 7, Some("peer:1".into()), "ft.enable")
        .unwrap();
    for i in 1..=100u64 {
        s.record_checkpoint(Duration::from_micros(i * 10), 1000 * i);
    }
    for i in 1..=100u64 {
        s.record_commit_latency(Duration::from_micros(i), Duration::from_micros(i * 100));
    }
    s.record_commit(99);
    s.set_backlog(4096, 1);
    let d = FailureDetector::new(Duration::from_secs(5));
    d.heard(Path::Channel);
    s.attach_detector(d);
    let snap = s.snapshot();
    assert_eq!(snap.checkpoint_count, 100);
    assert_eq!(snap.pause.p50_us, 500);
    assert_eq!(snap.pause.p99_us, 990);
    assert_eq!(snap.pause.max_us, 1000);
    assert_eq!(snap.bytes_last_checkpoint, 100_000);
    assert_eq!(snap.bytes_per_checkpoint, 50_500);
    assert_eq!(snap.last_committed_epoch, Some(99));
    assert_eq!(
        (
            snap.commit_latency.send.p50_us,
            snap.commit_latency.ack.p99_us
        ),
        (50, 9900)
    );
    assert!(snap.ack_age_ms.is_some());
    assert!(snap.heartbeat_age.channel_ms.is_some());
    assert_eq!(snap.heartbeat_age.udp_ms, None);

    let v = serde_json::to_value(&snap).unwrap();
    assert_eq!(v["role"], "primary");
    assert_eq!(v["state"], "syncing");
    for key in [
        "generation",
        "peer",
        "last_committed_epoch",
        "checkpoint_count",
        "pause",
        "commit_latency",
        "bytes_per_checkpoint",
        "backlog_bytes",
        "backlog_epochs",
        "ack_age_ms",
        "heartbeat_age",
        "failover_count",
        "reason",
        "reason_at_unix_ms",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert!(v["pause"].get("p99_us").is_some());
    assert!(v["heartbeat_age"].get("udp_ms").is_some());
}

#[test]
fn pause_window_is_bounded_but_max_is_not() {
    let s = StatusHandle::new();
    s.enable(Role::Primary, 1, None, "ft.enable").unwrap();
    s.record_checkpoint(Duration::from_secs(2), 1);
    for _ in 0..samples::WINDOW {
        s.record_checkpoint(Duration::from_micros(100), 1);
    }
    let p = s.snapshot().pause;
    assert_eq!((p.p50_us, p.p99_us, p.max_us), (100, 100, 2_000_000));
}

#[test]
fn reprotect_only_from_an_unprotected_primary_and_keeps_the_failover_count() {
    let s = StatusHandle::new();
    assert!(s.reprotect(1, None, "no").is_err(), "standalone");
    s.enable(Role::Backup, 4, None, "ft.receive").unwrap();
    s.transition(Protected, "synced").unwrap();
    assert!(s.reprotect(4, None, "no").is_err(), "backup");
    s.transition(FailingOver, "won 5").unwrap();
    s.set_generation(5).unwrap();
    s.transition(Unprotected, "live").unwrap();
    s.record_checkpoint(Duration::from_micros(10), 100);
    s.set_guest_paused(true);
    s.reprotect(3, Some("peer:2".into()), "ft.enable").unwrap();
    let snap = s.snapshot();
    assert_eq!((snap.role, snap.state), (Role::Primary, Syncing));
    assert_eq!(snap.generation, 5, "never goes down");
    assert_eq!(snap.failover_count, 1);
    assert_eq!(snap.checkpoint_count, 0);
    assert!(snap.guest_paused);
    assert_eq!(snap.peer.as_deref(), Some("peer:2"));
    // Syncing or protected: already re-protecting.
    assert!(s.reprotect(6, None, "again").is_err());
    // A backup whose primary rebooted goes back to syncing.
    let b = StatusHandle::new();
    b.enable(Role::Backup, 1, None, "ft.receive").unwrap();
    b.transition(Protected, "synced").unwrap();
    b.transition(Syncing, "the primary rebooted").unwrap();
}

#[test]
fn counters_count_over_the_vmm_life_not_per_pair() {
    let s = StatusHandle::new();
    s.enable(Role::Backup, 1, None, "ft.receive").unwrap();
    s.record_commit(0);
    assert_eq!(
        s.counters().checkpoints,
        0,
        "the initial sync is no checkpoint"
    );
    s.record_commit(1);
    s.record_checkpoint(Duration::from_micros(300), 4096);
    s.record_ack();
    s.record_heartbeat_sent(Path::Channel);
    s.record_heartbeat_received(Path::Udp);
    s.transition(Protected, "synced").unwrap();
    s.set_generation(2).unwrap();
    s.transition(FailingOver, "won").unwrap();
    s.transition(Unprotected, "live").unwrap();
    s.disable("ft.disable");
    s.enable(Role::Primary, 3, None, "ft.enable").unwrap();
    s.record_commit(1);
    let c = s.counters();
    assert_eq!(s.snapshot().failover_count, 0, "status figures restart");
    assert_eq!(c.failovers, 1);
    assert_eq!(c.checkpoints, 2);
    assert_eq!((c.acks, c.replicated_bytes), (1, 4096));
    assert_eq!(c.pause_us.count, 1);
    assert_eq!(c.pause_us.sum, 300);
    assert_eq!(c.heartbeats(Path::Channel).sent, 1);
    assert_eq!(c.heartbeats(Path::Udp).received, 1);
    assert_eq!(c.heartbeats(Path::Udp).sent, 0);
}

#[test]
fn pause_steps_flow_and_initial_sync_are_reported_and_restart_with_each_pair() {
    use crate::checkpoint::{FlowLimit, FlowReport, PauseSteps};
    let s = StatusHandle::new();
    s.enable(Role::Primary, 1, None, "ft.enable").unwrap();
    assert!(s.snapshot().initial_sync.is_none());
    for us in [100, 200, 300] {
        s.record_pause_steps(&PauseSteps {
            stop: Duration::from_micros(us),
            copy: Duration::from_micros(2 * us),
            ..PauseSteps::default()
        });
    }
    s.set_backlog(1 << 20, 1);
    s.set_backlog(0, 0);
    s.set_flow(&FlowReport {
        throttle_permille: 400,
        limited_by: FlowLimit::Backlog,
        epoch: Duration::from_millis(5),
        target_pause: Duration::from_millis(4),
        max_backlog_bytes: 8 << 20,
        hot_pages: 15,
    });
    let snap = s.snapshot();
    assert_eq!(snap.pause_steps.stop.p50_us, 200);
    assert_eq!(snap.pause_steps.copy.p99_us, 600);
    assert_eq!(snap.pause_steps.resume.p50_us, 0);
    assert_eq!(snap.flow.throttle_permille, 400);
    assert_eq!(snap.flow.limited_by, FlowLimit::Backlog);
    assert_eq!(snap.flow.epoch_us, 5000);
    assert_eq!(snap.flow.hot_pages, 15);
    assert_eq!(
        snap.flow.peak_backlog_bytes,
        1 << 20,
        "the peak outlives the backlog"
    );
    assert_eq!(
        s.counters().pause_steps.copy,
        Duration::from_micros(1200),
        "the metrics' sums"
    );
    s.disable("ft.disable");
    s.enable(Role::Primary, 2, None, "ft.enable").unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.flow.peak_backlog_bytes, 0, "a new pair starts afresh");
    assert_eq!(snap.pause_steps.stop.p50_us, 0);
    assert_eq!(
        s.counters().pause_steps.copy,
        Duration::from_micros(1200),
        "counters span the VMM's life"
    );
}
