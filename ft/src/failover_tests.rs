use super::*;
use crate::arbiter::{ArbiterError, FileArbiter, Holder};
use std::sync::Mutex;

#[derive(Clone, Copy, Debug)]
enum Answer {
    Won,
    Lost,
    Superseded,
    Error,
}

/// Answers scripted in order; records every claim.
#[derive(Default)]
struct Fake {
    answers: Mutex<Vec<Answer>>,
    calls: Mutex<Vec<(u64, Claim)>>,
}

fn winner() -> Claim {
    Claim {
        role: Role::Primary,
        host: "host-a".into(),
        pid: 42,
        time_unix_ms: 1,
        reason: "backup silent".into(),
    }
}

impl Fake {
    fn answering(a: &[Answer]) -> Fake {
        let f = Fake::default();
        f.answers.lock().unwrap().extend(a.iter().rev());
        f
    }
    fn calls(&self) -> Vec<(u64, Claim)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Arbiter for Fake {
    fn try_acquire(&self, generation: u64, claimant: &Claim) -> Result<Outcome, ArbiterError> {
        self.calls
            .lock()
            .unwrap()
            .push((generation, claimant.clone()));
        let holder = Holder {
            generation,
            claim: Some(winner()),
        };
        match self.answers.lock().unwrap().pop().expect("unexpected call") {
            Answer::Won => Ok(Outcome::Won),
            Answer::Lost => Ok(Outcome::Lost(holder)),
            Answer::Superseded => Ok(Outcome::Superseded(Holder {
                generation: generation + 3,
                ..holder
            })),
            Answer::Error => Err(ArbiterError::Io {
                op: "create",
                path: "/shared/arbiter/gen-x".into(),
                source: std::io::Error::other("stale NFS handle"),
            }),
        }
    }
    fn current(&self) -> Result<Option<Holder>, ArbiterError> {
        Ok(None)
    }
    fn identity(&self) -> Result<crate::arbiter::Identity, ArbiterError> {
        crate::arbiter::Identity::random()
    }
}

const SILENT: Verdict = Verdict::Failed {
    silent_for: Duration::from_secs(3),
};

fn member(role: Role, state: FtState, answers: &[Answer]) -> FailoverCoordinator<Fake> {
    let s = StatusHandle::new();
    s.enable(role, 10, Some("peer:1".into()), "enable").unwrap();
    if state != FtState::Syncing {
        s.transition(FtState::Protected, "synced").unwrap();
    }
    if state == FtState::Halted {
        s.transition(FtState::Halted, "test").unwrap();
    }
    FailoverCoordinator::new(Fake::answering(answers), s)
}

#[test]
fn primary_that_wins_releases_output_and_runs_unprotected() {
    let mut m = member(Role::Primary, FtState::Protected, &[Answer::Won]);
    assert_eq!(
        m.on_verdict(SILENT),
        Decision::ReleaseOutputs { generation: 11 }
    );
    let snap = m.status.snapshot();
    assert_eq!(
        (snap.role, snap.state, snap.generation),
        (Role::Primary, FtState::Unprotected, 11)
    );
    assert!(snap.reason.contains("won generation 11"), "{}", snap.reason);
    let calls = m.arbiter().calls();
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].0, calls[0].1.role), (11, Role::Primary));
    assert_eq!(snap.failover_count, 0);
}

#[test]
fn backup_that_wins_goes_live_and_becomes_primary() {
    let mut m = member(Role::Backup, FtState::Protected, &[Answer::Won]);
    assert_eq!(m.on_verdict(SILENT), Decision::GoLive { generation: 11 });
    assert_eq!(m.status.state(), FtState::FailingOver);
    m.went_live().unwrap();
    let snap = m.status.snapshot();
    assert_eq!(
        (snap.role, snap.state),
        (Role::Primary, FtState::Unprotected)
    );
    assert_eq!(snap.failover_count, 1);
    // Its new peer-less life: another silence verdict does nothing.
    assert_eq!(m.on_verdict(SILENT), Decision::Stay);
}

#[test]
fn losers_halt_and_name_the_winner() {
    for (role, answer) in [
        (Role::Backup, Answer::Lost),
        (Role::Primary, Answer::Lost),
        (Role::Backup, Answer::Superseded),
    ] {
        let mut m = member(role, FtState::Protected, &[answer]);
        let d = m.on_verdict(SILENT);
        let Decision::Halt { reason } = d else {
            panic!("{role:?}/{answer:?}: {d:?}");
        };
        assert!(
            reason.contains("host-a") && reason.contains("pid 42"),
            "{reason}"
        );
        let snap = m.status.snapshot();
        assert_eq!(snap.state, FtState::Halted);
        assert_eq!(snap.reason, reason);
        assert_eq!(
            snap.generation, 10,
            "a loser does not move to the new generation"
        );
        // Halted is final: nothing more happens, the arbiter is not asked again.
        assert_eq!(m.on_verdict(SILENT), Decision::Stay);
        assert_eq!(m.arbiter().calls().len(), 1);
    }
}

