//! The replica scrub between fake VMs over loopback TCP: `verify` finds a backup page or disk
//! region changed behind the engine's back, names it, and after the repair the backup equals
//! the primary and a second `verify` is clean; a busy guest verifies clean (the hashes are of
//! exactly the committed checkpoint on both sides); the background scrub finds a difference by
//! itself; a guest left paused is verified too; a verify outlived by its pair says so.

// Not every helper of the shared fake VM and proxy is used here.
#[allow(dead_code)]
mod common;

use common::fake_vm::{FakeVm, Probe};
use ft::checkpoint::{
    BackupExit, BackupHooks, BackupOptions, CheckpointStats, EpochHooks, FtBackup, FtPrimary,
    PrimaryOptions, StatsSink,
};
use ft::frame::{ScrubResult, PAGE_SIZE};
use ft::migration::{ReceiveOptions, SendOptions};
use ft::scrub::{ScrubChecked, ScrubDisk, ScrubDisks, ScrubError, ScrubOptions, ScrubStatus};
use ft::transport::{connect, Endpoint, Listener};
use ft::vm::VmOpError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PAGES: u64 = 1024; // 4 MiB
const VCPUS: u32 = 2;
const DISK: usize = 256 << 10;

/// One replicated disk in memory.
#[derive(Clone)]
struct MemDisk(Arc<Mutex<Vec<u8>>>);

