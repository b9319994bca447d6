//! Hashing one region of one side's replicated state (xxh3-64 of its bytes), optionally keeping
//! the bytes for a repair.

use super::disks::ScrubDisks;
use crate::frame::{ScrubRegion, PAGE_SIZE};
use crate::vm::{MigratableVm, VmOpError, VmState};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Disk bytes read at once.
const DISK_READ: usize = 64 << 10;

/// The hashes of one checkpoint's state blobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StateHashes {
    pub(crate) devices: u64,
    pub(crate) vcpus: Vec<u64>,
}

impl StateHashes {
    pub(crate) fn of(s: &VmState) -> StateHashes {
        StateHashes {
            devices: xxh3_64(&s.devices),
            vcpus: s.vcpus.iter().map(|v| xxh3_64(v)).collect(),
        }
    }
}

/// Why a region could not be hashed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HashError {
    /// Reading it failed.
    #[error("cannot read it")]
    Read(#[source] VmOpError),
    /// This side does not have it (a disk it does not replicate, a vCPU it lacks, a range
    /// beyond its memory or disk).
    #[error("this side does not have it")]
    Absent,
}

/// What a side hashes from.
pub(crate) struct Sources<'a, V: ?Sized> {
    pub(crate) vm: &'a V,
    pub(crate) disks: Option<&'a dyn ScrubDisks>,
    pub(crate) state: Option<&'a StateHashes>,
}

impl<V: MigratableVm + ?Sized> Sources<'_, V> {
    /// The hash of `r`; its bytes are appended to `keep` when given (memory and disk only).
    pub(crate) fn hash(
        &self,
        r: &ScrubRegion,
        keep: Option<&mut Vec<u8>>,
    ) -> Result<u64, HashError> {
        match *r {
            ScrubRegion::Memory { first_pfn, pages } => self.memory(first_pfn, pages, keep),
            ScrubRegion::Disk { index, offset, len } => self.disk(index, offset, len, keep),
            ScrubRegion::Devices => self.state.map(|s| s.devices).ok_or(HashError::Absent),
            ScrubRegion::Vcpu { index } => self
                .state
                .and_then(|s| s.vcpus.get(index as usize).copied())
                .ok_or(HashError::Absent),
        }
    }

    fn memory(
        &self,
        first: u64,
        pages: u32,
        mut keep: Option<&mut Vec<u8>>,
    ) -> Result<u64, HashError> {
        let end = first.saturating_add(u64::from(pages));
        if end > self.vm.page_count() {
            return Err(HashError::Absent);
        }
        let mut h = Xxh3::new();
        let mut page = [0u8; PAGE_SIZE];
        for pfn in first..end {
            self.vm.read_page(pfn, &mut page).map_err(HashError::Read)?;
            h.update(&page);
            if let Some(k) = keep.as_deref_mut() {
                k.extend_from_slice(&page);
            }
        }
        Ok(h.digest())
    }

    fn disk(
        &self,
        index: u32,
        offset: u64,
        len: u32,
        mut keep: Option<&mut Vec<u8>>,
    ) -> Result<u64, HashError> {
        let disks = self.disks.ok_or(HashError::Absent)?;
        let size = disks
            .list()
            .iter()
            .find(|d| d.index == index)
            .map(|d| d.size)
            .ok_or(HashError::Absent)?;
        if offset.saturating_add(u64::from(len)) > size {
            return Err(HashError::Absent);
        }
        let mut h = Xxh3::new();
        let mut buf = vec![0u8; DISK_READ.min(len as usize)];
        let mut done = 0usize;
        while done < len as usize {
            let n = buf.len().min(len as usize - done);
            let chunk = &mut buf[..n];
            disks
                .read(index, offset + done as u64, chunk)
                .map_err(HashError::Read)?;
            h.update(chunk);
            if let Some(k) = keep.as_deref_mut() {
                k.extend_from_slice(chunk);
            }
            done += n;
        }
        Ok(h.digest())
    }
}