#[test]
fn arbiter_error_changes_nothing_and_the_retry_reuses_the_claim() {
    let mut m = member(
        Role::Backup,
        FtState::Protected,
        &[Answer::Error, Answer::Error, Answer::Won],
    )
    .with_retry_after(Duration::from_millis(5));
    for _ in 0..2 {
        let d = m.on_verdict(SILENT);
        let Decision::Retry { error, after } = d else {
            panic!("{d:?}");
        };
        assert!(error.contains("stale NFS handle"), "{error}");
        assert_eq!(after, Duration::from_millis(5));
        let snap = m.status.snapshot();
        assert_eq!((snap.state, snap.generation), (FtState::Protected, 10));
        assert!(snap.arbiter_error.is_some());
    }
    assert_eq!(m.on_verdict(SILENT), Decision::GoLive { generation: 11 });
    assert_eq!(m.status.snapshot().arbiter_error, None);
    let calls = m.arbiter().calls();
    assert_eq!(calls.len(), 3);
    assert!(
        calls.iter().all(|c| c == &calls[0]),
        "same generation, same claim: {calls:?}"
    );
}

#[test]
fn no_failure_no_action() {
    let mut m = member(Role::Backup, FtState::Protected, &[]);
    assert_eq!(m.on_verdict(Verdict::Alive), Decision::Stay);
    assert_eq!(m.on_verdict(Verdict::Closed), Decision::Stay);
    assert!(m.arbiter().calls().is_empty());
    assert_eq!(m.status.state(), FtState::Protected);
}

#[test]
fn syncing_backup_halts_without_claiming() {
    let mut m = member(Role::Backup, FtState::Syncing, &[]);
    assert!(
        matches!(m.on_verdict(SILENT), Decision::Halt { reason } if reason.contains("first complete checkpoint"))
    );
    assert_eq!(m.status.state(), FtState::Halted);
    assert!(m.arbiter().calls().is_empty());
}

#[test]
fn syncing_primary_claims_like_a_protected_one() {
    let mut m = member(Role::Primary, FtState::Syncing, &[Answer::Won]);
    assert_eq!(
        m.on_verdict(SILENT),
        Decision::ReleaseOutputs { generation: 11 }
    );
}

#[test]
fn partitioned_pair_on_a_real_arbiter_has_one_survivor() {
    // Both members think the other died (a partition) and decide at once: invariant 3.
    let dir = std::env::temp_dir().join(format!("tandem-failover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for round in 0..20u64 {
        let gen = 10 + round * 2;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let run = |role: Role| {
            let (dir, barrier) = (dir.clone(), barrier.clone());
            std::thread::spawn(move || {
                let s = StatusHandle::new();
                s.enable(role, gen, None, "enable").unwrap();
                s.transition(FtState::Protected, "synced").unwrap();
                let mut m = FailoverCoordinator::new(FileArbiter::open(dir).unwrap(), s);
                barrier.wait();
                m.on_verdict(SILENT)
            })
        };
        let (p, b) = (run(Role::Primary), run(Role::Backup));
        let (p, b) = (p.join().unwrap(), b.join().unwrap());
        let survivors = [&p, &b]
            .iter()
            .filter(|d| matches!(d, Decision::ReleaseOutputs { .. } | Decision::GoLive { .. }))
            .count();
        assert_eq!(survivors, 1, "round {round}: {p:?} / {b:?}");
        assert!(matches!(p, Decision::Halt { .. }) || matches!(b, Decision::Halt { .. }));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_recorded_cause_is_in_the_claim_and_in_both_reasons() {
    // Winner: the claim and the reason after going live say what failed, not only "silent".
    let mut m = member(Role::Backup, FtState::Protected, &[Answer::Won]);
    m.set_cause("stream failed: checksum mismatch");
    m.set_cause("a later, lesser cause");
    assert_eq!(m.on_verdict(SILENT), Decision::GoLive { generation: 11 });
    let claim = &m.arbiter().calls()[0].1;
    assert!(
        claim.reason.contains("silent") && claim.reason.contains("checksum mismatch"),
        "{claim}"
    );
    m.went_live().unwrap();
    let r = m.status.snapshot().reason;
    assert!(
        r.contains("live as primary") && r.contains("checksum mismatch"),
        "{r}"
    );
    assert!(!r.contains("lesser"), "{r}");
    // Loser: the halt reason names the winner and its own cause.
    let mut m = member(Role::Primary, FtState::Protected, &[Answer::Lost]);
    m.set_cause("the peer aborted: unexpected Ack frame");
    let Decision::Halt { reason } = m.on_verdict(SILENT) else {
        panic!("a loser must halt");
    };
    assert!(
        reason.contains("lost arbitration") && reason.contains("unexpected Ack"),
        "{reason}"
    );
    assert_eq!(m.status.snapshot().reason, reason);
    // No cause: the reasons are as before.
    let mut m = member(Role::Backup, FtState::Protected, &[Answer::Won]);
    m.on_verdict(SILENT);
    assert!(!m.arbiter().calls()[0].1.reason.contains("before that"));
}
