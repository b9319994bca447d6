//! Replicated disks through the FT engine without KVM: the initial sync copies a disk the fake
//! guest keeps writing, so that the backup's image equals the primary's at the sync's capture
//! point; and a backup that cannot keep a checkpoint withdraws, which the primary learns from
//! the Abort before that checkpoint is acked.

#[allow(dead_code)]
mod common;

use common::fake_vm::FakeVm;
use ft::bitmap::DirtyBitmap;
use ft::checkpoint::{
    is_withdrawal, BackupHooks, BackupOptions, EpochHooks, FtBackup, FtPrimary, NoStats,
    PrimaryOptions, ReplicaError,
};
use ft::disk::{DiskInfo, VmDisks, BLOCK_SIZE};
use ft::frame::PAGE_SIZE;
use ft::migration::{MigrationError, ReceiveOptions, SendOptions};
use ft::transport::{connect, Endpoint, Listener};
use ft::vm::{MigratableVm, VmOpError, VmState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PAGES: u64 = 512;
const VCPUS: u32 = 1;
const BLOCKS: u64 = 4096; // 16 MiB
const BS: usize = BLOCK_SIZE;

/// One disk image and the fake guest's writes to it.
struct Disk {
    image: Mutex<Vec<u8>>,
    /// `Some` while tracking; a block is marked after its write, as the disk gate does.
    dirty: Mutex<Option<DirtyBitmap>>,
    /// Held by the writer while it writes, so that pausing waits for a write in flight.
    running: Mutex<bool>,
    stop: AtomicBool,
    writes: AtomicU64,
    /// Writes made when tracking started.
    writes_at_tracking: AtomicU64,
}

/// A fake VM with one replicated disk (index 0).
struct DiskVm {
    vm: FakeVm,
    disk: Arc<Disk>,
    side: Side,
    writer: Option<JoinHandle<()>>,
}

struct Side(Arc<Disk>);

impl DiskVm {
    /// A source whose disk holds data in most blocks, zeros in some, and whose guest writes
    /// `per_tick` random blocks every millisecond while it runs.
    fn source(per_tick: u64) -> DiskVm {
        let mut image = vec![0u8; BLOCKS as usize * BS];
        for (i, b) in image.chunks_exact_mut(BS).enumerate() {
            if i % 3 != 0 {
                b.fill((i % 251) as u8 + 1);
            }
        }
        let disk = Disk::new(image, true);
        let d = disk.clone();
        let writer = std::thread::spawn(move || {
            let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
            while !d.stop.load(Ordering::SeqCst) {
                {
                    let running = d.running.lock().unwrap();
                    if *running {
                        for _ in 0..per_tick {
                            s ^= s << 13;
                            s ^= s >> 7;
                            s ^= s << 17;
                            let b = (s % BLOCKS) as usize;
                            let v = if s.is_multiple_of(5) {
                                0
                            } else {
                                (s >> 32) as u8 | 1
                            };
                            d.image.lock().unwrap()[b * BS..(b + 1) * BS].fill(v);
                            if let Some(t) = d.dirty.lock().unwrap().as_mut() {
                                t.set(b as u64);
                            }
                            d.writes.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    drop(running);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        DiskVm {
            vm: FakeVm::source(PAGES, VCPUS, 500, 3),
            side: Side(disk.clone()),
            disk,
            writer: Some(writer),
        }
    }

    /// A destination whose image is garbage of `blocks` blocks.
    fn destination(blocks: u64) -> DiskVm {
        let disk = Disk::new(vec![0xee; blocks as usize * BS], false);
        DiskVm {
            vm: FakeVm::destination(PAGES, VCPUS),
            side: Side(disk.clone()),
            disk,
            writer: None,
        }
    }

    fn image(&self) -> Vec<u8> {
        self.disk.image.lock().unwrap().clone()
    }
}

impl Disk {
    fn new(image: Vec<u8>, running: bool) -> Arc<Disk> {
        Arc::new(Disk {
            image: Mutex::new(image),
            dirty: Mutex::new(None),
            running: Mutex::new(running),
            stop: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            writes_at_tracking: AtomicU64::new(0),
        })
    }
}

impl Drop for DiskVm {
    fn drop(&mut self) {
        self.disk.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl VmDisks for Side {
    fn list(&self) -> Vec<DiskInfo> {
        vec![DiskInfo {
            index: 0,
            size: self.0.image.lock().unwrap().len() as u64,
        }]
    }
    fn start_tracking(&mut self) -> Result<(), VmOpError> {
        let blocks = self.0.image.lock().unwrap().len() as u64 / BS as u64;
        *self.0.dirty.lock().unwrap() = Some(DirtyBitmap::new(blocks));
        let w = self.0.writes.load(Ordering::SeqCst);
        self.0.writes_at_tracking.store(w, Ordering::SeqCst);
        Ok(())
    }
    fn take_dirty(&mut self, _index: u32) -> Result<DirtyBitmap, VmOpError> {
        let blocks = self.0.image.lock().unwrap().len() as u64 / BS as u64;
        let mut d = self.0.dirty.lock().unwrap();
        Ok(d.as_mut()
            .map(|t| std::mem::replace(t, DirtyBitmap::new(blocks)))
            .unwrap_or_else(|| DirtyBitmap::new(blocks)))
    }
    fn stop_tracking(&mut self) {
        *self.0.dirty.lock().unwrap() = None;
    }
    fn read(&self, _index: u32, offset: u64, buf: &mut [u8]) -> Result<(), VmOpError> {
        let o = offset as usize;
        buf.copy_from_slice(&self.0.image.lock().unwrap()[o..o + buf.len()]);
        Ok(())
    }
    fn write(&mut self, _index: u32, offset: u64, data: &[u8]) -> Result<(), VmOpError> {
        let o = offset as usize;
        self.0.image.lock().unwrap()[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn zero(&mut self, _index: u32, offset: u64, len: u64) -> Result<(), VmOpError> {
        let o = offset as usize;
        self.0.image.lock().unwrap()[o..o + len as usize].fill(0);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), VmOpError> {
        Ok(())
    }
}

impl MigratableVm for DiskVm {
    fn memory_size(&self) -> u64 {
        self.vm.memory_size()
    }
    fn vcpu_count(&self) -> u32 {
        self.vm.vcpu_count()
    }
    fn config_json(&self) -> String {
        self.vm.config_json()
    }
    fn read_page(&self, pfn: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        self.vm.read_page(pfn, buf)
    }
    fn write_page(&mut self, pfn: u64, data: &[u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        self.vm.write_page(pfn, data)
    }
    fn start_dirty_log(&mut self) -> Result<(), VmOpError> {
        self.vm.start_dirty_log()
    }
    fn take_dirty_pages(&mut self) -> Result<DirtyBitmap, VmOpError> {
        self.vm.take_dirty_pages()
    }
    fn stop_dirty_log(&mut self) -> Result<(), VmOpError> {
        self.vm.stop_dirty_log()
    }
    fn pause(&mut self) -> Result<(), VmOpError> {
        // Waits for a disk write in flight, like the real VM's device workers.
        *self.disk.running.lock().unwrap() = false;
        self.vm.pause()
    }
    fn resume(&mut self) -> Result<(), VmOpError> {
        *self.disk.running.lock().unwrap() = true;
        self.vm.resume()
    }
    fn save_state(&mut self) -> Result<VmState, VmOpError> {
        self.vm.save_state()
    }
    fn restore_state(&mut self, state: &VmState) -> Result<(), VmOpError> {
        self.vm.restore_state(state)
    }
    fn disks(&mut self) -> Option<&mut dyn VmDisks> {
        Some(&mut self.side)
    }
}

/// Snapshots the primary's disk at the sync's capture point (called while it is paused).
struct AtCapture {
    disk: Arc<Disk>,
    image: Mutex<Option<(Vec<u8>, u64)>>,
}

impl EpochHooks for AtCapture {
    fn epoch_captured(&self, n: u64) {
        if n == 0 {
            let image = self.disk.image.lock().unwrap().clone();
            let writes = self.disk.writes.load(Ordering::SeqCst);
            *self.image.lock().unwrap() = Some((image, writes));
        }
    }
    fn take_epoch_extras(&self, _n: u64) -> Vec<u8> {
        Vec::new()
    }
    fn epoch_committed(&self, _n: u64) {}
    fn output_waiting(&self) -> bool {
        false
    }
}

fn primary_opts() -> PrimaryOptions {
    PrimaryOptions {
        sync: SendOptions {
            io_timeout: Duration::from_secs(10),
            commit_timeout: Duration::from_secs(10),
            batch_pages: 64,
            ..SendOptions::default()
        },
        checkpoint_interval: Duration::from_millis(10),
        ..PrimaryOptions::default()
    }
}

fn backup_opts() -> BackupOptions {
    BackupOptions {
        sync: ReceiveOptions {
            io_timeout: Duration::from_secs(10),
            ..ReceiveOptions::default()
        },
        heartbeat_interval: Duration::from_millis(20),
        peer_timeout: Duration::from_secs(5),
    }
}

/// A backup thread on a fresh loopback port, running `vm` with `hooks`.
fn spawn_backup<V: MigratableVm + Send + 'static>(
    vm: V,
    hooks: Arc<dyn BackupHooks>,
) -> (
    std::net::SocketAddr,
    JoinHandle<ft::checkpoint::BackupExit<V>>,
) {
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse::<Endpoint>().unwrap()).unwrap();
    let addr = l.local_endpoint().to_string()[4..].parse().unwrap();
    let t = std::thread::spawn(move || {
        let conn = l.accept(Some(Duration::from_secs(10))).unwrap();
        FtBackup::run(vm, conn, &backup_opts(), hooks)
    });
    (addr, t)
}

fn conn_to(addr: std::net::SocketAddr) -> Box<dyn ft::transport::Connection> {
    connect(
        &format!("tcp:{addr}").parse().unwrap(),
        Duration::from_secs(5),
    )
    .unwrap()
}

#[test]
fn the_initial_sync_copies_a_disk_the_guest_keeps_writing() {
    let (addr, backup) = spawn_backup(
        DiskVm::destination(BLOCKS),
        Arc::new(ft::checkpoint::NoHooks),
    );
    let src = DiskVm::source(8);
    let hooks = Arc::new(AtCapture {
        disk: src.disk.clone(),
        image: Mutex::new(None),
    });
    let disk = src.disk.clone();
    let p = FtPrimary::start(
        src,
        conn_to(addr),
        &primary_opts(),
        hooks.clone(),
        Arc::new(NoStats),
    )
    .unwrap_or_else(|e| panic!("start: {}", ft::migration::error_chain(&e.1)));
    // Tracking ended with the sync: from epoch 1 the gates' log carries the writes.
    assert!(disk.dirty.lock().unwrap().is_none(), "still tracking");
    std::thread::sleep(Duration::from_millis(50));
    let exit = p.end("test over").unwrap();
    assert!(exit.error.is_none(), "{:?}", exit.error);
    let bexit = backup.join().unwrap();
    let (at_capture, writes) = hooks.image.lock().unwrap().take().expect("captured");
    let during = writes - disk.writes_at_tracking.load(Ordering::SeqCst);
    let got = bexit.backup.vm().image();
    let differ = at_capture
        .chunks_exact(BS)
        .zip(got.chunks_exact(BS))
        .filter(|(a, b)| a != b)
        .count();
    println!("{during} guest writes during the sync; {differ} blocks differ");
    assert!(
        during > 0,
        "the guest wrote nothing while the disk was copied"
    );
    assert_eq!(
        differ, 0,
        "the backup's disk differs from the capture point"
    );
}

#[test]
fn a_disk_of_another_size_is_refused_at_the_hello() {
    let (addr, backup) = spawn_backup(
        DiskVm::destination(BLOCKS / 2),
        Arc::new(ft::checkpoint::NoHooks),
    );
    let r = FtPrimary::start(
        DiskVm::source(0),
        conn_to(addr),
        &primary_opts(),
        Arc::new(ft::checkpoint::NoHooks),
        Arc::new(NoStats),
    );
    let Err(e) = r else {
        panic!("the sync went through");
    };
    let why = ft::migration::error_chain(&e.1);
    assert!(
        why.contains(&(BLOCKS * BS as u64).to_string())
            && why.contains(&(BLOCKS / 2 * BS as u64).to_string()),
        "{why}"
    );
    let bexit = backup.join().unwrap();
    assert_eq!(bexit.backup.last_committed(), None);
    // Refused before a block was written.
    assert!(bexit.backup.vm().image().iter().all(|&b| b == 0xee));
}

/// Backup hooks that cannot keep checkpoint `at`: before its ack, or after it.
struct FailAt {
    at: u64,
    after_ack: bool,
}

impl BackupHooks for FailAt {
    fn before_ack(&self, n: u64, _extras: &[u8]) -> Result<(), ReplicaError> {
        if n == self.at && !self.after_ack {
            return Err(Box::new(std::io::Error::from_raw_os_error(28)));
        }
        Ok(())
    }
    fn after_ack(&self, n: u64) -> Result<(), ReplicaError> {
        if n == self.at && self.after_ack {
            return Err(Box::new(std::io::Error::from_raw_os_error(5)));
        }
        Ok(())
    }
    fn backup_committed(&self, _n: u64, _extras: &[u8]) {}
}

fn withdraws(after_ack: bool) {
    let hooks = Arc::new(FailAt { at: 3, after_ack });
    let (addr, backup) = spawn_backup(FakeVm::destination(PAGES, VCPUS), hooks);
    let p = FtPrimary::start(
        FakeVm::source(PAGES, VCPUS, 500, 7),
        conn_to(addr),
        &primary_opts(),
        Arc::new(ft::checkpoint::NoHooks),
        Arc::new(NoStats),
    )
    .unwrap_or_else(|e| panic!("start: {}", ft::migration::error_chain(&e.1)));
    let start = Instant::now();
    let reason = loop {
        if let Some(r) = p.backup_abort() {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no Abort from the backup: {:?}",
            p.failure()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(is_withdrawal(&reason), "{reason}");
    let errno = if after_ack {
        "Input/output error"
    } else {
        "No space left on device"
    };
    assert!(reason.contains(errno), "{reason}");
    // Checkpoint 3 was acked only when the failure came after its ack.
    let want = if after_ack { Some(3) } else { Some(2) };
    assert_eq!(p.committed(), want);
    let exit = p.stop().unwrap();
    assert!(matches!(
        exit.error,
        Some(ft::checkpoint::CheckpointError::Stream(
            MigrationError::PeerAborted { .. }
        ))
    ));
    let bexit = backup.join().unwrap();
    assert!(bexit.error.is_withdrawal(), "{:?}", bexit.error);
    assert_eq!(bexit.backup.last_committed(), want);
}

#[test]
fn a_backup_that_cannot_write_a_checkpoint_withdraws_before_acking_it() {
    withdraws(false);
}

#[test]
fn a_backup_whose_sync_fails_after_the_ack_withdraws_too() {
    withdraws(true);
}
