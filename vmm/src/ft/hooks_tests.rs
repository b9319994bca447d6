use super::*;
use std::path::PathBuf;

fn image(name: &str, sectors: u64) -> PathBuf {
    let p = std::env::temp_dir().join(format!("tandem-ft-hooks-{}-{name}.img", std::process::id()));
    std::fs::write(&p, vec![0u8; (sectors * 512) as usize]).unwrap();
    p
}

fn write(disk: u32, offset: u64, byte: u8) -> DiskWrite {
    DiskWrite {
        disk,
        offset,
        data: vec![byte; 512],
    }
}

fn extras(durable_through: u64, writes: Vec<DiskWrite>) -> Vec<u8> {
    EpochExtras {
        durable_through,
        writes,
        lease_ms: 0,
    }
    .encode()
}

fn sector(path: &PathBuf, n: usize) -> u8 {
    std::fs::read(path).unwrap()[n * 512]
}

#[test]
fn extras_round_trip_and_empty_blob_is_no_writes() {
    let e = EpochExtras {
        durable_through: 7,
        writes: vec![write(1, 512, 0xab)],
        lease_ms: 1000,
    };
    assert_eq!(EpochExtras::decode(&e.encode()).unwrap(), e);
    assert_eq!(EpochExtras::decode(&[]).unwrap(), EpochExtras::default());
    assert!(EpochExtras::decode(&[0xff; 3]).is_err());
}

#[test]
fn primary_hooks_move_the_clock_in_step_with_the_engine() {
    let clock = Arc::new(EpochClock::new());
    let hooks = PrimaryHooks::new(clock.clone(), &[]);
    hooks.epoch_captured(0);
    assert_eq!(clock.mode(), ft::gate::Protection::Protected);
    hooks.epoch_committed(0);
    let first = clock.current();
    assert_eq!(first, ft::gate::FIRST_EPOCH);
    hooks.epoch_captured(first);
    assert_eq!(clock.current(), first + 1);
    assert_eq!(
        EpochExtras::decode(&hooks.take_epoch_extras(first)).unwrap(),
        EpochExtras::default()
    );
    hooks.epoch_committed(first);
    assert_eq!(clock.committed(), first);
    assert!(!hooks.output_waiting());
}

/// A wire that records the frames it is given.
#[derive(Clone, Default)]
struct Wire(Arc<Mutex<Vec<Vec<u8>>>>);

impl devices::virtio::net::tx::TxSink for Wire {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
}

#[test]
fn the_ack_itself_releases_held_frames_without_a_releaser() {
    let clock = Arc::new(EpochClock::new());
    let wire = Wire::default();
    let net =
        Arc::new(TxGate::new("net0", clock.clone(), Box::new(wire.clone()), 1 << 20).unwrap());
    let hooks = PrimaryHooks::new(clock.clone(), &[DeviceGate::Net(net.clone())]);
    hooks.epoch_captured(0);
    hooks.epoch_committed(0);
    let first = clock.current();
    net.send(&[1]).unwrap();
    net.send(&[2]).unwrap();
    hooks.epoch_captured(first);
    net.send(&[3]).unwrap();
    assert!(wire.0.lock().unwrap().is_empty(), "held until the ack");
    hooks.epoch_committed(first);
    // No releaser runs here: the frames of the acked epoch left on the ack's call, in order;
    // the running epoch's frame is still held.
    assert_eq!(*wire.0.lock().unwrap(), vec![vec![1], vec![2]]);
}

#[test]
fn acks_renew_the_lease_and_checkpoints_announce_it() {
    let clock = Arc::new(EpochClock::new());
    let hooks = PrimaryHooks::new(clock.clone(), &[]);
    hooks.epoch_captured(0);
    assert!(clock.shared_write_allowed().is_err(), "no ack, no lease");
    clock
        .lease()
        .set_terms(ft::gate::LeaseTerms::for_failure_timeout(
            Duration::from_secs(2),
        ));
    let n = clock.current();
    hooks.epoch_captured(n);
    let e = EpochExtras::decode(&hooks.take_epoch_extras(n)).unwrap();
    assert_eq!(e.lease_ms, 2000);
    hooks.lease_renewed(Instant::now());
    hooks.epoch_committed(n);
    assert_eq!(clock.shared_write_allowed(), Ok(()));
    // Sent long ago: expired, whatever was committed.
    let clock = Arc::new(EpochClock::new());
    clock.protect().unwrap();
    clock
        .lease()
        .set_terms(ft::gate::LeaseTerms::for_failure_timeout(
            Duration::from_millis(10),
        ));
    clock.lease().renew(Instant::now());
    std::thread::sleep(Duration::from_millis(20));
    assert!(matches!(
        clock.shared_write_allowed(),
        Err(ft::gate::FenceError::Expired { .. })
    ));
    clock.halt();
    assert_eq!(
        clock.shared_write_allowed(),
        Err(ft::gate::FenceError::Halted)
    );
}

