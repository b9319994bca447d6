//! The checkpoint engine's hooks on both ends of a pair.
//!
//! Primary ([`PrimaryHooks`], ft's `EpochHooks`): `epoch_captured(0)` (the initial sync's final
//! pause) starts holding outputs (`protect`), `epoch_captured(n)` moves the epoch clock
//! (`capture`), `take_epoch_extras(n)` serialises the disk gates' writes of epoch `n` into the
//! checkpoint's Extras blob ([`EpochExtras`]), `epoch_committed(n)` commits the clock (the
//! releaser then lets outputs of ≤ `n` leave), `output_waiting` says whether any gate holds output.
//!
//! Backup ([`BackupDiskHooks`], ft's `BackupHooks`): each verified checkpoint's writes go to
//! replicated disks before the backup acks it (`before_ack`), and are synced right after the
//! ack (`after_ack`); a write or sync that fails (ENOSPC, EIO, past the image's end) or extras
//! that do not decode are the backup's reason to withdraw from the pair at once, telling the
//! primary, instead of acking a checkpoint its copy lacks. Shared disks only stash the writes (the
//! primary still owns the image), and [`BackupDiskHooks::reissue`] applies the stash when the
//! backup goes live, after its state is restored and before the guest runs
//! (`crate::ft::pair::BackupVm`). The primary tells the backup, in every Extras blob, through which
//! epoch its shared disks are durable, so the stash only holds the epochs that a dead primary may
//! not have finished.
//!
//! Fencing (shared mode, `ft::gate::Lease`): each ack renews the primary's lease on the shared
//! disk ([`PrimaryHooks`]' `lease_renewed`), and every Extras blob tells the backup how long that
//! lease lasts; a backup going live waits until [`BackupDiskHooks::lease_end`] (the last frame it
//! heard plus that duration) before its first write, so that a primary stopped with committed
//! writes cannot still be writing them (the pair thread does the wait, also for `ft.promote`).

use devices::virtio::block::disk::RawDisk;
use devices::virtio::block::gate::{write_writes, ApplyError, DiskGate, DiskMode};
use devices::virtio::ft::DeviceGate;
use devices::virtio::net::gate::TxGate;
use ft::checkpoint::{BackupHooks, EpochHooks};
use ft::gate::OutputGate;
use ft::gate::{DiskWrite, EpochClock};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What travels in a checkpoint's Extras blob (postcard).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochExtras {
    /// Every epoch ≤ this is durable on the primary's disks (shared mode; 0: none known).
    pub durable_through: u64,
    /// The epoch's guest writes, every disk's, in the order the guest issued them per disk.
    pub writes: Vec<DiskWrite>,
    /// The primary's shared-disk lease, milliseconds from the send of a Commit the backup acks
    /// (0: none): a backup going live writes nothing before its last frame heard plus this.
    pub lease_ms: u64,
}

impl EpochExtras {
    /// Encodes for the stream.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain integers and byte vectors into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a blob from the stream; an empty blob is an epoch without disk writes.
    pub fn decode(blob: &[u8]) -> Result<Self, postcard::Error> {
        if blob.is_empty() {
            return Ok(EpochExtras::default());
        }
        postcard::from_bytes(blob)
    }
}

/// The primary's hooks over its epoch clock and device gates.
pub struct PrimaryHooks {
    clock: Arc<EpochClock>,
    pub(super) disks: Vec<Arc<DiskGate>>,
    /// Released on the ack's own thread as well as by the releaser (see `epoch_committed`).
    nets: Vec<Arc<TxGate>>,
}

impl PrimaryHooks {
    /// Hooks over `clock` and the gates `VirtioDevices::enable_ft` returned.
    pub fn new(clock: Arc<EpochClock>, gates: &[DeviceGate]) -> Self {
        let (mut disks, mut nets) = (Vec::new(), Vec::new());
        for g in gates {
            match g {
                DeviceGate::Disk(d) => disks.push(d.clone()),
                DeviceGate::Net(n) => nets.push(n.clone()),
            }
        }
        PrimaryHooks { clock, disks, nets }
    }
}

impl EpochHooks for PrimaryHooks {
    fn epoch_captured(&self, n: u64) {
        // 0 is the initial sync's final pause: what the guest output before it is in the state
        // the backup gets, what it outputs from now on belongs to epoch 1 and is held.
        if n == 0 {
            if let Err(e) = self.clock.protect() {
                devices::guest_error!("ft: protecting outputs: {e}");
            }
            return;
        }
        match self.clock.capture() {
            Ok(c) if c != n => {
                devices::guest_error!("ft: engine captured epoch {n} but the epoch clock says {c}")
            }
            Ok(_) => {}
            Err(e) => devices::guest_error!("ft: epoch {n}: {e}"),
        }
    }

