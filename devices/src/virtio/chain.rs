//! A descriptor chain the guest built, checked before a device acts on it: every buffer lies in
//! guest RAM, device-readable buffers come before device-writable ones (virtio 1.x, 2.7.4.2), and
//! the chain ends properly (no loop, no next index out of range, at most 4 GiB). Devices then see
//! it as two byte streams (readable, writable) and access them only through vm-memory, so every
//! byte written lands in the dirty bitmap.

use super::GuestMemoryMmap;
use std::ops::Deref;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// Why a chain cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// The available ring named a head that yields no descriptor.
    #[error("the chain has no descriptors (head index out of range or unreadable)")]
    Empty,
    /// The walk stopped while the last descriptor still pointed onwards.
    #[error("the chain is cut short: a loop, a next index out of range, an unreadable descriptor or more than 4 GiB in all")]
    Truncated,
    /// A device-readable descriptor comes after a device-writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    /// A descriptor's buffer is not wholly inside guest RAM.
    #[error("descriptor buffer {addr:#x}+{len:#x} is not in guest RAM")]
    OutsideMemory {
        /// The buffer's guest physical address.
        addr: u64,
        /// The buffer's length in bytes.
        len: u32,
    },
    /// A read or write reaches past the readable (or writable) bytes of the chain.
    #[error("access at {offset:#x}+{len:#x} past the end of the chain's buffers")]
    OutOfRange {
        /// The access's offset into the chain's stream, in bytes.
        offset: u64,
        /// The access's length in bytes.
        len: usize,
    },
    /// Copying to or from guest memory failed at this guest physical address.
    #[error("guest memory access at {0:#x} failed")]
    Memory(u64),
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: u32,
}

/// The checked buffers of one chain.
#[derive(Debug, Default)]
pub struct ChainBuffers {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    readable_len: u64,
    writable_len: u64,
}

/// A chain after checking: its head (to return it to the used ring whatever happens), its
/// buffers or why they are unusable, and where a status byte can still go.
#[derive(Debug)]
pub struct ParsedChain {
    /// Head descriptor index, for the used ring.
    pub head: u16,
    /// The buffers, or the first thing wrong with the chain.
    pub buffers: Result<ChainBuffers, ChainError>,
    /// The last byte of the chain's last descriptor, if that descriptor is device-writable and
    /// lies in RAM: where virtio-blk reports a status even for a chain that is otherwise bad.
    pub status_byte: Option<GuestAddress>,
}

/// Checks `chain` against `mem`.
pub fn parse<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> ParsedChain
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let head = chain.head_index();
    let mut bufs = ChainBuffers::default();
    let mut fault = None;
    let mut last = None;
    let mut count = 0usize;
    for desc in chain {
        count += 1;
        last = Some(desc);
        if fault.is_some() || desc.len() == 0 {
            continue;
        }
        let seg = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        if !mem.check_range(seg.addr, seg.len as usize) {
            fault = Some(ChainError::OutsideMemory {
                addr: seg.addr.0,
                len: seg.len,
            });
        } else if desc.is_write_only() {
            bufs.writable_len += u64::from(seg.len);
            bufs.writable.push(seg);
        } else if !bufs.writable.is_empty() {
            fault = Some(ChainError::ReadableAfterWritable);
        } else {
            bufs.readable_len += u64::from(seg.len);
            bufs.readable.push(seg);
        }
    }
    // virtio-queue ends the iteration quietly on every malformed link; a last descriptor that
    // still points onwards tells us it did.
    match last {
        None => fault = Some(ChainError::Empty),
        Some(d) if d.has_next() => fault = fault.or(Some(ChainError::Truncated)),
        Some(_) => {}
    }
    let status_byte = last
        .filter(|d| d.is_write_only() && d.len() > 0)
        .and_then(|d| d.addr().checked_add(u64::from(d.len()) - 1))
        .filter(|a| mem.check_range(*a, 1));
    crate::guest_trace!("chain {head}: {count} descriptors, fault {fault:?}");
    ParsedChain {
        head,
        buffers: match fault {
            Some(f) => Err(f),
            None => Ok(bufs),
        },
        status_byte,
    }
}

/// Calls `f(addr, range in buf)` for each piece of `segs` that `offset..offset+len` covers.
fn for_each_piece(
    segs: &[Segment],
    total: u64,
    offset: u64,
    len: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), ChainError>,
) -> Result<(), ChainError> {
    let end = offset
        .checked_add(len as u64)
        .filter(|&e| e <= total)
        .ok_or(ChainError::OutOfRange { offset, len })?;
    let mut seg_start = 0u64;
    let mut done = 0usize;
    for s in segs {
        let seg_end = seg_start + u64::from(s.len);
        let from = offset.max(seg_start);
        let to = end.min(seg_end);
        if from < to {
            let n = (to - from) as usize;
            f(s.addr.unchecked_add(from - seg_start), done..done + n)?;
            done += n;
        }
        if seg_end >= end {
            break;
        }
        seg_start = seg_end;
    }
    Ok(())
}

impl ChainBuffers {
    /// Bytes the device may read.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }

    /// Copies `buf.len()` bytes from offset `offset` of the readable stream.
    pub fn read_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ChainError> {
        let len = buf.len();
        for_each_piece(&self.readable, self.readable_len, offset, len, |a, r| {
            mem.read_slice(&mut buf[r], a)
                .map_err(|_| ChainError::Memory(a.0))
        })
    }