impl MemDisk {
    fn new(seed: u8) -> MemDisk {
        MemDisk(Arc::new(Mutex::new(
            (0..DISK).map(|i| (i as u8).wrapping_mul(seed)).collect(),
        )))
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl ScrubDisks for MemDisk {
    fn list(&self) -> Vec<ScrubDisk> {
        vec![ScrubDisk {
            index: 0,
            size: DISK as u64,
            name: "disk0".into(),
        }]
    }
    fn read(&self, _index: u32, offset: u64, buf: &mut [u8]) -> Result<(), VmOpError> {
        let d = self.0.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, _index: u32, offset: u64, data: &[u8]) -> Result<(), VmOpError> {
        self.0.lock().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// The primary's hooks and stats: its disk, and what the scrub reported.
#[derive(Default)]
struct Primary {
    disk: Option<MemDisk>,
    status: Mutex<ScrubStatus>,
    mismatches: Mutex<Vec<&'static str>>,
    reasons: Mutex<Vec<String>>,
}

impl EpochHooks for Primary {
    fn epoch_captured(&self, _n: u64) {}
    fn take_epoch_extras(&self, _n: u64) -> Vec<u8> {
        Vec::new()
    }
    fn epoch_committed(&self, _n: u64) {}
    fn output_waiting(&self) -> bool {
        false
    }
    fn scrub_disks(&self) -> Option<&dyn ScrubDisks> {
        self.disk.as_ref().map(|d| d as &dyn ScrubDisks)
    }
}

impl StatsSink for Primary {
    fn checkpoint_committed(&self, _s: &CheckpointStats) {}
    fn scrub_checked(&self, c: &ScrubChecked, reason: Option<&str>) {
        self.mismatches.lock().unwrap().extend(&c.mismatches);
        if let Some(r) = reason {
            self.reasons.lock().unwrap().push(r.to_string());
        }
    }
    fn scrub_status(&self, s: &ScrubStatus) {
        *self.status.lock().unwrap() = s.clone();
    }
}

/// The backup's hooks: its disk, and how many digests it answered.
#[derive(Default)]
struct Backup {
    disk: Option<MemDisk>,
    answered: AtomicU64,
}

impl BackupHooks for Backup {
    fn backup_committed(&self, _n: u64, _extras: &[u8]) {}
    fn scrub_disks(&self) -> Option<&dyn ScrubDisks> {
        self.disk.as_ref().map(|d| d as &dyn ScrubDisks)
    }
    fn scrub_answered(&self, _r: &ScrubResult) {
        self.answered.fetch_add(1, Ordering::SeqCst);
    }
}

fn opts(scrub: ScrubOptions) -> PrimaryOptions {
    PrimaryOptions {
        sync: SendOptions {
            io_timeout: Duration::from_secs(10),
            commit_timeout: Duration::from_secs(10),
            ..SendOptions::default()
        },
        checkpoint_interval: Duration::from_millis(10),
        scrub,
        ..PrimaryOptions::default()
    }
}

/// The scrub's pace in these tests: 16-page regions, the 4 MiB guest in 4 checkpoints.
fn scrub_opts(period: Option<Duration>) -> ScrubOptions {
    ScrubOptions {
        period,
        region_bytes: 16 * PAGE_SIZE as u32,
        verify_bytes_per_checkpoint: 1 << 20,
        ..ScrubOptions::default()
    }
}

struct Pair {
    primary: FtPrimary<FakeVm>,
    hooks: Arc<Primary>,
    src: Probe,
    dst: Probe,
    backup: JoinHandle<BackupExit<FakeVm>>,
    backup_hooks: Arc<Backup>,
}

/// A protected pair of fake VMs (the guest writes `rate` pages a second), with a replicated
/// disk on each side when `disks`.
fn pair(rate: u64, scrub: ScrubOptions, disks: bool) -> Pair {
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = l.local_endpoint().to_string()[4..].parse().unwrap();
    let dst_vm = FakeVm::destination(PAGES, VCPUS);
    let dst = dst_vm.probe();
    let backup_hooks = Arc::new(Backup {
        disk: disks.then(|| MemDisk::new(3)),
        answered: AtomicU64::new(0),
    });
    let bh = backup_hooks.clone();
    let backup = std::thread::spawn(move || {
        let conn = l.accept(Some(Duration::from_secs(10))).unwrap();
        let bopts = BackupOptions {
            sync: ReceiveOptions {
                io_timeout: Duration::from_secs(10),
                ..ReceiveOptions::default()
            },
            heartbeat_interval: Duration::from_millis(20),
            peer_timeout: Duration::from_secs(5),
        };
        FtBackup::run(dst_vm, conn, &bopts, bh)
    });
    let src_vm = FakeVm::source(PAGES, VCPUS, rate, 11);
    let src = src_vm.probe();
    let hooks = Arc::new(Primary {
        disk: disks.then(|| MemDisk::new(3)),
        ..Primary::default()
    });
    let ep: Endpoint = format!("tcp:{addr}").parse().unwrap();
    let conn = connect(&ep, Duration::from_secs(5)).unwrap();
    let primary = FtPrimary::start(src_vm, conn, &opts(scrub), hooks.clone(), hooks.clone())
        .unwrap_or_else(|e| panic!("start: {}", ft::migration::error_chain(&e.1)));
    wait(&primary, "a checkpoint acked", |p| p.committed() >= Some(1));
    Pair {
        primary,
        hooks,
        src,
        dst,
        backup,
        backup_hooks,
    }
}

fn wait(p: &FtPrimary<FakeVm>, what: &str, ok: impl Fn(&FtPrimary<FakeVm>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok(p) {
        assert!(!p.has_failed(), "checkpointing failed: {:?}", p.failure());
        assert!(Instant::now() < deadline, "never {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

const T: Duration = Duration::from_secs(30);

#[test]
fn verify_finds_a_flipped_backup_page_names_it_and_heals_it() {
    // An idle guest: nothing rewrites the page, so only the scrub can put it right.
    let p = pair(0, scrub_opts(None), false);
    let report = p.primary.verify().wait(T).unwrap();
    assert!(report.clean, "{report:?}");
    assert_eq!(report.memory_bytes, PAGES * PAGE_SIZE as u64);

    let at = 700 * PAGE_SIZE + 123;
    p.dst.flip(at);
    assert_ne!(p.dst.memory(), p.src.memory());
    let report = p.primary.verify().wait(T).unwrap();
    assert!(!report.clean);
    assert!(report.healed, "{report:?}");
    assert_eq!(report.mismatches.len(), 1, "{report:?}");
    let m = &report.mismatches[0];
    // Pages 688..704 hold page 700 (16-page regions); the fake VM's RAM starts at 0.
    assert_eq!(m.region, "memory gpa 0x2b0000-0x2c0000 (pages 688..704)");
    assert_eq!((m.kind, m.healed), ("memory", Some(true)));
    assert_eq!(p.dst.memory(), p.src.memory(), "the backup healed");
    assert_eq!(*p.hooks.mismatches.lock().unwrap(), vec!["memory"]);
    let reasons = p.hooks.reasons.lock().unwrap().clone();
    assert!(reasons[0].contains("pages 688..704"), "{reasons:?}");

    let again = p.primary.verify().wait(T).unwrap();
    assert!(again.clean, "{again:?}");
    let s = p.primary.scrub_status();
    assert_eq!((s.mismatches, s.healed, s.unhealed), (1, 1, 0));
    assert_eq!(s.last_verify, Some(again));
    let exit = p.primary.stop().unwrap();
    assert!(exit.error.is_none(), "{:?}", exit.error);
    p.backup.join().unwrap();
}

#[test]
fn a_busy_guest_verifies_clean_every_time() {
    // 3000 pages/s over 1024: most regions change between checkpoints; the hashes must still be
    // of exactly the same checkpoint on both sides.
    let p = pair(3000, scrub_opts(Some(Duration::from_secs(1))), false);
    for _ in 0..3 {
        let r = p.primary.verify().wait(T).unwrap();
        assert!(r.clean, "{r:?}");
        assert_eq!(r.regions, PAGES / 16 + 1 + u64::from(VCPUS));
        assert!(r.last_epoch > r.first_epoch, "{r:?}");
    }
    // The background scrub ran alongside, and found nothing either.
    let s = p.primary.scrub_status();
    assert_eq!(s.mismatches, 0, "{s:?}");
    let exit = p.primary.stop().unwrap();
    assert!(exit.error.is_none(), "{:?}", exit.error);
    p.backup.join().unwrap();
}

#[test]
fn the_background_scrub_finds_and_heals_a_difference_by_itself() {
    // Everything once a second (4 MiB: about 40 KiB per 10 ms checkpoint).
    let p = pair(0, scrub_opts(Some(Duration::from_secs(1))), false);
    p.dst.flip(5 * PAGE_SIZE);
    wait(&p.primary, "the difference healed", |_| {
        p.hooks.status.lock().unwrap().healed == 1
    });
    let s = p.hooks.status.lock().unwrap().clone();
    assert_eq!(s.mismatches, 1);
    let m = s.last_mismatch.unwrap();
    assert_eq!(m.region, "memory gpa 0x0-0x10000 (pages 0..16)");
    assert_eq!(m.healed, Some(true));
    assert_eq!(p.dst.memory(), p.src.memory());
    wait(&p.primary, "a background pass", |_| {
        p.hooks.status.lock().unwrap().background_passes >= 2
    });
    assert!(s.regions_verified > 0 && s.last_verify.is_none());
    p.primary.stop().unwrap();
    p.backup.join().unwrap();
}

#[test]
fn replicated_disk_regions_are_compared_and_repaired() {
    let p = pair(0, scrub_opts(None), true);
    let (pd, bd) = (
        p.hooks.disk.clone().unwrap(),
        p.backup_hooks.disk.clone().unwrap(),
    );
    assert!(p.primary.verify().wait(T).unwrap().clean);
    bd.0.lock().unwrap()[130_000..130_010].fill(0xee);
    let report = p.primary.verify().wait(T).unwrap();
    assert_eq!(report.disk_bytes, DISK as u64);
    assert_eq!(report.mismatches.len(), 1, "{report:?}");
    let m = &report.mismatches[0];
    assert_eq!(
        m.region,
        "disk 0 (\"disk0\") bytes 65536..131072 (sectors 128..256)"
    );
    assert_eq!((m.kind, m.healed), ("disk", Some(true)));
    assert_eq!(bd.bytes(), pd.bytes());
    assert!(p.primary.verify().wait(T).unwrap().clean);
    assert_eq!(*p.hooks.mismatches.lock().unwrap(), vec!["disk"]);
    p.primary.stop().unwrap();
    p.backup.join().unwrap();
}

#[test]
fn a_guest_left_paused_is_verified_and_healed() {
    let p = pair(2000, scrub_opts(None), false);
    p.primary.pause_guest(T).unwrap();
    let answered = p.backup_hooks.answered.load(Ordering::SeqCst);
    p.dst.flip(1000 * PAGE_SIZE);
    let report = p.primary.verify().wait(T).unwrap();
    assert_eq!(report.mismatches.len(), 1, "{report:?}");
    assert!(report.healed);
    assert_eq!(report.first_epoch, report.last_epoch, "no epoch ran");
    assert!(p.backup_hooks.answered.load(Ordering::SeqCst) > answered);
    assert_eq!(p.dst.memory(), p.src.memory());
    p.primary.resume_guest(T).unwrap();
    assert!(p.primary.verify().wait(T).unwrap().clean);
    p.primary.stop().unwrap();
    p.backup.join().unwrap();
}

#[test]
fn a_verify_the_pair_outlives_says_so() {
    // One 64 KiB region per 10 ms checkpoint: 4 MiB takes far longer than the wait.
    let slow = ScrubOptions {
        verify_bytes_per_checkpoint: 64 << 10,
        ..scrub_opts(None)
    };
    let p = pair(0, slow, false);
    let ticket = p.primary.verify();
    let second = p.primary.verify();
    assert_eq!(ticket.pass, second.pass, "a second call joins the pass");
    assert!(matches!(
        second.wait(Duration::from_millis(20)),
        Err(ScrubError::Timeout(_))
    ));
    assert!(p.primary.scrub_status().verify_running);
    p.primary.stop().unwrap();
    match ticket.wait(T) {
        Err(ScrubError::Ended(why)) => assert!(why.contains("ending"), "{why}"),
        other => panic!("{other:?}"),
    }
    p.backup.join().unwrap();
}

#[test]
fn a_pause_out_of_time_leaves_the_rest_for_the_next_one() {
    // No time at all: one region per pause, the rest given back; the pass still covers
    // everything, finds the flipped page and heals it, on a busy guest.
    let slow = ScrubOptions {
        max_hash_time_per_checkpoint: Duration::ZERO,
        ..scrub_opts(None)
    };
    let p = pair(1000, slow, true);
    p.dst.flip(300 * PAGE_SIZE);
    let report = p.primary.verify().wait(T).unwrap();
    assert_eq!(
        report.regions,
        PAGES / 16 + DISK as u64 / (16 * PAGE_SIZE) as u64 + 1 + u64::from(VCPUS) + 1,
        "every region once, and the repaired one again: {report:?}"
    );
    assert_eq!(report.mismatches.len(), 1, "{report:?}");
    assert!(report.healed, "{report:?}");
    assert!(
        report.last_epoch.unwrap_or(0) - report.first_epoch.unwrap_or(0) >= 70,
        "one region per checkpoint: {report:?}"
    );
    assert!(p.primary.verify().wait(T).unwrap().clean);
    p.primary.stop().unwrap();
    p.backup.join().unwrap();
}
