//! The disk output gate (DESIGN.md, "Disk, shared mode" and "Disk, replicated mode").
//!
//! Every guest write made while the VM is protected is logged with its epoch and its data, so
//! that the checkpoint engine can ship it ([`DiskGate::take_epoch_writes`]) and the backup can
//! re-issue it ([`apply_writes`], idempotent).
//!
//! * **Shared** (both hosts see one image; the backup must never write it until it is live): a
//!   write completes into an in-memory overlay (per sector, newest data wins) that reads see, and
//!   reaches the image only after its epoch commits: the releaser applies epochs ≤ N in order,
//!   `fdatasync`s, drops them from the overlay and reports N durable to the clock, which is what
//!   lets the network release N's frames. A guest FLUSH completes at once, as in Remus: the data
//!   of its epoch travels in checkpoint N and is made durable before any output of N leaves (the
//!   net gate waits for [`EpochClock::release_bound`]), so nobody outside can tell. If the
//!   primary dies first, the guest resumes on the backup from checkpoint N-1 at most, where that
//!   FLUSH never happened, or from N, whose writes the backup re-issues.
//! * **Replicated** (each host its own copy): writes go to the primary's image at once and are
//!   logged only to be shipped; FLUSH is a real `fdatasync` of the primary's copy. Epoch N is
//!   durable as soon as it commits (the backup applies N to its own copy once N is committed).
//!
//! While a replicated disk is first copied to the backup (the FT initial sync, `ft::disk`), the
//! gate also records which 4 KiB blocks the guest writes ([`DiskGate::start_tracking`]), each
//! once its write has reached the image, so that a block the copy read before that write is
//! always sent again.
//!
//! Memory is bounded by `cap_bytes` of logged data (the overlay holds at most one more copy of
//! it): when full the gate reports no room and the block worker stops taking requests until a
//! commit frees space. Unprotected: everything held is applied and synced, then writes go
//! straight to the image. Halted: nothing is applied or dropped.
//!
//! Fencing (shared mode): while protected, each write of a committed epoch to the image first
//! checks the clock's lease ([`EpochClock::shared_write_allowed`], `ft::gate::Lease`); a
//! primary that was stopped past it keeps the writes held instead of writing them over what a
//! backup gone live has written since, until it wins the generation (then they are its own to
//! write) or halts.

use super::disk::{RawDisk, SECTOR_SIZE};
use super::io::DiskIo;
use ft::bitmap::DirtyBitmap;
use ft::disk::BLOCK_SIZE;
use ft::gate::{DiskWrite, DurabilityId, EpochClock, FenceError, OutputGate, Protection};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Default bound on logged write bytes per disk.
pub const DEFAULT_DISK_CAP_BYTES: usize = 64 << 20;
const SECTOR: usize = SECTOR_SIZE as usize;
/// "Every epoch", for unprotected running.
const ALL: u64 = u64::MAX;

/// How the pair shares this disk (DESIGN.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskMode {
    /// One image both hosts see; the primary writes it only after commit.
    Shared,
    /// One image per host; the primary writes its own at once.
    Replicated,
}