    fn take_epoch_extras(&self, n: u64) -> Vec<u8> {
        let writes = self
            .disks
            .iter()
            .flat_map(|d| d.take_epoch_writes(n))
            .collect();
        EpochExtras {
            durable_through: self.clock.release_bound(),
            writes,
            lease_ms: self.clock.lease().terms().map_or(0, |t| {
                t.duration.as_millis().min(u128::from(u64::MAX)) as u64
            }),
        }
        .encode()
    }

    fn lease_renewed(&self, sent: std::time::Instant) {
        self.clock.lease().renew(sent);
    }

    fn fence(&self, _generation: u64) {
        self.clock.lease().revoke();
        // A write already past its lease check finishes before the backup hears we stopped.
        for d in &self.disks {
            d.wait_idle();
        }
    }

    fn epoch_committed(&self, n: u64) {
        if let Err(e) = self.clock.commit(n) {
            devices::guest_error!("ft: commit of epoch {n}: {e}");
            return;
        }
        // A reply that waited for this ack leaves from here, not after the releaser thread's
        // wakeup (tens of µs on our hosts, on every request/response round trip). The gate
        // releases in order under its lock whoever pumps, and only up to the clock's release
        // bound: a shared disk's epoch still waiting for its durability stays the releaser's.
        for n in &self.nets {
            n.pump(&self.clock);
        }
    }

    fn wait_output(&self, timeout: std::time::Duration) -> bool {
        let seen = self.clock.outputs();
        if self.output_waiting() {
            return true;
        }
        self.clock.wait_output(seen, timeout);
        self.output_waiting()
    }

    fn output_waiting(&self) -> bool {
        self.clock.output_in_current_epoch()
    }

    fn scrub_disks(&self) -> Option<&dyn ft::scrub::ScrubDisks> {
        Some(self)
    }
}

/// One of the backup's disks.
pub struct BackupDisk {
    /// The disk's index among the VM's virtio devices (as in [`DiskWrite::disk`]).
    pub index: u32,
    /// Its image on this host.
    pub disk: RawDisk,
}

#[derive(Default)]
struct Stash {
    /// Shared mode: committed epochs' writes the primary may not have made durable yet.
    pending: BTreeMap<u64, Vec<DiskWrite>>,
    /// The extras `before_ack` decoded, for `backup_committed` to take.
    decoded: Option<(u64, EpochExtras)>,
    /// Replicated mode: disks written by `before_ack` and not synced yet.
    unsynced: Vec<u32>,
    /// The primary's shared-disk lease, as its latest checkpoint announced it.
    lease: Option<Duration>,
}

/// Why this backup cannot keep a checkpoint in its copy (it then withdraws from the pair).
#[derive(Debug, thiserror::Error)]
pub enum DiskReplicaError {
    /// The checkpoint's extras (its disk writes) do not decode.
    #[error("checkpoint {epoch}: undecodable disk writes")]
    Decode {
        /// The checkpoint's epoch number.
        epoch: u64,
        /// What postcard said.
        #[source]
        source: postcard::Error,
    },
    /// Replicated mode: the checkpoint's writes cannot be applied to this host's images.
    #[error("checkpoint {epoch}: writing the replicated disks")]
    Write {
        /// The checkpoint's epoch number.
        epoch: u64,
        /// Why the writes were refused or failed.
        #[source]
        source: ApplyError,
    },
    /// Replicated mode: syncing the written images after the ack failed.
    #[error("checkpoint {epoch}: syncing the replicated disks")]
    Sync {
        /// The checkpoint's epoch number.
        epoch: u64,
        /// What flushing the image said.
        #[source]
        source: std::io::Error,
    },
}

/// The backup's hooks: write (replicated) or stash (shared) each verified checkpoint's writes.
pub struct BackupDiskHooks {
    pub(super) mode: DiskMode,
    pub(super) disks: Vec<BackupDisk>,
    stash: Mutex<Stash>,
}

impl BackupDiskHooks {
    /// Hooks over this host's `disks`, shared by the pair as `mode` says.
    pub fn new(mode: DiskMode, disks: Vec<BackupDisk>) -> Self {
        BackupDiskHooks {
            mode,
            disks,
            stash: Mutex::default(),
        }
    }

