//! The replica scrub between two real `tandem` processes (issue 11 item 10): a backup whose copy
//! was corrupted on purpose is found out by `ft.verify`, which names the region, counts it
//! (metrics, `ft.status`), logs it, re-sends it, and a second `ft.verify` finds nothing.
//!
//! Guest memory is corrupted through the backup's test-only hook
//! (`TANDEM_TEST_CORRUPT_REPLICA`, honoured by debug builds only: `vmm/src/ft/replica_fault.rs`),
//! which flips a page of the replica right after the initial sync; a replicated disk is corrupted
//! by writing the backup's image file behind its back. Either way the checkpoints never resend the
//! region (the guest does not touch it), so only the scrub can find and heal it.

use serde_json::{json, Value};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use tandem_tests::client::CounterConn;
use tandem_tests::ft::{
    booted_pair_backup_env, directory_arbiter, ft_status, wait_ft, Pair, GUEST_IP, T,
};
use tandem_tests::ft_disks::{
    assert_same_image, make_image, replicated_pair, wait_two_commits, BLOCK,
};
use tandem_tests::metrics::Metrics;
use tandem_tests::{require_kvm_and_netns, Tandem, TempDir};

/// The guest-physical page the hook flips: high in the 128 MiB guest, which never touches it.
const CORRUPT_GPA: u64 = 0x600_0000;

/// `PUT ft.verify` on `t`: (status, body).
fn verify(t: &Tandem) -> (u16, Value) {
    t.put("ft.verify", Some(&json!({"timeout_ms": 45_000})))
}

/// `ft.verify` that must answer 200; its report.
fn verify_ok(t: &Tandem, other: &Tandem) -> Value {
    let started = Instant::now();
    let (code, r) = verify(t);
    assert_eq!(
        code,
        200,
        "ft.verify: {r}\nlog:\n{}\npeer log:\n{}",
        t.log(),
        other.log()
    );
    eprintln!("ft.verify answered in {:?}: {r}", started.elapsed());
    r
}

/// The `ft.enable` body of `pair` with the background scrub off, so that only `ft.verify`
/// finds the corruption (and the test says which call did).
fn enable_body(pair: &Pair) -> Value {
    let mut body = pair.enable_body();
    body["scrub_period_s"] = json!(0);
    body
}

/// A few INCs answered in order: the guest runs on through the passes.
fn guest_serves(pair: &Pair) {
    pair.net
        .run_in(tandem_tests::net::Node::Client, || {
            let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
            let first = c.inc().expect("INC");
            for i in 1..5 {
                assert_eq!(c.inc().expect("INC"), first + i);
            }
        })
        .join()
        .expect("client thread");
}

