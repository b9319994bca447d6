//! The pair's settings travel in the Hello (issue 11 item 8): a disk-mode mismatch is refused on
//! both sides with a clear error and the primary's VM untouched; a backup that set no timing of
//! its own adopts the primary's. Real `tandem` processes, real KVM, the test network.

use tandem_tests::ft::{booted_pair, ft_status, wait_ft, wait_status};
use tandem_tests::require_kvm_and_netns;

#[test]
fn disk_mode_mismatch_is_refused_on_both_sides_and_the_vm_is_untouched() {
    let name = "disk_mode_mismatch_is_refused_on_both_sides_and_the_vm_is_untouched";
    require_kvm_and_netns!(name);
    let pair = booted_pair("fsm", "replicated", 1000);
    let (p, b) = (&pair.p, &pair.b);
    let mut receive = pair.receive_body(b, &pair.b_image);
    receive["disk_mode"] = "shared".into();
    b.put_ok("ft.receive", Some(&receive));
    let (code, err) = p.put("ft.enable", Some(&pair.enable_body()));
    assert_eq!(code, 400, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("refused the pair") && text.contains("disk mode mismatch"),
        "{text}"
    );
    // The primary's VM runs on, standalone, untouched.
    assert_eq!(p.state(), "Running");
    assert_eq!(ft_status(p)["role"], "standalone");
    // The backup says why, and keeps waiting for a primary that agrees.
    let s = wait_status(b, "the refusal noted", |s| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused a primary") && r.contains("mismatch"))
    });
    assert_eq!(
        (s["role"].as_str(), s["state"].as_str()),
        (Some("backup"), Some("syncing")),
        "{s}"
    );

    // The same backup, told the right mode, protects it.
    b.put_ok("ft.disable", None);
    wait_status(b, "standalone", |s| s["role"] == "standalone");
    b.put_ok("ft.receive", Some(&pair.receive_body(b, &pair.b_image)));
    p.put_ok("ft.enable", Some(&pair.enable_body()));
    wait_ft(p, "primary", "protected", b);
}

#[test]
fn a_backup_without_its_own_timing_adopts_the_primarys() {
    let name = "a_backup_without_its_own_timing_adopts_the_primarys";
    require_kvm_and_netns!(name);
    let pair = booted_pair("fst", "shared", 1000);
    let (p, b) = (&pair.p, &pair.b);
    let mut receive = pair.receive_body(b, &pair.b_image);
    receive
        .as_object_mut()
        .expect("an object")
        .remove("failure_timeout_ms");
    receive
        .as_object_mut()
        .expect("an object")
        .remove("disk_mode");
    b.put_ok("ft.receive", Some(&receive));
    let mut enable = pair.enable_body();
    enable["failure_timeout_ms"] = 300.into();
    p.put_ok("ft.enable", Some(&enable));
    wait_ft(p, "primary", "protected", b);
    wait_ft(b, "backup", "protected", p);
    assert_eq!(ft_status(b)["failure_timeout_ms"], 300, "{}", ft_status(b));
    assert_eq!(ft_status(p)["failure_timeout_ms"], 300, "{}", ft_status(p));
}

/// Two members naming different arbiter storage (an unmounted mount point is writable on both)
/// could each win a generation: the primary is refused, its VM untouched.
#[test]
fn different_arbiter_stores_are_refused_on_both_sides() {
    let name = "different_arbiter_stores_are_refused_on_both_sides";
    require_kvm_and_netns!(name);
    let pair = booted_pair("fsa", "shared", 1000);
    let (p, b) = (&pair.p, &pair.b);
    b.put_ok("ft.receive", Some(&pair.receive_body(b, &pair.b_image)));
    let elsewhere = pair.store.path("another-arbiter");
    std::fs::create_dir(&elsewhere).unwrap();
    let mut enable = pair.enable_body();
    enable["arbiter"] = serde_json::json!({ "path": elsewhere });
    let (code, err) = p.put("ft.enable", Some(&enable));
    assert_eq!(code, 400, "{err}");
    assert!(err.to_string().contains("arbiter mismatch"), "{err}");
    assert_eq!(p.state(), "Running");
    assert_eq!(ft_status(p)["role"], "standalone");
    wait_status(b, "the refusal noted", |s| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("arbiter mismatch"))
    });
    // Pointed at the backup's store, the same primary pairs.
    p.put_ok("ft.enable", Some(&pair.enable_body()));
    wait_ft(p, "primary", "protected", b);
}
