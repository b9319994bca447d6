//! The second-path rule without a network: a detector fed by hand and a real file arbiter.

use super::*;
use ft::arbiter::{Claim, FileArbiter};
use ft::status::FtState;

/// The failure timeout where a check needs "still recent": a loaded host may stall this thread
/// for hundreds of milliseconds between two lines, so the margin is a whole second.
const TIMEOUT: Duration = Duration::from_secs(1);
/// For checks that only need "silent long enough" (no upper bound), a short one keeps the test
/// fast.
const SHORT: Duration = Duration::from_millis(40);

fn arbiter(tag: &str) -> (FileArbiter, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tandem-second-path-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (FileArbiter::open(&dir).unwrap(), dir)
}

fn backup_status() -> StatusHandle {
    let s = StatusHandle::new();
    s.enable(Role::Backup, 0, None, "test").unwrap();
    s.transition(FtState::Protected, "test").unwrap();
    s
}

#[test]
fn the_primary_arbitrates_on_a_silent_stream_whatever_the_heartbeats_say() {
    let d = FailureDetector::new(TIMEOUT);
    d.heard(Path::Channel);
    assert_eq!(stream_lost(&d), None);
    std::thread::sleep(TIMEOUT + Duration::from_millis(10));
    d.heard(Path::Udp);
    assert!(!d.is_failed(), "the heartbeats keep the peer alive");
    assert!(stream_lost(&d).is_some_and(|s| s >= TIMEOUT));
}

#[test]
fn the_backup_defers_then_halts_once_the_primary_won() {
    let (arb, dir) = arbiter("lost");
    let status = backup_status();
    let d = FailureDetector::new(TIMEOUT);
    d.heard(Path::Channel);
    // The stream's last frame is recent: nothing to decide.
    assert!(matches!(defer(&arb, &status, &d), Deferral::Wait));
    std::thread::sleep(TIMEOUT + Duration::from_millis(10));
    d.heard(Path::Udp);
    assert!(matches!(defer(&arb, &status, &d), Deferral::Wait));
    assert!(status.snapshot().reason.contains("deferring"));
    let won = arb
        .try_acquire(1, &Claim::here(Role::Primary, "backup silent"))
        .unwrap();
    assert_eq!(won, ft::arbiter::Outcome::Won);
    match defer(&arb, &status, &d) {
        Deferral::Lost(why) => assert!(why.contains("generation 1"), "{why}"),
        _ => panic!("the backup must see it lost"),
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_backup_claims_after_deferring_to_a_primary_that_never_claims() {
    let (arb, dir) = arbiter("claim");
    let status = backup_status();
    let d = FailureDetector::new(SHORT);
    std::thread::sleep(SHORT * DEFER_LIMIT + Duration::from_millis(10));
    d.heard(Path::Udp);
    assert!(matches!(defer(&arb, &status, &d), Deferral::Claim(s) if s >= SHORT * DEFER_LIMIT));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn heartbeat_fields_go_together_and_are_checked() {
    assert!(HeartbeatPaths::from_api(None, None).unwrap().is_none());
    let e = HeartbeatPaths::from_api(Some("udp:127.0.0.1:0"), None)
        .err()
        .map(|e| errors::chain(&e))
        .unwrap();
    assert!(e.contains("together"), "{e}");
    let e = HeartbeatPaths::from_api(Some("127.0.0.1:0"), Some("udp:127.0.0.1:9"))
        .err()
        .map(|e| errors::chain(&e))
        .unwrap();
    assert!(e.contains("invalid heartbeat address"), "{e}");
    let p = HeartbeatPaths::from_api(Some("udp:127.0.0.1:0"), Some("udp:127.0.0.1:9"))
        .unwrap()
        .unwrap();
    let taken = p.socket.local_addr().unwrap().to_string();
    let e = HeartbeatPaths::from_api(Some(&format!("udp:{taken}")), Some("udp:127.0.0.1:9"))
        .err()
        .map(|e| errors::chain(&e))
        .unwrap();
    assert!(e.contains("cannot bind"), "{e}");
}