    fn stash(&self) -> std::sync::MutexGuard<'_, Stash> {
        self.stash.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the old primary's shared-disk lease is over for sure, given the last time this
    /// backup heard it on the stream (`None`: the stream never carried a frame): no write of
    /// this member may start before. `None` when there is nothing to wait for: replicated
    /// disks (each host writes its own copy), or no lease announced (no checkpoint after the
    /// initial sync was committed, so the primary never held one).
    pub fn lease_end(&self, last_heard: Option<Instant>) -> Option<Instant> {
        if self.mode != DiskMode::Shared {
            return None;
        }
        let lease = self.stash().lease?;
        // Never heard yet would mean nothing was acked; waiting from now is the safe reading.
        Some(last_heard.unwrap_or_else(Instant::now) + lease)
    }

    /// Epochs stashed for re-issue (shared mode).
    pub fn stashed_epochs(&self) -> Vec<u64> {
        self.stash().pending.keys().copied().collect()
    }

    /// Writes each disk's share of `writes` (every write checked first); the disks written.
    fn write(&self, writes: &[DiskWrite]) -> Result<Vec<u32>, ApplyError> {
        if let Some(w) = writes
            .iter()
            .find(|w| !self.disks.iter().any(|d| d.index == w.disk))
        {
            return Err(ApplyError::WrongDisk {
                got: w.disk,
                ours: self.disks.first().map_or(u32::MAX, |d| d.index),
            });
        }
        let mut written = Vec::new();
        for d in &self.disks {
            let mine: Vec<DiskWrite> = writes
                .iter()
                .filter(|w| w.disk == d.index)
                .cloned()
                .collect();
            if !mine.is_empty() {
                write_writes(&d.disk, d.index, &mine)?;
                written.push(d.index);
            }
        }
        Ok(written)
    }

    fn sync(&self, indices: &[u32]) -> std::io::Result<()> {
        for d in self.disks.iter().filter(|d| indices.contains(&d.index)) {
            d.disk.flush()?;
        }
        Ok(())
    }

    /// Going live (shared mode), before the guest runs: re-issues, in epoch order, every stashed
    /// committed write the primary may not have finished. Idempotent; replicated mode has nothing
    /// to re-issue.
    pub fn reissue(&self) -> Result<usize, ApplyError> {
        let pending = std::mem::take(&mut self.stash().pending);
        let mut n = 0;
        for writes in pending.values() {
            let written = self.write(writes)?;
            self.sync(&written).map_err(ApplyError::Io)?;
            n += writes.len();
        }
        Ok(n)
    }
}

impl BackupHooks for BackupDiskHooks {
    fn scrub_disks(&self) -> Option<&dyn ft::scrub::ScrubDisks> {
        Some(self)
    }

    fn before_ack(&self, n: u64, extras: &[u8]) -> Result<(), ft::checkpoint::ReplicaError> {
        let extras = EpochExtras::decode(extras)
            .map_err(|source| DiskReplicaError::Decode { epoch: n, source })?;
        if self.mode == DiskMode::Replicated {
            let written = self
                .write(&extras.writes)
                .map_err(|source| DiskReplicaError::Write { epoch: n, source })?;
            self.stash().unsynced = written;
        }
        self.stash().decoded = Some((n, extras));
        Ok(())
    }

    fn after_ack(&self, n: u64) -> Result<(), ft::checkpoint::ReplicaError> {
        let unsynced = std::mem::take(&mut self.stash().unsynced);
        self.sync(&unsynced)
            .map_err(|source| DiskReplicaError::Sync { epoch: n, source })?;
        Ok(())
    }

    fn backup_committed(&self, n: u64, extras: &[u8]) {
        if self.mode != DiskMode::Shared {
            self.stash().decoded = None;
            return;
        }
        let mut st = self.stash();
        let extras = match st.decoded.take() {
            Some((epoch, e)) if epoch == n => e,
            // Not through `before_ack` (an engine that skips it): decode here.
            _ => match EpochExtras::decode(extras) {
                Ok(e) => e,
                Err(e) => {
                    devices::guest_error!(
                        "ft backup: checkpoint {n}: undecodable disk writes: {e}"
                    );
                    return;
                }
            },
        };
        if extras.lease_ms > 0 {
            st.lease = Some(Duration::from_millis(extras.lease_ms));
        }
        let keep = st
            .pending
            .split_off(&extras.durable_through.saturating_add(1));
        st.pending = keep;
        if !extras.writes.is_empty() {
            st.pending.insert(n, extras.writes);
        }
    }
}

#[cfg(test)]
#[path = "hooks_tests.rs"]
mod tests;
