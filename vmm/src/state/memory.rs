//! Guest RAM in a snapshot: one file holding every region back to back, written sparsely (all-zero
//! pages are holes), and read back extent by extent so holes are never touched. Also the dirty
//! page bitmap that migration and FT use: KVM's dirty log (vCPU writes) OR'd with vm-memory's
//! bitmap (writes by device backends).

use crate::vm::memory::{total_size, GuestMemoryMmap};
use kvm_ioctls::VmFd;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// Page size of the snapshot file, KVM's dirty log and vm-memory's bitmap.
pub const PAGE_SIZE: usize = 4096;
/// A page of zeros to compare against (slice equality is one memcmp, fast even unoptimised).
static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
/// Bytes copied out of guest memory per read.
const CHUNK: usize = 1 << 20;

/// Memory file errors.
#[derive(Debug, thiserror::Error)]
pub enum MemoryStateError {
    /// Creating, sizing, writing or reading the memory file failed.
    #[error("cannot {what} memory file {path}")]
    Io {
        /// What the VMM was doing to the file (`create`, `size`, `write`, ...).
        what: &'static str,
        /// The memory file's path.
        path: String,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The memory file's length differs from the VM's RAM size.
    #[error("memory file {path} holds {file} bytes, the VM has {vm}")]
    Size {
        /// The memory file's path.
        path: String,
        /// The file's length in bytes.
        file: u64,
        /// The VM's RAM in bytes.
        vm: u64,
    },
    /// Copying a page to or from guest RAM at this guest physical address failed.
    #[error("cannot access guest memory at {0:#x}")]
    Guest(u64, #[source] vm_memory::GuestMemoryError),
    /// Re-registering the memory slots with KVM's dirty logging on failed.
    #[error("cannot turn on KVM's dirty log")]
    Register(#[source] crate::vm::memory::MemoryError),
    /// `KVM_GET_DIRTY_LOG` failed for a memory slot.
    #[error("cannot read KVM's dirty log of slot {slot}")]
    DirtyLog {
        /// The KVM memory slot.
        slot: u32,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_CLEAR_DIRTY_LOG` (write-protecting pages again) failed for a memory slot.
    #[error("cannot clear KVM's dirty log of slot {slot}")]
    ClearDirtyLog {
        /// The KVM memory slot.
        slot: u32,
        /// What KVM said.
        #[source]
        source: std::io::Error,
    },
}

/// What a memory save wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemorySaveStats {
    /// Guest RAM in bytes: the memory file's length (zero pages are holes).
    pub total_bytes: u64,
    /// Bytes of non-zero pages actually written.
    pub data_bytes: u64,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MemoryStateError {
    let path = path.display().to_string();
    move |source| MemoryStateError::Io { what, path, source }
}

/// Writes every region of `mem` to `path` (created or truncated), leaving zero pages as holes.
/// The vCPUs and device workers must be stopped.
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> Result<MemorySaveStats, MemoryStateError> {
    let file = File::create(path).map_err(io_err("create", path))?;
    let total = total_size(mem);
    file.set_len(total).map_err(io_err("size", path))?;
    let mut buf = vec![0u8; CHUNK];
    let mut file_off = 0u64;
    let mut data_bytes = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let mut off = 0u64;
        while off < len {
            let n = usize::try_from((len - off).min(CHUNK as u64)).unwrap_or(CHUNK);
            let dst = &mut buf[..n];
            region
                .get_slice(MemoryRegionAddress(off), n)
                .map(|s| s.copy_to(dst))
                .map_err(|e| MemoryStateError::Guest(region.start_addr().0 + off, e))?;
            for (i, page) in dst.chunks(PAGE_SIZE).enumerate() {
                if is_zero(page) {
                    continue;
                }
                let at = file_off + off + (i * PAGE_SIZE) as u64;
                file.write_all_at(page, at).map_err(io_err("write", path))?;
                data_bytes += page.len() as u64;
            }
            off += n as u64;
        }
        file_off += len;
    }
    Ok(MemorySaveStats {
        total_bytes: total,
        data_bytes,
    })
}

fn is_zero(page: &[u8]) -> bool {
    page == &ZERO_PAGE[..page.len()]
}

/// The next data extent at or after `off`: (start, end), or `None` when only holes remain.
fn next_extent(file: &File, off: u64, len: u64) -> Option<(u64, u64)> {
    let fd = file.as_raw_fd();
    let at = i64::try_from(off).ok()?;
    // SAFETY: lseek on an fd we own; it only moves the file offset.
    let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
    if start < 0 {
        // ENXIO: no data past `off`. Filesystems without SEEK_DATA fail otherwise: read it all.
        return (std::io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO))
            .then_some((off, len));
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    let start = u64::try_from(start).ok()?;
    let end = u64::try_from(end).unwrap_or(len).min(len);
    (start < end).then_some((start, end))
}

/// Fills `mem` (fresh, all zero) from `path`, reading only the file's data extents and writing
/// only non-zero pages, so a mostly idle guest restores fast and stays lazily backed.
pub fn restore(mem: &GuestMemoryMmap, path: &Path) -> Result<(), MemoryStateError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let file_len = file.metadata().map_err(io_err("stat", path))?.len();
    let total = total_size(mem);
    if file_len != total {
        return Err(MemoryStateError::Size {
            path: path.display().to_string(),
            file: file_len,
            vm: total,
        });
    }
    // File offset -> guest address, region by region.
    let mut map = Vec::new();
    let mut file_off = 0u64;
    for region in mem.iter() {
        map.push((file_off, region.start_addr(), region.len()));
        file_off += region.len();
    }
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while let Some((start, end)) = next_extent(&file, off, total) {
        let mut pos = start - start % PAGE_SIZE as u64;
        while pos < end {
            let n = usize::try_from((end - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
            let src = &mut buf[..n];
            file.read_exact_at(src, pos).map_err(io_err("read", path))?;
            for (i, page) in src.chunks(PAGE_SIZE).enumerate() {
                if is_zero(page) {
                    continue;
                }
                let at = pos + (i * PAGE_SIZE) as u64;
                let Some(&(base, gpa, _)) =
                    map.iter().rev().find(|(b, _, l)| at >= *b && at < b + l)
                else {
                    continue;
                };
                let addr = GuestAddress(gpa.0 + (at - base));
                vm_memory::Bytes::write_slice(mem, page, addr)
                    .map_err(|e| MemoryStateError::Guest(addr.0, e))?;
            }
            pos += n as u64;
        }
        off = end;
    }
    Ok(())
}

/// Dirty pages of one memory region: bit `i` of word `i / 64` is the page at
/// `start + i * PAGE_SIZE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionDirty {
    /// Guest physical address of the region's first page.
    pub start: GuestAddress,
    /// The region's length in bytes.
    pub len: u64,
    /// One bit per 4 KiB page, set if the page was written.
    pub bits: Vec<u64>,
}

/// Pages written since the last [`dirty_pages`] (or [`start_dirty_log`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyBitmap {
    /// Each guest RAM region's dirty pages, in address order.
    pub regions: Vec<RegionDirty>,
}

impl DirtyBitmap {
    /// How many pages are dirty.
    pub fn count(&self) -> u64 {
        self.regions
            .iter()
            .flat_map(|r| &r.bits)
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }

    /// Guest address of every dirty page, in order.
    pub fn pages(&self) -> impl Iterator<Item = GuestAddress> + '_ {
        self.regions.iter().flat_map(|r| {
            r.bits.iter().enumerate().flat_map(move |(w, &word)| {
                (0..64)
                    .filter(move |b| word & (1 << b) != 0)
                    .map(move |b| (w * 64 + b) as u64 * PAGE_SIZE as u64)
                    .filter(move |&off| off < r.len)
                    .map(move |off| GuestAddress(r.start.0 + off))
            })
        })
    }
}

/// Asks KVM to leave dirty pages writable when it reports them
/// (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`), so that [`dirty_pages_keeping`] can choose which to
/// write-protect again; true if KVM agreed. Without it every reported page is write-protected
/// again, and the guest's next write to it costs a fault (tens of µs under PVM).
pub fn enable_manual_protect(vm: &VmFd) -> bool {
    let cap = kvm_bindings::kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        args: [
            u64::from(kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE),
            0,
            0,
            0,
        ],
        ..Default::default()
    };
    vm.check_extension_raw(u64::from(cap.cap)) as u64 & cap.args[0] != 0
        && vm.enable_cap(&cap).is_ok()
}

/// Turns on KVM's dirty log for every slot and clears both logs, so that [`dirty_pages`] reports
/// writes from now on.
pub fn start_dirty_log(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    manual: bool,
) -> Result<(), MemoryStateError> {
    crate::vm::memory::register_memory(vm, mem, true).map_err(MemoryStateError::Register)?;
    dirty_pages(vm, mem, manual).map(|_| ())
}

/// Pages dirtied since the last call, by vCPUs (KVM's log) or devices (vm-memory's bitmap); both
/// logs are cleared. Needs [`start_dirty_log`] first; `manual` says whether
/// [`enable_manual_protect`] succeeded on this VM.
pub fn dirty_pages(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    manual: bool,
) -> Result<DirtyBitmap, MemoryStateError> {
    dirty_pages_keeping(vm, mem, manual, |_| None)
}

/// [`dirty_pages`], except that of the pages reported `keep` may pick some (from the whole
/// bitmap it is shown) to stay writable: KVM keeps them dirty, so the next call reports them
/// again whether or not they were written, and the guest's writes to them meanwhile cost no
/// fault. Only with `manual`; without it `keep` is not asked and every page is protected again.
/// Every page not kept is write-protected before this returns, so a copy made after it sees
/// every write before it, and any later write is reported next time.
pub fn dirty_pages_keeping(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    manual: bool,
    keep: impl FnOnce(&DirtyBitmap) -> Option<DirtyBitmap>,
) -> Result<DirtyBitmap, MemoryStateError> {
    let mut out = DirtyBitmap::default();
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let len = usize::try_from(region.len()).unwrap_or(usize::MAX);
        let mut bits = vm
            .get_dirty_log(slot, len)
            .map_err(|source| MemoryStateError::DirtyLog { slot, source })?;
        // The mapping's own bitmap (the trait's `bitmap()` is a sliced view without get_and_reset).
        let ours = std::ops::Deref::deref(region).bitmap().get_and_reset();
        for (k, o) in bits.iter_mut().zip(ours) {
            *k |= o;
        }
        out.regions.push(RegionDirty {
            start: region.start_addr(),
            len: region.len(),
            bits,
        });
    }
    if manual {
        // The bits passed on may include pages only devices wrote: clearing a page KVM does
        // not have dirty changes nothing, so the merged bitmap serves as it is.
        let kept = keep(&out);
        for (slot, region) in out.regions.iter().enumerate() {
            let masked: Vec<u64>;
            let bits = match kept.as_ref().and_then(|k| k.regions.get(slot)) {
                Some(k) => {
                    masked = region
                        .bits
                        .iter()
                        .zip(&k.bits)
                        .map(|(b, k)| b & !k)
                        .collect();
                    &masked
                }
                None => &region.bits,
            };
            if bits.iter().any(|&w| w != 0) {
                clear_dirty_log(vm, slot as u32, region.len, bits)?;
            }
        }
    }
    Ok(out)
}

/// Write-protects again the pages of `slot` set in `bits` (and clears their dirty bits).
fn clear_dirty_log(vm: &VmFd, slot: u32, len: u64, bits: &[u64]) -> Result<(), MemoryStateError> {
    let pages = u32::try_from(len / PAGE_SIZE as u64).unwrap_or(u32::MAX);
    let mut clear = kvm_bindings::kvm_clear_dirty_log {
        slot,
        num_pages: pages.min(u32::try_from(bits.len() * 64).unwrap_or(u32::MAX)),
        first_page: 0,
        ..Default::default()
    };
    // The field is a `*mut` for the C struct's sake; KVM only reads the bitmap.
    clear.__bindgen_anon_1.dirty_bitmap = bits.as_ptr().cast_mut().cast();
    // SAFETY: the request names one of this VM's slots from its first page, and the bitmap it
    // points to is `bits`, which holds at least `num_pages` bits and outlives the call; KVM only
    // reads it.
    let ret = unsafe {
        vmm_sys_util::ioctl::ioctl_with_ref(
            vm,
            crate::seccomp::ioctls::KVM_CLEAR_DIRTY_LOG(),
            &clear,
        )
    };
    if ret < 0 {
        return Err(MemoryStateError::ClearDirtyLog {
            slot,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Clears vm-memory's bitmap (without KVM's log on, device writes are all it holds).
pub fn reset_device_bitmap(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        std::ops::Deref::deref(region).bitmap().reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::memory::create_guest_memory;
    use vm_memory::Bytes;

    #[test]
    fn save_is_sparse_and_restore_gives_the_same_bytes() {
        let dir = std::env::temp_dir().join(format!("tandem-memstate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memory");
        let mem = create_guest_memory(16 << 20).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(7u8, GuestAddress((16 << 20) - 1)).unwrap();
        let stats = save(&mem, &path).unwrap();
        assert_eq!(stats.total_bytes, 16 << 20);
        assert_eq!(stats.data_bytes, 2 * PAGE_SIZE as u64);
        let back = create_guest_memory(16 << 20).unwrap();
        restore(&back, &path).unwrap();
        assert_eq!(
            back.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            back.read_obj::<u8>(GuestAddress((16 << 20) - 1)).unwrap(),
            7
        );
        let other = create_guest_memory(8 << 20).unwrap();
        assert!(matches!(
            restore(&other, &path),
            Err(MemoryStateError::Size { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dirty_bitmap_lists_pages() {
        let d = DirtyBitmap {
            regions: vec![RegionDirty {
                start: GuestAddress(0x10_0000),
                len: 65 * PAGE_SIZE as u64,
                bits: vec![0b101, 1],
            }],
        };
        assert_eq!(d.count(), 3);
        let p: Vec<u64> = d.pages().map(|a| a.0).collect();
        assert_eq!(p, vec![0x10_0000, 0x10_2000, 0x10_0000 + 64 * 4096]);
    }
}
