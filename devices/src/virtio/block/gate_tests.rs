//! The disk gate against a real image file, and its ordering with the network gate.

use super::*;
use crate::virtio::net::gate::TxGate;
use crate::virtio::net::tx::TxSink;
use std::io::Write;
use tandem_testkit::Rng;
use vmm_sys_util::tempfile::TempFile;

const SECTORS: u64 = 16;

/// A 16-sector image of zeroes and a gate on it, with a lease for the whole test (fencing has
/// its own test): as if every ack renewed it.
fn rig(mode: DiskMode, cap: usize) -> (TempFile, Arc<EpochClock>, DiskGate) {
    let (file, clock, g) = rig_without_lease(mode, cap);
    clock.lease().set_terms(ft::gate::LeaseTerms {
        duration: std::time::Duration::from_secs(3600),
        margin: std::time::Duration::ZERO,
    });
    clock.lease().renew(std::time::Instant::now());
    (file, clock, g)
}

/// As [`rig`], with a lease of 40 ms that nothing has renewed yet.
fn rig_without_lease(mode: DiskMode, cap: usize) -> (TempFile, Arc<EpochClock>, DiskGate) {
    let file = TempFile::new().unwrap();
    file.as_file()
        .write_all(&vec![0u8; (SECTORS * SECTOR_SIZE) as usize])
        .unwrap();
    let clock = Arc::new(EpochClock::new());
    clock
        .lease()
        .set_terms(ft::gate::LeaseTerms::for_failure_timeout(
            std::time::Duration::from_millis(40),
        ));
    let disk = RawDisk::open(file.as_path(), false).unwrap();
    let g = DiskGate::new("d0", 0, mode, clock.clone(), disk, cap).unwrap();
    (file, clock, g)
}

fn on_file(f: &TempFile, sector: u64) -> u8 {
    let img = std::fs::read(f.as_path()).unwrap();
    img[(sector * SECTOR_SIZE) as usize]
}

fn seen(g: &DiskGate, sector: u64) -> u8 {
    let mut b = [0u8; SECTOR];
    g.read_at(&mut b, sector * SECTOR_SIZE).unwrap();
    assert!(b.iter().all(|&x| x == b[0]), "sector {sector} is torn");
    b[0]
}

fn write(g: &DiskGate, sector: u64, n: usize, fill: u8) {
    g.write_at(&vec![fill; n * SECTOR], sector * SECTOR_SIZE)
        .unwrap();
}

fn commit(clock: &EpochClock, g: &DiskGate, n: u64) {
    clock.commit(n).unwrap();
    g.pump(clock);
}

#[test]
fn shared_reads_see_the_overlay_and_the_image_waits_for_commit() {
    let (f, clock, g) = rig(DiskMode::Shared, 1 << 20);
    clock.protect().unwrap();
    write(&g, 2, 2, 7);
    g.flush().unwrap();
    assert_eq!((seen(&g, 2), seen(&g, 3), seen(&g, 4)), (7, 7, 0));
    assert_eq!(on_file(&f, 2), 0, "nothing reaches the image before commit");
    assert_eq!(clock.capture(), Ok(1));
    write(&g, 3, 1, 8);
    g.pump(&clock);
    assert_eq!(on_file(&f, 2), 0, "captured is not committed");
    commit(&clock, &g, 1);
    assert_eq!((on_file(&f, 2), on_file(&f, 3)), (7, 7));
    assert_eq!((seen(&g, 2), seen(&g, 3)), (7, 8), "epoch 2 still overlays");
    assert_eq!(clock.release_bound(), 1);
    assert_eq!(g.counters().durable_epoch.load(Ordering::Relaxed), 1);
}

