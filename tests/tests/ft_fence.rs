//! Fencing of the shared disk (issue 11 item 4): a primary that stops with committed writes it
//! has not applied yet must never write them over what the new primary wrote since.
//!
//! The shared image lives on a filesystem the test freezes (`fsfreeze`, a real stalled disk):
//! the primary's releaser blocks in its first write while the guest's later INCs commit (the
//! backup acks them) but cannot reach the disk. Then the primary is stopped, the disk thawed, the
//! backup takes over and the client goes on; when the old primary continues, it still holds those
//! committed writes, older than what the new primary wrote to the same sector.

use serde_json::json;
use std::time::{Duration, Instant};
use tandem_tests::client::{counter_on_disk, CounterConn};
use tandem_tests::ft::{
    ft_status, signal, wait_ft, wait_halted, wait_status, wait_takeover, FT_PORT, GUEST_IP, T,
};
use tandem_tests::ft_pair::Hosts;
use tandem_tests::net::{Node, TestNet, HOST_B_LINK_IP};
use tandem_tests::stall::StallableFs;
use tandem_tests::{require, Tandem, TempDir};

/// A protected pair whose shared disk is on `fs`.
struct Fenced {
    net: TestNet,
    p: Tandem,
    b: Tandem,
    image: std::path::PathBuf,
    _store: TempDir,
}

fn pair_on(tag: &str, fs: &StallableFs, failure_timeout_ms: u64) -> Fenced {
    // The arbiter (in the store) must not be on the disk that stalls: it decides who may write.
    let image = fs.path(&format!("{tag}.img"));
    let Hosts { net, p, b, store } = Hosts::up_with_disk(tag, Some(image.clone()));
    let arbiter = store.path("arbiter");
    let url = format!("tcp:{HOST_B_LINK_IP}:{FT_PORT}");
    b.put_ok(
        "ft.receive",
        Some(&json!({
            "listen": url,
            // The private test link.
            "insecure": true,
            "net": [{"id": "nic0", "tap": "tap0"}],
            "serial": {"mode": "File", "file": b.serial_path},
            "arbiter": {"path": arbiter},
            "disk_mode": "shared",
            "failure_timeout_ms": failure_timeout_ms,
        })),
    );
    p.put_ok(
        "ft.enable",
        Some(&json!({
            "peer": url,
            "disk_mode": "shared",
            "arbiter": {"path": arbiter},
            "failure_timeout_ms": failure_timeout_ms,
        })),
    );
    wait_ft(&p, "primary", "protected", &b);
    wait_ft(&b, "backup", "protected", &p);
    Fenced {
        net,
        p,
        b,
        image,
        _store: store,
    }
}

/// A counter connection from the client namespace (the socket stays there; any thread may use it).
fn connect(net: &TestNet) -> CounterConn {
    net.run_in(Node::Client, || {
        CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect")
    })
    .join()
    .expect("client thread")
}

/// The backup's last committed checkpoint.
fn committed(b: &Tandem) -> u64 {
    ft_status(b)["last_committed_epoch"].as_u64().unwrap_or(0)
}

/// Sends `n` INCs a few epochs apart while the disk is frozen, so that each one's write is
/// logged in its own epoch, and waits until the backup has committed every one of them: the
/// primary now holds committed writes its releaser cannot apply (it is stuck in the first).
fn commit_unapplied_incs(f: &Fenced, c: &mut CounterConn, n: usize) {
    for _ in 0..n {
        c.send("INC").expect("send INC");
        std::thread::sleep(Duration::from_millis(150));
    }
    // Checkpoints go on while the disk is stuck (the guest's FLUSH completes at commit): a few
    // more epochs committed after the last INC arrived cover its write's epoch.
    let after = committed(&f.b) + 4;
    wait_status(&f.b, "checkpoints committed past the INCs", |s| {
        s["last_committed_epoch"].as_u64().unwrap_or(0) >= after
    });
}

