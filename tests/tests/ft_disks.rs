//! Replicated disks between two real `tandem` processes: the backup's own image must equal the
//! primary's byte for byte whenever the pair is quiet and after a failover, whatever the guest
//! wrote before FT was enabled, during the initial sync, around a reboot's re-sync and before a
//! re-protect (the disk is copied with memory: pre-copy with dirty-block tracking); an image of
//! the wrong size is refused on both sides; a backup without room for the copy ends the sync on
//! both sides; and a backup that cannot write its copy later (ENOSPC on a small tmpfs) ends the
//! pair at once while the primary's client goes on being served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_tests::client::{counter_on_disk, CounterConn};
use tandem_tests::ft::{
    assert_counts_up, client, ft_status, wait_ft, wait_status, wait_takeover, GUEST_IP, T,
};
use tandem_tests::ft_disks::{
    assert_same_image, make_image, replicated_pair, wait_two_commits, writer, SmallFs, BLOCK,
};
use tandem_tests::net::{Node, HOST_P_LINK_IP};
use tandem_tests::{require_kvm_and_netns, Tandem, TempDir};

/// The images' size: 8 MiB, 2048 blocks.
const SIZE: u64 = 8 << 20;
const BLOCKS: u64 = SIZE / BLOCK;

/// What the primary's image holds before anything runs: data in most blocks, holes in some, and
/// zeros written out in others (allocated but zero), so that every kind of block is copied.
fn primary_block(i: u64) -> Option<u8> {
    match i % 7 {
        0 => None,
        1 => Some(0),
        _ => Some((i % 251) as u8 + 1),
    }
}

/// A backup's image before the pair starts: garbage everywhere, so that a block the copy skips
/// (a hole or a zero block of the primary's) shows up as a difference.
fn garbage(_: u64) -> Option<u8> {
    Some(0xee)
}

/// Runs the guest's writer for `d` (and at least 20 WRITEs) and stops it; returns the WRITEs
/// it made.
fn write_for(pair: &tandem_tests::ft::Pair, d: Duration) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&pair.net, stop.clone(), BLOCKS, 20);
    std::thread::sleep(d);
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer thread")
}

#[test]
fn replicated_disk_is_copied_on_enable_reboot_and_reprotect() {
    let name = "replicated_disk_is_copied_on_enable_reboot_and_reprotect";
    require_kvm_and_netns!(name);
    let store = TempDir::new("fdc-store");
    let (p_image, b_image) = (store.path("p.img"), store.path("b.img"));
    make_image(&p_image, SIZE, primary_block);
    make_image(&b_image, SIZE, garbage);
    let mut pair = replicated_pair("fdc", store, p_image, b_image);
    let (p_img, b_img) = (pair.p_image.clone(), pair.b_image.clone());
    // Written by the guest before FT is enabled.
    assert!(write_for(&pair, Duration::from_millis(300)) >= 20);

    // Enabled while the guest writes: blocks written during the copy are sent again.
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&pair.net, stop.clone(), BLOCKS, 20);
    std::thread::sleep(Duration::from_millis(200));
    pair.p.put_ok("ft.enable", Some(&pair.enable_body()));
    wait_ft(&pair.p, "primary", "protected", &pair.b);
    wait_ft(&pair.b, "backup", "protected", &pair.p);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let n = w.join().expect("writer thread");
    wait_two_commits(&pair.b);
    assert_same_image("after ft.enable", &b_img, &p_img);
    let ps = ft_status(&pair.p);
    let log = pair.p.log();
    let pass = log.lines().find(|l| l.contains("full pass")).unwrap_or("");
    eprintln!(
        "[fdc] {n} WRITEs around ft.enable; disk sync: {}; {pass}",
        ps["disk_sync"]
    );
    assert_eq!(ps["disk_sync"]["bytes_total"], SIZE, "{ps}");
    assert_eq!(ps["disk_sync"]["bytes_copied"], SIZE, "{ps}");
    assert_eq!(ps["disk_sync"]["dirty_blocks"], 0, "{ps}");
    assert!(ps["disk_sync"]["bytes_sent"].as_u64() > Some(0), "{ps}");
    let bs = ft_status(&pair.b);
    assert_eq!(bs["disk_sync"]["bytes_total"], SIZE, "{bs}");
    assert_eq!(bs["disk_sync"]["bytes_copied"], SIZE, "{bs}");

    // A reboot: the old guest's last writes and the new guest's, during the re-sync.
    pair.p.put_ok("vm.reboot", None);
    stop.store(false, Ordering::Relaxed);
    let w = writer(&pair.net, stop.clone(), BLOCKS, 20);
    pair.p.serial().wait_count("tandem-guest: ready", 2, T);
    wait_ft(&pair.p, "primary", "protected", &pair.b);
    wait_ft(&pair.b, "backup", "protected", &pair.p);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let n = w.join().expect("writer thread");
    wait_two_commits(&pair.b);
    assert_same_image("after the reboot's re-sync", &b_img, &p_img);
    eprintln!("[fdc] {n} WRITEs around the reboot");

    // Quiet, then the primary dies: the backup goes live on an identical disk.
    wait_two_commits(&pair.b);
    pair.p.child.kill().expect("SIGKILL the primary");
    pair.p.wait_exit(T);
    wait_takeover(&pair.b);
    pair.b.wait_state("Running", T);
    assert_same_image("after failover", &b_img, &p_img);

    // Written while unprotected, then re-protected to a fresh backup with a garbage image.
    assert!(write_for(&pair, Duration::from_millis(300)) >= 20);
    let c_img = pair.store.path("c.img");
    make_image(&c_img, SIZE, garbage);
    let c = Tandem::start_in_netns("fdc-c", &pair.net.ns(Node::HostP));
    c.put_ok(
        "ft.receive",
        Some(&pair.receive_body_on(&c, &c_img, HOST_P_LINK_IP)),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&pair.net, stop.clone(), BLOCKS, 20);
    std::thread::sleep(Duration::from_millis(100));
    pair.b
        .put_ok("ft.enable", Some(&pair.enable_body_to(HOST_P_LINK_IP)));
    wait_ft(&pair.b, "primary", "protected", &c);
    wait_ft(&c, "backup", "protected", &pair.b);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let n = w.join().expect("writer thread");
    wait_two_commits(&c);
    assert_same_image("after the re-protect", &c_img, &b_img);
    eprintln!("[fdc] {n} WRITEs around the re-protect");

    // And the re-protected pair fails over onto an identical disk again.
    pair.b
        .child
        .kill()
        .expect("SIGKILL the re-protected primary");
    pair.b.wait_exit(T);
    wait_takeover(&c);
    c.wait_state("Running", T);
    assert_same_image("after the second failover", &c_img, &b_img);
    let v = pair
        .net
        .run_in(Node::Client, || {
            let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
            c.write_blocks(5, 3).expect("WRITE on the new primary");
            c.inc().expect("INC")
        })
        .join()
        .expect("client thread");
    assert_eq!(counter_on_disk(&c_img), Some(v));
}