#[test]
fn a_shared_backup_waits_out_the_announced_lease() {
    let p = image("lease", 8);
    let disk = RawDisk::open(&p, false).unwrap();
    let hooks = BackupDiskHooks::new(DiskMode::Shared, vec![BackupDisk { index: 0, disk }]);
    let heard = Instant::now();
    assert_eq!(hooks.lease_end(Some(heard)), None, "no lease announced yet");
    let blob = EpochExtras {
        durable_through: 0,
        writes: vec![],
        lease_ms: 1500,
    }
    .encode();
    hooks.backup_committed(1, &blob);
    assert_eq!(
        hooks.lease_end(Some(heard)),
        Some(heard + Duration::from_millis(1500))
    );
    // Replicated disks are this host's own copy: nothing to wait for.
    let disk = RawDisk::open(&p, false).unwrap();
    let repl = BackupDiskHooks::new(DiskMode::Replicated, vec![BackupDisk { index: 0, disk }]);
    repl.backup_committed(1, &blob);
    assert_eq!(repl.lease_end(Some(heard)), None);
    std::fs::remove_file(p).unwrap();
}

#[test]
fn replicated_backup_writes_each_verified_epoch_before_its_ack() {
    let p = image("repl", 8);
    let disk = RawDisk::open(&p, false).unwrap();
    let hooks = BackupDiskHooks::new(DiskMode::Replicated, vec![BackupDisk { index: 2, disk }]);
    let e = extras(0, vec![write(2, 512, 0x11)]);
    hooks.before_ack(1, &e).unwrap();
    assert_eq!(sector(&p, 1), 0x11);
    hooks.after_ack(1).unwrap();
    hooks.backup_committed(1, &e);
    assert!(hooks.stashed_epochs().is_empty());
    // A write for a disk this backup does not have, or past its image's end, is a reason to
    // withdraw, and nothing of that epoch is written.
    let e = extras(0, vec![write(2, 0, 0x33), write(5, 0, 0x22)]);
    let err = hooks.before_ack(2, &e).unwrap_err();
    assert!(
        errors::chain(&*err).contains("disk 5"),
        "{}",
        errors::chain(&*err)
    );
    assert_eq!(sector(&p, 0), 0);
    let err = hooks
        .before_ack(3, &extras(0, vec![write(2, 8 * 512, 0x44)]))
        .unwrap_err();
    assert!(
        errors::chain(&*err).contains("past the end"),
        "{}",
        errors::chain(&*err)
    );
    assert!(hooks.before_ack(4, &[0xff; 3]).is_err());
    std::fs::remove_file(p).unwrap();
}

#[test]
fn shared_backup_stashes_until_durable_and_reissues_on_go_live() {
    let p = image("shared", 8);
    let disk = RawDisk::open(&p, false).unwrap();
    let hooks = BackupDiskHooks::new(DiskMode::Shared, vec![BackupDisk { index: 0, disk }]);
    for (n, e) in [
        (1, extras(0, vec![write(0, 0, 0x01)])),
        (2, extras(0, vec![write(0, 512, 0x02)])),
        (3, extras(1, vec![write(0, 1024, 0x03)])),
    ] {
        hooks.before_ack(n, &e).unwrap();
        hooks.after_ack(n).unwrap();
        hooks.backup_committed(n, &e);
    }
    // The backup never touches a shared image while the primary lives.
    assert_eq!(sector(&p, 0), 0);
    // Epoch 1 is durable on the primary: nothing left to re-issue for it.
    assert_eq!(hooks.stashed_epochs(), vec![2, 3]);
    assert_eq!(hooks.reissue().unwrap(), 2);
    assert_eq!((sector(&p, 0), sector(&p, 1), sector(&p, 2)), (0, 2, 3));
    assert!(hooks.stashed_epochs().is_empty());
    // Undecodable extras are a reason to withdraw, not ignored.
    assert!(hooks.before_ack(4, &[0xff; 3]).is_err());
    std::fs::remove_file(p).unwrap();
}