/// Waits until `t`'s log has a line containing `text`.
fn wait_log(t: &Tandem, text: &str) -> String {
    let start = Instant::now();
    loop {
        let log = t.log();
        if let Some(l) = log.lines().find(|l| l.contains(text)) {
            return l.to_string();
        }
        assert!(start.elapsed() < T, "no {text:?} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The difference the report must name, repaired.
fn assert_one_repaired(report: &Value, kind: &str, region: &str) {
    assert_eq!(report["clean"], false, "{report}");
    assert_eq!(report["healed"], true, "{report}");
    let m = report["mismatches"].as_array().expect("mismatches");
    assert_eq!(m.len(), 1, "{report}");
    assert_eq!(m[0]["kind"], kind, "{report}");
    assert_eq!(m[0]["healed"], true, "{report}");
    let name = m[0]["region"].as_str().unwrap_or_default();
    assert!(name.starts_with(region), "{name:?} is not {region:?}…");
}

#[test]
fn verify_finds_a_corrupted_replica_page_and_repairs_it() {
    let name = "verify_finds_a_corrupted_replica_page_and_repairs_it";
    require_kvm_and_netns!(name);
    let fault = format!("{CORRUPT_GPA:#x}:4096");
    let pair = booted_pair_backup_env(
        "fvm",
        "shared",
        1000,
        directory_arbiter,
        &[("TANDEM_TEST_CORRUPT_REPLICA", &fault)],
    );
    let (p, b) = (&pair.p, &pair.b);

    // Not a pair member yet: a clear 409, nothing started.
    let (code, err) = verify(p);
    assert_eq!(code, 409, "{err}");
    assert!(err.to_string().contains("FT is not enabled"), "{err}");

    b.put_ok("ft.receive", Some(&pair.receive_body(b, &pair.b_image)));
    p.put_ok("ft.enable", Some(&enable_body(&pair)));
    wait_ft(p, "primary", "protected", b);
    wait_ft(b, "backup", "protected", p);
    // The fault happened (a release build would have ignored the variable).
    wait_log(b, "TEST ONLY: flipped 4096 bytes of the replica");

    // The backup answers 409 and names where to ask.
    let (code, err) = verify(b);
    assert_eq!(code, 409, "{err}");
    assert!(err.to_string().contains("runs on the primary"), "{err}");

    let report = verify_ok(p, b);
    let region = format!("memory gpa {CORRUPT_GPA:#x}-");
    assert_one_repaired(&report, "memory", &region);
    assert_eq!(report["memory_bytes"], 128u64 << 20, "{report}");
    assert!(report["regions"].as_u64().unwrap_or(0) > 2048, "{report}");

    // Everywhere a difference must show: ft.status (reason and scrub), the metrics, the log.
    let s = ft_status(p);
    assert_eq!(s["state"], "protected", "{s}");
    assert_eq!(s["scrub"]["mismatches"], 1, "{s}");
    assert_eq!(s["scrub"]["healed"], 1, "{s}");
    assert_eq!(s["scrub"]["unhealed"], 0, "{s}");
    assert!(
        s["scrub"]["last_mismatch"]["region"]
            .as_str()
            .is_some_and(|r| r.starts_with(&region)),
        "{s}"
    );
    assert!(
        s["reason"].as_str().is_some_and(|r| r.contains(&region)),
        "{s}"
    );
    let m = Metrics::scrape_unix(&p.socket);
    let kind = |k| m.get("tandem_ft_scrub_mismatches_total", Some(("kind", k)));
    assert_eq!(kind("memory"), Some(1.0), "{}", m.text);
    assert_eq!(kind("disk"), Some(0.0), "{}", m.text);
    assert!(
        m.get("tandem_ft_scrub_regions_total", None)
            .is_some_and(|n| n > 2048.0),
        "{}",
        m.text
    );
    wait_log(p, "the backup's copy differs at checkpoint");
    let line = wait_log(p, "healed: equal on the backup after repair 1");
    assert!(line.contains(&region), "{line}");
    wait_log(b, "this copy differs from the primary's");

    // Repaired: a second pass finds nothing, and the guest was served throughout.
    let again = verify_ok(p, b);
    assert_eq!(again["clean"], true, "{again}");
    assert_eq!(again["mismatches"], json!([]), "{again}");
    assert_eq!(ft_status(p)["scrub"]["mismatches"], 1);
    guest_serves(&pair);
    assert_eq!(ft_status(p)["state"], "protected");
}

#[test]
fn verify_finds_a_corrupted_replica_disk_block_and_repairs_it() {
    let name = "verify_finds_a_corrupted_replica_disk_block_and_repairs_it";
    require_kvm_and_netns!(name);
    const SIZE: u64 = 8 << 20;
    let store = TempDir::new("fvd-store");
    let (p_image, b_image) = (store.path("p.img"), store.path("b.img"));
    make_image(&p_image, SIZE, |i| Some((i % 251) as u8 + 1));
    make_image(&b_image, SIZE, |_| Some(0xee));
    let pair = replicated_pair("fvd", store, p_image, b_image);
    let (p, b) = (&pair.p, &pair.b);
    p.put_ok("ft.enable", Some(&enable_body(&pair)));
    wait_ft(p, "primary", "protected", b);
    wait_ft(b, "backup", "protected", p);
    wait_two_commits(b);
    assert_same_image("after ft.enable", &pair.b_image, &pair.p_image);
    assert_eq!(verify_ok(p, b)["clean"], true);

    // Block 1000 of the backup's image goes bad behind the pair's back (bit rot, a stray
    // write): 4 MiB in, well past anything the counter guest writes.
    let at = 1000 * BLOCK;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pair.b_image)
        .expect("open the replica's image");
    f.write_all_at(&[0x5a; 512], at + 512).expect("corrupt");
    f.sync_all().expect("sync");
    drop(f);

    let report = verify_ok(p, b);
    assert_eq!(report["disk_bytes"], SIZE, "{report}");
    // 64 KiB regions: bytes 4 063 232.. hold block 1000's second sector.
    assert_one_repaired(&report, "disk", "disk 0 (\"disk0\") bytes 4063232..4128768");
    assert_same_image("after the repair", &pair.b_image, &pair.p_image);
    let m = Metrics::scrape_unix(&p.socket);
    assert_eq!(
        m.get("tandem_ft_scrub_mismatches_total", Some(("kind", "disk"))),
        Some(1.0),
        "{}",
        m.text
    );
    let again = verify_ok(p, b);
    assert_eq!(again["clean"], true, "{again}");
    guest_serves(&pair);
    assert_eq!(ft_status(p)["state"], "protected");
}