    /// Copies `buf` to offset `offset` of the writable stream.
    pub fn write_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), ChainError> {
        for_each_piece(
            &self.writable,
            self.writable_len,
            offset,
            buf.len(),
            |a, r| {
                mem.write_slice(&buf[r], a)
                    .map_err(|_| ChainError::Memory(a.0))
            },
        )
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Building guest memory and hostile queues for device tests.

    use super::GuestMemoryMmap;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Address, Bytes, GuestAddress};

    /// Device-writable descriptor flag.
    pub const W: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    /// Chained descriptor flag.
    pub const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    /// 16 MiB of guest RAM at 0, and a hole above it.
    pub fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    /// A descriptor.
    pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// Puts `descs` at the start of the table and one avail entry per chain head; returns the
    /// device-side queue.
    pub fn queue_with(mq: &MockSplitQueue<GuestMemoryMmap>, descs: &[RawDescriptor]) -> Queue {
        mq.add_desc_chains(descs, 0).unwrap();
        mq.create_queue().unwrap()
    }

    /// The used ring's idx and its entry `i` (id, len).
    pub fn used(
        mem: &GuestMemoryMmap,
        mq: &MockSplitQueue<GuestMemoryMmap>,
        i: u16,
    ) -> (u16, u32, u32) {
        let base = mq.used_addr();
        let idx: u16 = mem.read_obj(base.unchecked_add(2)).unwrap();
        let e = base.unchecked_add(4 + 8 * u64::from(i));
        let id: u32 = mem.read_obj(e).unwrap();
        let len: u32 = mem.read_obj(e.unchecked_add(4)).unwrap();
        (idx, id, len)
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueOwnedT;

    fn parse_first(descs: &[virtio_queue::desc::RawDescriptor]) -> ParsedChain {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q = queue_with(&mq, descs);
        let chain = q.iter(&mem).unwrap().next().unwrap();
        parse(chain, &mem)
    }

    #[test]
    fn good_chain_becomes_two_streams() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q = queue_with(
            &mq,
            &[
                desc(0x10_0000, 4, NEXT, 1),
                desc(0x20_0000, 6, NEXT, 2),
                desc(0x30_0000, 3, W | NEXT, 3),
                desc(0x40_0000, 5, W, 0),
            ],
        );
        mem.write_slice(&[1, 2, 3, 4], GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(&[5, 6, 7, 8, 9, 10], GuestAddress(0x20_0000))
            .unwrap();
        let p = parse(q.iter(&mem).unwrap().next().unwrap(), &mem);
        assert_eq!(p.head, 0);
        assert_eq!(p.status_byte, Some(GuestAddress(0x40_0004)));
        let b = p.buffers.unwrap();
        assert_eq!((b.readable_len(), b.writable_len()), (10, 8));
        let mut buf = [0u8; 4];
        b.read_at(&mem, 2, &mut buf).unwrap();
        assert_eq!(buf, [3, 4, 5, 6]);
        b.write_at(&mem, 1, &[0xaa; 4]).unwrap();
        let mut w = [0u8; 2];
        mem.read_slice(&mut w, GuestAddress(0x30_0001)).unwrap();
        assert_eq!(w, [0xaa; 2]);
        mem.read_slice(&mut w, GuestAddress(0x40_0000)).unwrap();
        assert_eq!(w, [0xaa; 2]);
        assert_eq!(
            b.write_at(&mem, 7, &[0; 2]),
            Err(ChainError::OutOfRange { offset: 7, len: 2 })
        );
        assert!(b.read_at(&mem, u64::MAX, &mut buf).is_err());
    }

    #[test]
    fn buffers_outside_ram_are_refused() {
        let p = parse_first(&[desc(0xfff_f000, 0x2000, NEXT, 1), desc(0x10_0000, 1, W, 0)]);
        assert_eq!(
            p.buffers.unwrap_err(),
            ChainError::OutsideMemory {
                addr: 0xfff_f000,
                len: 0x2000
            }
        );
        // The status byte is still reachable.
        assert_eq!(p.status_byte, Some(GuestAddress(0x10_0000)));
        let p = parse_first(&[desc(u64::MAX - 2, 16, W, 0)]);
        assert!(matches!(p.buffers, Err(ChainError::OutsideMemory { .. })));
        assert_eq!(p.status_byte, None);
        let p = parse_first(&[desc(0x10_0000, u32::MAX, W, 0)]);
        assert!(matches!(p.buffers, Err(ChainError::OutsideMemory { .. })));
        assert_eq!(p.status_byte, None);
    }

    #[test]
    fn loops_and_bad_links_are_refused() {
        // 0 -> 1 -> 0 -> ...: virtio-queue stops after queue-size descriptors.
        let p = parse_first(&[desc(0x10_0000, 1, NEXT, 1), desc(0x10_0000, 1, NEXT, 0)]);
        assert_eq!(p.buffers.unwrap_err(), ChainError::Truncated);
        // next index past the table.
        let p = parse_first(&[desc(0x10_0000, 1, NEXT, 500)]);
        assert_eq!(p.buffers.unwrap_err(), ChainError::Truncated);
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let p = parse_first(&[desc(0x10_0000, 4, W | NEXT, 1), desc(0x20_0000, 4, 0, 0)]);
        assert_eq!(p.buffers.unwrap_err(), ChainError::ReadableAfterWritable);
        assert_eq!(p.status_byte, None);
    }
}