/// A write log the backup cannot apply to its disk.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A logged write names another disk than the one it is applied to.
    #[error("write for disk {got} sent to disk {ours}")]
    WrongDisk {
        /// The disk index the write names.
        got: u32,
        /// The index of the disk being written.
        ours: u32,
    },
    /// A logged write's offset or length is not a whole number of 512-byte sectors.
    #[error("write of {len} bytes at {offset} is not whole sectors")]
    Misaligned {
        /// The write's byte offset on the disk.
        offset: u64,
        /// The write's length in bytes.
        len: usize,
    },
    /// A logged write ends past the end of the disk image.
    #[error("write of {len} bytes at {offset} lies past the end of the disk")]
    OutOfRange {
        /// The write's byte offset on the disk.
        offset: u64,
        /// The write's length in bytes.
        len: usize,
    },
    /// Writing or syncing the disk image failed.
    #[error("disk I/O")]
    Io(#[source] io::Error),
    /// The fence forbids writing the shared disk now (halted, or no valid lease).
    #[error("committed writes held back: this member may not write the shared disk now")]
    Fenced(#[source] FenceError),
}

/// Gate counters, readable at any time.
#[derive(Debug, Default)]
pub struct DiskGateCounters {
    /// Logged write bytes held now.
    pub held_bytes: AtomicU64,
    /// Writes logged since the gate was built.
    pub logged_writes: AtomicU64,
    /// Writes applied to the image after their epoch committed (shared mode).
    pub applied_writes: AtomicU64,
    /// Newest epoch made durable.
    pub durable_epoch: AtomicU64,
    /// Failed attempts to make committed writes durable (retried).
    pub apply_errors: AtomicU64,
    /// Attempts refused for want of a valid lease (shared mode; retried, or held for good once
    /// halted).
    pub fenced: AtomicU64,
    /// Times the gate was full and pushed back on the guest.
    pub full: AtomicU64,
}

impl DiskGateCounters {
    /// Name/value pairs for `vm.counters`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("disk_gate_held_bytes", l(&self.held_bytes)),
            ("disk_gate_logged_writes", l(&self.logged_writes)),
            ("disk_gate_applied_writes", l(&self.applied_writes)),
            ("disk_gate_durable_epoch", l(&self.durable_epoch)),
            ("disk_gate_apply_errors", l(&self.apply_errors)),
            ("disk_gate_fenced", l(&self.fenced)),
            ("disk_gate_full", l(&self.full)),
        ]
    }
}

#[derive(Default)]
struct State {
    /// Logged writes by epoch, in guest order within each epoch.
    log: BTreeMap<u64, Vec<DiskWrite>>,
    /// Shared mode: newest unapplied data per sector, with the epoch that wrote it.
    overlay: BTreeMap<u64, (u64, Box<[u8]>)>,
}

/// One disk's gate, shared by its worker (as its [`DiskIo`]), the checkpoint engine and the
/// FT releaser.
pub struct DiskGate {
    name: String,
    index: u32,
    mode: DiskMode,
    clock: Arc<EpochClock>,
    durability: DurabilityId,
    disk: RawDisk,
    cap_bytes: u64,
    state: Mutex<State>,
    /// Serialises writes to the image, so that applying old epochs (outside `state`) cannot
    /// overtake or be overtaken by a newer direct write.
    apply: Mutex<()>,
    room: EventFd,
    counters: DiskGateCounters,
    /// Blocks written while the initial sync copies this disk (`None`: not tracking).
    tracking: Mutex<Option<DirtyBitmap>>,
    /// The last apply attempt was fenced (logged once per spell, not every retry).
    fenced: AtomicBool,
}

impl DiskGate {
    /// A gate for disk `index` (its position among the VM's virtio devices) over `disk`.
    pub fn new(
        name: &str,
        index: u32,
        mode: DiskMode,
        clock: Arc<EpochClock>,
        disk: RawDisk,
        cap_bytes: usize,
    ) -> io::Result<Self> {
        let durability = clock.register_durability();
        Ok(DiskGate {
            name: name.to_string(),
            index,
            mode,
            durability,
            clock,
            disk,
            cap_bytes: cap_bytes as u64,
            state: Mutex::default(),
            apply: Mutex::new(()),
            room: EventFd::new(EFD_NONBLOCK)?,
            counters: DiskGateCounters::default(),
            tracking: Mutex::new(None),
            fenced: AtomicBool::new(false),
        })
    }

    /// A second handle on the image, for the initial sync to read it (and find its holes).
    pub fn image(&self) -> io::Result<RawDisk> {
        self.disk.try_clone()
    }