#[test]
fn replicated_disk_of_another_size_is_refused_on_both_sides() {
    let name = "replicated_disk_of_another_size_is_refused_on_both_sides";
    require_kvm_and_netns!(name);
    let store = TempDir::new("fds-store");
    let (p_image, b_image) = (store.path("p.img"), store.path("b.img"));
    make_image(&p_image, SIZE, primary_block);
    make_image(&b_image, SIZE / 2, garbage);
    let pair = replicated_pair("fds", store, p_image, b_image);
    let before = std::fs::read(&pair.b_image).expect("read the backup's image");
    let says_sizes = |r: &str| r.contains(&SIZE.to_string()) && r.contains(&(SIZE / 2).to_string());
    // ft.enable fails with the backup's reason, before the VM is touched.
    let (code, err) = pair.p.put("ft.enable", Some(&pair.enable_body()));
    assert_eq!(code, 400, "{err}");
    assert!(says_sizes(&err.to_string()), "{err}");
    let ps = ft_status(&pair.p);
    assert_eq!(ps["role"], "standalone", "{ps}");
    // The backup refused that Hello and waits on, saying why; its image was not written.
    let bs = wait_status(&pair.b, "the refusal noted", |s| {
        s["role"] == "backup" && says_sizes(s["reason"].as_str().unwrap_or(""))
    });
    eprintln!("[fds] ft.enable: {err}\n[fds] backup: {}", bs["reason"]);
    assert_eq!(pair.p.state(), "Running");
    let v = pair
        .net
        .run_in(Node::Client, || {
            let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
            c.inc().expect("INC")
        })
        .join()
        .expect("client thread");
    assert_eq!(v, 1);
    assert_eq!(pair.b.get("vm.info").0, 404);
    assert!(std::fs::read(&pair.b_image).expect("read") == before);
    // Fixed as the reason says, the same backup takes the pair and a full copy.
    std::fs::File::options()
        .write(true)
        .open(&pair.b_image)
        .and_then(|f| f.set_len(SIZE))
        .expect("truncate -s");
    pair.p.put_ok("ft.enable", Some(&pair.enable_body()));
    wait_ft(&pair.p, "primary", "protected", &pair.b);
    wait_ft(&pair.b, "backup", "protected", &pair.p);
    wait_two_commits(&pair.b);
    assert_same_image("after fixing the size", &pair.b_image, &pair.p_image);
}