/// The counter in the image once it stops changing (the old primary's releaser, if it writes
/// at all, writes right after SIGCONT).
fn settled_counter(image: &std::path::Path) -> Option<u64> {
    let mut last = counter_on_disk(image);
    let start = Instant::now();
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_millis(500) && start.elapsed() < T {
        std::thread::sleep(Duration::from_millis(50));
        let now = counter_on_disk(image);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    last
}

#[test]
fn a_stopped_primary_never_writes_over_the_new_primary() {
    require!(kvm, netns);
    require!("stallable-fs" => tandem_tests::stall::probe());
    let fs = StallableFs::new(32);
    let f = pair_on("fst", &fs, 1000);
    let mut c = connect(&f.net);
    assert_eq!(c.inc().expect("INC"), 1);

    let frozen = fs.freeze();
    commit_unapplied_incs(&f, &mut c, 3);
    eprintln!(
        "[fst] 3 INCs committed, unapplied; primary's disk gate: {}",
        f.p.get("vm.counters").1
    );
    signal(&f.p, "STOP");
    // The write the primary's releaser had started lands now (it was already in the kernel):
    // it is older than anything the backup will write. The two after it were not started.
    drop(frozen);
    let took = wait_takeover(&f.b);
    eprintln!("[fst] backup live {took:?} after the primary stopped");
    // The new primary re-issued the committed writes and answers the held INCs.
    for want in 2..=4 {
        assert_eq!(c.reply().expect("held INC answered"), want);
    }
    for want in 5..=7 {
        assert_eq!(c.inc().expect("INC on the new primary"), want);
    }
    assert_eq!(counter_on_disk(&f.image), Some(7));

    signal(&f.p, "CONT");
    let halted = wait_halted(&f.p);
    eprintln!("[fst] old primary: {halted}");
    let on_disk = settled_counter(&f.image);
    assert_eq!(
        on_disk,
        Some(7),
        "the old primary wrote its stale committed writes over the new primary's \
         (the client's last reply was 7)\nold primary's log:\n{}",
        f.p.log()
    );
    assert_eq!(c.get().expect("GET"), 7);
    assert_eq!(ft_status(&f.b)["state"], "unprotected");
    // Whether its releaser met the expired lease or the halt first is a race; either way the
    // image above is the proof.
    eprintln!(
        "[fst] old primary held its writes back on the lease: {}",
        f.p.log().contains("committed writes held back")
    );
}

/// `ft.promote` makes the window plain timing: the backup goes live at once, while a primary
/// that was stopped for less than the failure timeout (a host hiccup) still holds committed
/// writes. Promote must wait until the old primary's lease is over.
#[test]
fn promote_waits_out_the_lease_of_a_stalled_primary() {
    require!(kvm, netns);
    require!("stallable-fs" => tandem_tests::stall::probe());
    let fs = StallableFs::new(32);
    // Long enough that the backup does not fail over on its own while the primary is stopped.
    let timeout = Duration::from_millis(4000);
    let f = pair_on("fpr", &fs, timeout.as_millis() as u64);
    let mut c = connect(&f.net);
    assert_eq!(c.inc().expect("INC"), 1);
    let frozen = fs.freeze();
    commit_unapplied_incs(&f, &mut c, 3);
    signal(&f.p, "STOP");
    let stopped = Instant::now();
    drop(frozen);
    f.b.put_ok("ft.promote", None);
    wait_takeover(&f.b);
    let live_after = stopped.elapsed();
    for want in 2..=4 {
        assert_eq!(c.reply().expect("held INC answered"), want);
    }
    for want in 5..=7 {
        assert_eq!(c.inc().expect("INC on the new primary"), want);
    }
    // A hiccup, not a crash: the old primary continues before any timeout of its own.
    signal(&f.p, "CONT");
    let halted = wait_halted(&f.p);
    eprintln!("[fpr] promoted backup live {live_after:?} after the primary stopped; old: {halted}");
    assert_eq!(
        settled_counter(&f.image),
        Some(7),
        "the old primary wrote its stale committed writes over the promoted backup's\n\
         old primary's log:\n{}\npromoted backup's log:\n{}",
        f.p.log(),
        f.b.log()
    );
    assert!(
        live_after >= timeout.mul_f64(0.9),
        "the promoted backup wrote {live_after:?} after the primary stopped, before its \
         {timeout:?} lease could have run out"
    );
    assert_eq!(c.get().expect("GET"), 7);
}

/// `ft.promote` while the primary runs and serves a client: exactly one member runs afterwards,
/// the client loses no INC, and the disk holds its last reply.
#[test]
fn promote_of_a_live_primary_leaves_one_member_and_loses_nothing() {
    require!(kvm, netns);
    require!("stallable-fs" => tandem_tests::stall::probe());
    let fs = StallableFs::new(32);
    let f = pair_on("fpl", &fs, 1000);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = tandem_tests::ft::client(&f.net, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    f.b.put_ok("ft.promote", None);
    wait_takeover(&f.b);
    let live_after = asked.elapsed();
    let halted = wait_halted(&f.p);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, slowest) = client.join().expect("client");
    eprintln!(
        "[fpl] promoted in {live_after:?}; {} INCs, slowest {slowest:?}; old primary: {}",
        seen.len(),
        halted["reason"]
    );
    tandem_tests::ft::assert_counts_up(&seen);
    let last = *seen.last().unwrap();
    assert_eq!(settled_counter(&f.image), Some(last));
    // One member runs the guest: the old primary is halted with its VM stopped.
    assert_eq!(ft_status(&f.b)["state"], "unprotected");
    assert_ne!(f.p.state(), "Running");
    // A live primary answers the promoted backup's Fence: no need to wait out its lease.
    assert!(
        f.b.log()
            .contains("the old primary confirmed it stopped writing the shared disk"),
        "the primary did not confirm its fence:\nbackup:\n{}\nprimary:\n{}",
        f.b.log(),
        f.p.log()
    );
    assert!(
        f.p.log().contains("gave up its shared-disk lease"),
        "{}",
        f.p.log()
    );
}