#[test]
fn overlapping_writes_across_epochs_end_as_the_newest() {
    let (f, clock, g) = rig(DiskMode::Shared, 1 << 20);
    clock.protect().unwrap();
    write(&g, 0, 4, 1);
    clock.capture().unwrap();
    write(&g, 1, 2, 2);
    clock.capture().unwrap();
    write(&g, 2, 1, 3);
    clock.capture().unwrap();
    // Committing the last epoch applies all three, in order.
    commit(&clock, &g, 3);
    let want = [1, 2, 3, 1, 0];
    for (s, &w) in want.iter().enumerate() {
        assert_eq!(on_file(&f, s as u64), w, "sector {s}");
        assert_eq!(seen(&g, s as u64), w, "sector {s}");
    }
    assert_eq!(g.counters().held_bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn the_write_log_carries_data_and_reissue_is_idempotent() {
    let (_f, clock, g) = rig(DiskMode::Shared, 1 << 20);
    clock.protect().unwrap();
    write(&g, 5, 1, 9);
    write(&g, 5, 1, 10);
    let n = clock.capture().unwrap();
    let log = g.take_epoch_writes(n);
    assert_eq!(log.len(), 2);
    assert_eq!((log[1].disk, log[1].offset), (0, 5 * SECTOR_SIZE));
    assert!(log[1].data.iter().all(|&b| b == 10));
    // The backup re-issues the log, maybe twice (failover during re-issue): same image.
    let backup = TempFile::new().unwrap();
    backup.as_file().write_all(&[0u8; 8192]).unwrap();
    let disk = RawDisk::open(backup.as_path(), false).unwrap();
    apply_writes(&disk, 0, &log).unwrap();
    let once = std::fs::read(backup.as_path()).unwrap();
    apply_writes(&disk, 0, &log).unwrap();
    assert_eq!(std::fs::read(backup.as_path()).unwrap(), once);
    assert_eq!(once[5 * 512], 10);
}

#[test]
fn hostile_write_logs_are_refused_before_anything_is_written() {
    let backup = TempFile::new().unwrap();
    backup.as_file().write_all(&[0u8; 4096]).unwrap();
    let disk = RawDisk::open(backup.as_path(), false).unwrap();
    let w = |disk, offset, len| DiskWrite {
        disk,
        offset,
        data: vec![1; len],
    };
    let good = w(0, 0, 512);
    for bad in [
        w(1, 0, 512),
        w(0, 1, 512),
        w(0, 0, 100),
        w(0, 4096, 512),
        w(0, u64::MAX - 511, 512),
    ] {
        assert!(apply_writes(&disk, 0, &[good.clone(), bad]).is_err());
    }
    assert!(std::fs::read(backup.as_path())
        .unwrap()
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn replicated_writes_the_image_at_once_and_logs_the_data() {
    let (f, clock, g) = rig(DiskMode::Replicated, 1 << 20);
    clock.protect().unwrap();
    write(&g, 1, 1, 4);
    assert_eq!(on_file(&f, 1), 4);
    let n = clock.capture().unwrap();
    let log = g.take_epoch_writes(n);
    assert_eq!(log.len(), 1);
    assert!(log[0].data.iter().all(|&b| b == 4));
    assert!(g.take_epoch_writes(n).is_empty(), "handed over once");
    assert_eq!(g.counters().held_bytes.load(Ordering::Relaxed), 0);
    commit(&clock, &g, n);
    assert_eq!(clock.release_bound(), 1);
}

#[test]
fn unprotected_applies_everything_held_then_writes_through() {
    let (f, clock, g) = rig(DiskMode::Shared, 1 << 20);
    clock.protect().unwrap();
    write(&g, 0, 1, 1);
    clock.capture().unwrap();
    write(&g, 0, 1, 2);
    clock.unprotect().unwrap();
    write(&g, 1, 1, 3);
    assert_eq!((on_file(&f, 0), on_file(&f, 1)), (2, 3));
    assert_eq!(seen(&g, 0), 2);
}

#[test]
fn halted_applies_nothing() {
    let (f, clock, g) = rig(DiskMode::Shared, 1 << 20);
    clock.protect().unwrap();
    write(&g, 0, 1, 1);
    clock.capture().unwrap();
    clock.halt();
    g.pump(&clock);
    assert_eq!(on_file(&f, 0), 0);
    assert_eq!(seen(&g, 0), 1);
}

#[test]
fn committed_writes_wait_for_a_valid_lease_and_never_reach_the_image_once_halted() {
    let (file, clock, g) = rig_without_lease(DiskMode::Shared, 1 << 20);
    clock.protect().unwrap();
    write(&g, 1, 1, 5);
    assert_eq!(clock.capture(), Ok(1));
    // Committed, but no ack ever renewed a lease: held, counted, still served from the overlay.
    commit(&clock, &g, 1);
    assert_eq!(on_file(&file, 1), 0);
    assert_eq!(seen(&g, 1), 5);
    assert_eq!(g.counters().fenced.load(Ordering::Relaxed), 1);
    assert_eq!(clock.release_bound(), 0, "nothing of epoch 1 may leave");
    // An ack renews it: applied.
    clock.lease().renew(std::time::Instant::now());
    g.pump(&clock);
    assert_eq!(on_file(&file, 1), 5);
    assert_eq!(clock.release_bound(), 1);
    // The lease runs out (a primary stopped past it): the next committed write stays held.
    write(&g, 2, 1, 6);
    assert_eq!(clock.capture(), Ok(2));
    std::thread::sleep(std::time::Duration::from_millis(50));
    commit(&clock, &g, 2);
    assert_eq!(on_file(&file, 2), 0);
    assert_eq!(seen(&g, 2), 6);
    // It lost: halted, nothing is applied even with a fresh lease.
    clock.halt();
    clock.lease().renew(std::time::Instant::now());
    assert!(matches!(
        g.make_durable(2),
        Err(ApplyError::Fenced(ft::gate::FenceError::Halted))
    ));
    assert_eq!(on_file(&file, 2), 0);

    // Winning the generation instead (unprotected) makes held writes this member's to write.
    let (file, clock, g) = rig_without_lease(DiskMode::Shared, 1 << 20);
    clock.protect().unwrap();
    write(&g, 3, 1, 7);
    clock.capture().unwrap();
    commit(&clock, &g, 1);
    assert_eq!(on_file(&file, 3), 0);
    clock.unprotect().unwrap();
    g.pump(&clock);
    assert_eq!(on_file(&file, 3), 7);
}

#[test]
fn a_full_gate_pushes_back_until_commit() {
    let (_f, clock, g) = rig(DiskMode::Shared, 1024);
    clock.protect().unwrap();
    write(&g, 0, 1, 1);
    assert!(g.has_room());
    assert!(
        !clock.output_in_current_epoch(),
        "a write with room left does not end the epoch"
    );
    write(&g, 1, 1, 1);
    assert!(!g.has_room());
    assert!(
        clock.output_in_current_epoch(),
        "a full gate ends the epoch: the guest's disk waits for the commit"
    );
    clock.capture().unwrap();
    commit(&clock, &g, 1);
    assert!(g.has_room());
    let mut v = [0u8; 8];
    // SAFETY: an 8-byte read from the gate's eventfd into a local buffer.
    let n = unsafe { libc::read(g.room_fd().unwrap(), v.as_mut_ptr() as *mut libc::c_void, 8) };
    assert_eq!(n, 8, "the worker is woken");
}

#[derive(Clone, Default)]
struct Wire(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl TxSink for Wire {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
}

#[test]
fn net_frames_of_an_epoch_wait_for_its_disk_writes_to_be_durable() {
    let (f, clock, disk) = rig(DiskMode::Shared, 1 << 20);
    let wire = Wire::default();
    let net = TxGate::new("n0", clock.clone(), Box::new(wire.clone()), 1 << 20).unwrap();
    clock.protect().unwrap();
    write(&disk, 0, 1, 5);
    disk.flush().unwrap();
    net.send(b"reply after fsync").unwrap();
    clock.capture().unwrap();
    clock.commit(1).unwrap();
    // The net gate pumped first (a racing releaser) must still hold the frame.
    net.pump(&clock);
    assert!(wire.0.lock().unwrap().is_empty());
    disk.pump(&clock);
    assert_eq!(on_file(&f, 0), 5);
    net.pump(&clock);
    assert_eq!(wire.0.lock().unwrap().len(), 1);
}

#[test]
fn releaser_thread_orders_disk_before_net() {
    let (f, clock, disk) = rig(DiskMode::Shared, 1 << 20);
    let wire = Wire::default();
    let net = Arc::new(TxGate::new("n0", clock.clone(), Box::new(wire.clone()), 1 << 20).unwrap());
    let disk = Arc::new(disk);
    let _r = ft::gate::Releaser::spawn(clock.clone(), vec![net.clone(), disk.clone()]).unwrap();
    clock.protect().unwrap();
    write(&disk, 3, 1, 6);
    net.send(b"x").unwrap();
    clock.capture().unwrap();
    clock.commit(1).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while wire.0.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "frame never released");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(
        on_file(&f, 3),
        6,
        "the frame left only after the write was durable"
    );
}

#[test]
fn random_writes_reads_and_commits_match_a_model() {
    for seed in 1..=20u64 {
        let (f, clock, g) = rig(DiskMode::Shared, 1 << 30);
        clock.protect().unwrap();
        let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // What the guest sees, and per epoch the writes that the image will get on commit.
        let mut guest = vec![0u8; SECTORS as usize];
        let mut image = vec![0u8; SECTORS as usize];
        let mut pending: Vec<(u64, u64, usize, u8)> = Vec::new();
        let mut captured = 0;
        let mut committed = 0;
        for _ in 0..200 {
            match rng.below_u64(10) {
                0..=4 => {
                    let s = rng.below_u64(SECTORS);
                    let n = 1 + rng.below_u64(SECTORS - s) as usize;
                    let fill = 1 + rng.below_u64(250) as u8;
                    write(&g, s, n, fill);
                    guest[s as usize..s as usize + n].fill(fill);
                    pending.push((clock.current(), s, n, fill));
                }
                5..=6 => {
                    let s = rng.below_u64(SECTORS);
                    assert_eq!(seen(&g, s), guest[s as usize], "seed {seed} sector {s}");
                }
                7..=8 => captured = clock.capture().unwrap(),
                _ if captured > committed => {
                    committed = committed + 1 + rng.below_u64(captured - committed);
                    commit(&clock, &g, committed);
                    for &(_, s, n, fill) in pending.iter().filter(|w| w.0 <= committed) {
                        image[s as usize..s as usize + n].fill(fill);
                    }
                    pending.retain(|w| w.0 > committed);
                    for s in 0..SECTORS {
                        assert_eq!(on_file(&f, s), image[s as usize], "seed {seed} sector {s}");
                    }
                }
                _ => {}
            }
        }
    }
}

#[test]
fn a_flush_after_the_pair_ended_makes_writes_still_held_durable() {
    let (f, clock, g) = rig(DiskMode::Shared, 1 << 20);
    clock.protect().unwrap();
    write(&g, 5, 1, 9);
    // The pair ends; no releaser pumps this gate again.
    clock.unprotect().unwrap();
    assert_eq!(on_file(&f, 5), 0);
    g.flush().unwrap();
    assert_eq!(
        on_file(&f, 5),
        9,
        "the guest's FLUSH covers writes the pair still held"
    );
}

#[test]
fn settling_writes_what_an_unprotected_clock_allows_and_drops_what_a_halted_one_never_will() {
    let (f, clock, g) = rig(DiskMode::Shared, 1 << 20);
    clock.protect().unwrap();
    write(&g, 1, 1, 4);
    clock.unprotect().unwrap();
    g.settle("the VM stops");
    assert_eq!(on_file(&f, 1), 4);

    let (f, clock, g) = rig(DiskMode::Shared, 1 << 20);
    clock.protect().unwrap();
    write(&g, 1, 1, 4);
    clock.halt();
    g.settle("the VM stops");
    assert_eq!(
        on_file(&f, 1),
        0,
        "a halted member never writes the shared image"
    );
    assert_eq!(g.counters().held_bytes.load(Ordering::Relaxed), 0);
}
