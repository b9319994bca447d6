//! How far a replicated-disk copy has come, for `ft.status` (`disk_sync`) and the metrics. The
//! sync's thread updates it without a lock while the API reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One sync's figures as `ft.status` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskSync {
    /// Bytes of the images this sync copies (0: no replicated disk).
    pub bytes_total: u64,
    /// How far the full pass has come, holes and zero blocks included; `bytes_total` once it
    /// is done.
    pub bytes_copied: u64,
    /// Block data put on the stream (primary) or received (backup) by this sync: the full
    /// pass's non-zero blocks and every block sent again.
    pub bytes_sent: u64,
    /// Blocks the guest wrote after they were copied, waiting for the next round (primary; 0
    /// once the sync is done).
    pub dirty_blocks: u64,
}

#[derive(Debug, Default)]
struct Counters {
    total: AtomicU64,
    copied: AtomicU64,
    sent: AtomicU64,
    dirty: AtomicU64,
    /// Over the VMM's life (the metric's counter): never reset.
    sent_ever: AtomicU64,
}

/// Shared, cheaply cloned handle on the disk copy's figures.
#[derive(Debug, Clone, Default)]
pub struct DiskProgress(Arc<Counters>);

impl DiskProgress {
    /// A handle nobody else reads.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sync that copies `total` bytes starts: its figures start from zero.
    pub fn start(&self, total: u64) {
        self.reset();
        self.0.total.store(total, Ordering::Relaxed);
    }

    /// No sync (a new pair, or one without replicated disks): every figure but the lifetime
    /// count is zero.
    pub fn reset(&self) {
        for c in [&self.0.total, &self.0.copied, &self.0.sent, &self.0.dirty] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// The full pass covered `n` more bytes.
    pub fn copied(&self, n: u64) {
        self.0.copied.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` bytes of block data went on (or came off) the stream.
    pub fn sent(&self, n: u64) {
        self.0.sent.fetch_add(n, Ordering::Relaxed);
        self.0.sent_ever.fetch_add(n, Ordering::Relaxed);
    }

    /// Blocks waiting for the next round.
    pub fn set_dirty(&self, blocks: u64) {
        self.0.dirty.store(blocks, Ordering::Relaxed);
    }

    /// The current sync's figures.
    pub fn snapshot(&self) -> DiskSync {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DiskSync {
            bytes_total: l(&self.0.total),
            // Zero runs count whole blocks; a disk's last block may be short.
            bytes_copied: l(&self.0.copied).min(l(&self.0.total)),
            bytes_sent: l(&self.0.sent),
            dirty_blocks: l(&self.0.dirty),
        }
    }

    /// Block data bytes sent or received over the VMM's life.
    pub fn sent_ever(&self) -> u64 {
        self.0.sent_ever.load(Ordering::Relaxed)
    }
}