#[test]
fn replicated_backup_out_of_space_ends_the_pair_and_the_primary_runs_on() {
    let name = "replicated_backup_out_of_space_ends_the_pair_and_the_primary_runs_on";
    require_kvm_and_netns!(name);
    // The backup's image is sparse on a 1 MiB tmpfs: the copy fits (the primary's image is all
    // holes but block 0), the guest's writes soon do not.
    let small = SmallFs::mount("fdf-small", 1 << 20);
    let store = TempDir::new("fdf-store");
    let (p_image, b_image) = (store.path("p.img"), small.path("b.img"));
    make_image(&p_image, SIZE, |i| (i == 0).then_some(0));
    make_image(&b_image, SIZE, |_| None);
    let pair = replicated_pair("fdf", store, p_image, b_image);
    pair.p.put_ok("ft.enable", Some(&pair.enable_body()));
    wait_ft(&pair.p, "primary", "protected", &pair.b);
    wait_ft(&pair.b, "backup", "protected", &pair.p);
    let generation = ft_status(&pair.p)["generation"].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let incs = client(&pair.net, stop.clone());
    // Block after block until past what the tmpfs holds; the primary's own disk has room.
    let filled = pair
        .net
        .run_in(Node::Client, || {
            let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
            let mut first = 1;
            while first + 16 <= BLOCKS / 2 {
                c.write_blocks(first, 16).expect("WRITE");
                first += 16;
            }
            first
        })
        .join()
        .expect("writer thread");
    let t0 = Instant::now();
    let bs = wait_status(&pair.b, "out of the pair", |s| s["state"] == "halted");
    let ps = wait_status(&pair.p, "unprotected", |s| {
        s["role"] == "primary" && s["state"] == "unprotected"
    });
    eprintln!(
        "[fdf] {filled} blocks written; backup: {}\n[fdf] primary ({:?} later): {}",
        bs["reason"],
        t0.elapsed(),
        ps["reason"]
    );
    let enospc = |s: &serde_json::Value| {
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("No space left on device")
    };
    assert!(enospc(&bs), "the backup does not say why: {bs}");
    assert!(
        enospc(&ps),
        "the primary does not name the backup's error: {ps}"
    );
    // The backup's word was enough: the primary claimed no generation.
    assert_eq!(ps["generation"], generation, "{ps}");
    // The client goes on being served, and the backup never goes live.
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    let (seen, slowest) = incs.join().expect("client thread");
    eprintln!("[fdf] {} INCs, slowest {slowest:?}", seen.len());
    assert_counts_up(&seen);
    assert_eq!(counter_on_disk(&pair.p_image), seen.last().copied());
    let bs = ft_status(&pair.b);
    assert_eq!(bs["state"], "halted", "{bs}");
    assert_eq!(bs["failover_count"], 0, "{bs}");
    assert_eq!(pair.b.get("vm.info").0, 404, "the backup went live");
    assert_eq!(ft_status(&pair.p)["state"], "unprotected");
    drop(pair);
    drop(small);
}

#[test]
fn replicated_backup_without_room_for_the_copy_ends_the_sync_on_both_sides() {
    let name = "replicated_backup_without_room_for_the_copy_ends_the_sync_on_both_sides";
    require_kvm_and_netns!(name);
    // The primary's image is full of data; the backup's sparse one sits on a 1 MiB tmpfs.
    let small = SmallFs::mount("fdr-small", 1 << 20);
    let store = TempDir::new("fdr-store");
    let (p_image, b_image) = (store.path("p.img"), small.path("b.img"));
    make_image(&p_image, SIZE, |i| (i > 0).then_some(0x42));
    make_image(&b_image, SIZE, |_| None);
    let pair = replicated_pair("fdr", store, p_image, b_image);
    pair.p.put_ok("ft.enable", Some(&pair.enable_body()));
    let enospc = |s: &serde_json::Value| {
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("No space left on device")
    };
    let ps = wait_status(&pair.p, "standalone, saying why", |s| {
        s["role"] == "standalone" && enospc(s)
    });
    let bs = wait_status(&pair.b, "standalone, saying why", |s| {
        s["role"] == "standalone" && enospc(s)
    });
    eprintln!(
        "[fdr] primary: {}\n[fdr] backup: {}",
        ps["reason"], bs["reason"]
    );
    // The guest runs on, unprotected and served; the backup has no VM.
    assert_eq!(pair.p.state(), "Running");
    let v = pair
        .net
        .run_in(Node::Client, || {
            let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
            c.inc().expect("INC")
        })
        .join()
        .expect("client thread");
    assert_eq!(v, 1);
    assert_eq!(pair.b.get("vm.info").0, 404);
    drop(pair);
    drop(small);
}