    /// The disk's index among the VM's virtio devices (as in the write log).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Size of the image in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.disk.sectors() * SECTOR_SIZE
    }

    /// Starts recording the blocks the guest writes (anew if already on).
    pub fn start_tracking(&self) {
        let blocks = self.size_bytes().div_ceil(BLOCK_SIZE as u64);
        *self.tracked() = Some(DirtyBitmap::new(blocks));
    }

    /// The blocks written since tracking started or the previous call, cleared (empty when not
    /// tracking).
    pub fn take_dirty(&self) -> DirtyBitmap {
        let blocks = self.size_bytes().div_ceil(BLOCK_SIZE as u64);
        match self.tracked().as_mut() {
            Some(b) => std::mem::replace(b, DirtyBitmap::new(blocks)),
            None => DirtyBitmap::new(blocks),
        }
    }

    /// Stops recording.
    pub fn stop_tracking(&self) {
        *self.tracked() = None;
    }

    fn tracked(&self) -> MutexGuard<'_, Option<DirtyBitmap>> {
        self.tracking.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the blocks `len` bytes at `offset` touch, when tracking.
    fn mark_written(&self, offset: u64, len: usize) {
        if let Some(b) = self.tracked().as_mut() {
            let first = offset / BLOCK_SIZE as u64;
            let end = offset
                .saturating_add(len as u64)
                .div_ceil(BLOCK_SIZE as u64);
            for block in first..end {
                b.set(block);
            }
        }
    }

    /// The gate's counters.
    pub fn counters(&self) -> &DiskGateCounters {
        &self.counters
    }

    /// The sharing mode.
    pub fn mode(&self) -> DiskMode {
        self.mode
    }

    /// The writes of `epoch`, for checkpoint `epoch` (call after `EpochClock::capture`
    /// returned it). Shared mode keeps them until they are applied; replicated mode hands them
    /// over. A second call for the same epoch returns nothing new in replicated mode.
    pub fn take_epoch_writes(&self, epoch: u64) -> Vec<DiskWrite> {
        let mut st = self.lock();
        match self.mode {
            DiskMode::Shared => st.log.get(&epoch).cloned().unwrap_or_default(),
            DiskMode::Replicated => {
                let taken = st.log.remove(&epoch).unwrap_or_default();
                self.release_bytes(bytes(&taken));
                taken
            }
        }
    }

    fn log_write(&self, st: &mut State, buf: &[u8], offset: u64) {
        let epoch = self.clock.current();
        if self.mode == DiskMode::Shared {
            for (i, chunk) in buf.chunks(SECTOR).enumerate() {
                let sector = offset / SECTOR_SIZE + i as u64;
                st.overlay.insert(sector, (epoch, chunk.into()));
            }
        }
        st.log.entry(epoch).or_default().push(DiskWrite {
            disk: self.index,
            offset,
            data: buf.to_vec(),
        });
        self.counters.logged_writes.fetch_add(1, Ordering::Relaxed);
        let held = self
            .counters
            .held_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if held + buf.len() as u64 >= self.cap_bytes {
            self.counters.full.fetch_add(1, Ordering::Relaxed);
            // The guest's disk now waits for a commit: end the epoch for it.
            self.clock.note_output();
        }
        // Otherwise a write does not end the epoch early: nobody outside sees it (shared: it
        // reaches the image after its commit; replicated: only the backup's copy waits), and the
        // output that depends on it (a reply after a FLUSH) ends the epoch itself. Ending it on
        // the write would take one checkpoint for the write and another for the reply.
    }

    fn release_bytes(&self, n: u64) {
        let before = self.counters.held_bytes.fetch_sub(n, Ordering::Relaxed);
        if n > 0 && before >= self.cap_bytes && before - n < self.cap_bytes {
            if let Err(e) = self.room.write(1) {
                crate::guest_error!("{}: cannot wake the disk worker: {e}", self.name);
            }
        }
    }

    /// Makes every logged write of epochs ≤ `through` durable (shared: apply and sync;
    /// replicated: forget), then reports it to the clock.
    pub fn make_durable(&self, through: u64) -> Result<(), ApplyError> {
        let _apply = self.apply.lock().unwrap_or_else(|p| p.into_inner());
        // Moved out of the log, applied without blocking the guest (the overlay still serves
        // its reads), and put back if the image fails us.
        let batch: Vec<(u64, Vec<DiskWrite>)> = {
            let mut st = self.lock();
            let keep = st.log.split_off(&through.saturating_add(1));
            std::mem::replace(&mut st.log, keep).into_iter().collect()
        };
        if self.mode == DiskMode::Shared && !batch.is_empty() {
            if let Err(e) = self.write_batch(&batch) {
                let counter = match e {
                    ApplyError::Fenced(_) => &self.counters.fenced,
                    _ => &self.counters.apply_errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.lock().log.extend(batch);
                return Err(e);
            }
        }
        let n = batch.iter().map(|(_, w)| bytes(w)).sum();
        if self.mode == DiskMode::Shared {
            let mut st = self.lock();
            st.overlay.retain(|_, (epoch, _)| *epoch > through);
        }
        self.release_bytes(n);
        self.counters.durable_epoch.fetch_max(
            through.min(self.clock.current().saturating_sub(1)),
            Ordering::Relaxed,
        );
        // Never report epochs that have not been captured: after unprotected running, a later
        // `protect` must find new epochs not yet durable.
        let mark = through.min(self.clock.current().saturating_sub(1));
        if let Err(e) = self.clock.mark_durable(self.durability, mark) {
            crate::guest_error!("{}: {e}", self.name);
        }
        Ok(())
    }

    /// Returns once no write to the image is in progress; with the lease revoked (or the clock
    /// halted) first, none starts afterwards while protected.
    pub fn wait_idle(&self) {
        drop(self.apply.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The pair is over or the VM stops: writes every held write to the image if the clock
    /// lets output go (no pair, or unprotected), or drops them with a logged reason if it never
    /// will (halted: the guest went live elsewhere and writes the disk now; these belong to
    /// epochs the backup never committed). Nothing stays held silently.
    pub fn settle(&self, why: &str) {
        match self.clock.mode() {
            Protection::Off | Protection::Unprotected => {
                if let Err(e) = self.make_durable(ALL) {
                    crate::guest_error!(
                        "{}: held writes could not reach the image ({why}): {}",
                        self.name,
                        errors::chain(&e)
                    );
                }
            }
            mode @ (Protection::Protected | Protection::Halted) => {
                let mut st = self.lock();
                let n: usize = st.log.values().map(Vec::len).sum();
                if n == 0 {
                    return;
                }
                let held = self.counters.held_bytes.load(Ordering::Relaxed);
                crate::guest_warn!(
                    "{}: discarding {n} held writes ({held} bytes) ({why}): output is {mode:?}, \
                     so their epochs will never reach this image",
                    self.name
                );
                st.log.clear();
                st.overlay.clear();
                drop(st);
                self.release_bytes(held);
            }
        }
    }

    fn write_batch(&self, batch: &[(u64, Vec<DiskWrite>)]) -> Result<(), ApplyError> {
        for (_, writes) in batch {
            for w in writes {
                // Before every write, not once per batch: the process may stop between two.
                self.clock
                    .shared_write_allowed()
                    .map_err(ApplyError::Fenced)?;
                self.disk
                    .write_at(&w.data, w.offset)
                    .map_err(ApplyError::Io)?;
                self.counters.applied_writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.disk.flush().map_err(ApplyError::Io)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under the lock is completed before anything can panic: go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn bytes(writes: &[DiskWrite]) -> u64 {
    writes.iter().map(|w| w.data.len() as u64).sum()
}

impl DiskIo for DiskGate {
    fn sectors(&self) -> u64 {
        self.disk.sectors()
    }

    fn readonly(&self) -> bool {
        self.disk.readonly()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.mode == DiskMode::Replicated {
            return self.disk.read_at(buf, offset);
        }
        // Under the lock, so that an apply cannot drop an overlay sector between our read of the
        // image and our look at the overlay.
        let st = self.lock();
        self.disk.read_at(buf, offset)?;
        if st.overlay.is_empty() || !offset.is_multiple_of(SECTOR_SIZE) {
            return Ok(());
        }
        let first = offset / SECTOR_SIZE;
        let end = first + buf.len().div_ceil(SECTOR) as u64;
        for (&sector, (_, data)) in st.overlay.range(first..end) {
            let at = ((sector - first) as usize) * SECTOR;
            if let Some(dst) = buf.get_mut(at..) {
                let n = dst.len().min(data.len());
                dst[..n].copy_from_slice(&data[..n]);
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !offset.is_multiple_of(SECTOR_SIZE) || !buf.len().is_multiple_of(SECTOR) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if self.disk.readonly() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let holds = self.clock.mode().holds();
        match (self.mode, holds) {
            (DiskMode::Shared, true) => {
                self.log_write(&mut self.lock(), buf, offset);
                Ok(())
            }
            (DiskMode::Shared, false) => {
                // Older held writes reach the image first, or they would overwrite this one.
                if !self.lock().log.is_empty() {
                    self.make_durable(ALL)
                        .map_err(|e| io::Error::other(e.to_string()))?;
                }
                let _apply = self.apply.lock().unwrap_or_else(|p| p.into_inner());
                self.disk.write_at(buf, offset)
            }
            (DiskMode::Replicated, _) => {
                let _apply = self.apply.lock().unwrap_or_else(|p| p.into_inner());
                let written = self.disk.write_at(buf, offset);
                // After the write (even a failed one, which may have changed the image): the
                // sync's copy of these blocks is stale from here on.
                self.mark_written(offset, buf.len());
                written?;
                if holds {
                    self.log_write(&mut self.lock(), buf, offset);
                }
                Ok(())
            }
        }
    }

    fn flush(&self) -> io::Result<()> {
        if self.mode == DiskMode::Shared && self.clock.mode().holds() {
            // Durable on commit, before any output of this epoch leaves (module docs).
            return Ok(());
        }
        // Writes still held from the pair (a release that failed) are part of what the guest
        // asks to be durable.
        if self.mode == DiskMode::Shared && !self.lock().log.is_empty() {
            self.make_durable(ALL)
                .map_err(|e| io::Error::other(errors::chain(&e)))?;
        }
        self.disk.flush()
    }

    fn has_room(&self) -> bool {
        self.counters.held_bytes.load(Ordering::Relaxed) < self.cap_bytes
    }

    fn room_fd(&self) -> Option<RawFd> {
        Some(self.room.as_raw_fd())
    }
}

impl OutputGate for DiskGate {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_durability_source(&self) -> bool {
        true
    }

    fn pump(&self, clock: &EpochClock) {
        let through = match clock.mode() {
            Protection::Protected => clock.committed(),
            Protection::Off | Protection::Unprotected => ALL,
            Protection::Halted => return,
        };
        match self.make_durable(through) {
            Ok(()) => {
                if self.fenced.swap(false, Ordering::Relaxed) {
                    crate::guest_info!(
                        "{}: lease valid again; committed writes applied",
                        self.name
                    );
                }
            }
            Err(ApplyError::Fenced(e)) => {
                if !self.fenced.swap(true, Ordering::Relaxed) {
                    crate::guest_warn!("{}: committed writes held back: {e}", self.name);
                }
            }
            Err(e) => crate::guest_warn!(
                "{}: committed writes not yet durable, will retry: {}",
                self.name,
                errors::chain(&e)
            ),
        }
    }
}

/// The [`DiskIo`] a worker uses when FT is enabled: the shared gate.
pub struct GatedDisk(pub Arc<DiskGate>);

impl DiskIo for GatedDisk {
    fn sectors(&self) -> u64 {
        self.0.sectors()
    }
    fn readonly(&self) -> bool {
        DiskIo::readonly(&*self.0)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
    fn has_room(&self) -> bool {
        self.0.has_room()
    }
    fn room_fd(&self) -> Option<RawFd> {
        self.0.room_fd()
    }
}

/// Backup side: applies `writes` (a committed epoch's, or several in epoch order) to disk
/// `index`'s image and syncs it. Idempotent: re-applying a log gives the same image, which is
/// what re-issue after failover relies on. Every write is checked before any is applied.
pub fn apply_writes(disk: &RawDisk, index: u32, writes: &[DiskWrite]) -> Result<(), ApplyError> {
    write_writes(disk, index, writes)?;
    disk.flush().map_err(ApplyError::Io)
}

/// As [`apply_writes`], without the sync (a replicated backup writes before its ack and syncs
/// after it).
pub fn write_writes(disk: &RawDisk, index: u32, writes: &[DiskWrite]) -> Result<(), ApplyError> {
    let size = disk.sectors() * SECTOR_SIZE;
    for w in writes {
        let (offset, len) = (w.offset, w.data.len());
        if w.disk != index {
            return Err(ApplyError::WrongDisk {
                got: w.disk,
                ours: index,
            });
        }
        if !offset.is_multiple_of(SECTOR_SIZE) || !len.is_multiple_of(SECTOR) {
            return Err(ApplyError::Misaligned { offset, len });
        }
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(ApplyError::OutOfRange { offset, len });
        }
    }
    for w in writes {
        disk.write_at(&w.data, w.offset).map_err(ApplyError::Io)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
