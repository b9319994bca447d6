//! A guest's virtqueue made of fuzz bytes (descriptor table, avail ring, queue size and indexes)
//! walked the way the devices walk it: every chain is parsed and its buffers read and written,
//! and nothing may panic or touch memory outside guest RAM.
#![no_main]

use devices::virtio::chain;
use devices::virtio::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

const RAM: usize = 0x10000;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x4000;
const USED: u64 = 0x8000;

fuzz_target!(|data: &[u8]| {
    let Some((&size_sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]) else {
        return;
    };
    // Descriptors and the avail ring come from the input; the rest of RAM stays zero.
    let (descs, avail) = rest.split_at(rest.len().min(0x1000));
    let _ = mem.write_slice(descs, GuestAddress(DESC));
    let _ = mem.write_slice(&avail[..avail.len().min(0x1000)], GuestAddress(AVAIL));
    let Ok(mut q) = Queue::new(256) else {
        return;
    };
    // Any size the guest may write, power of two or not: the queue must refuse the bad ones.
    if q.try_set_size(u16::from(size_sel) + 1).is_err() {
        return;
    }
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    let Ok(iter) = q.iter(&mem) else {
        return;
    };
    let mut buf = [0u8; 512];
    for c in iter.take(1024) {
        let parsed = chain::parse(c, &mem);
        if let Ok(b) = &parsed.buffers {
            let _ = b.read_at(&mem, 0, &mut buf);
            let _ = b.write_at(&mem, 0, &buf[..64]);
        }
    }
});
