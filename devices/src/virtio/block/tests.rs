//! virtio-blk against crafted queues: the requests a driver makes, and the ones a hostile guest
//! makes.

use super::*;
use crate::virtio::chain::test_util::*;
use std::io::Write;
use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::tempfile::TempFile;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

struct Fixture {
    _file: TempFile,
    path: PathBuf,
}

/// An 8-sector image whose sector `n` is filled with byte `n`.
fn image() -> Fixture {
    let file = TempFile::new().unwrap();
    let mut f = file.as_file();
    for n in 0..8u8 {
        f.write_all(&[n; 512]).unwrap();
    }
    Fixture {
        path: file.as_path().to_path_buf(),
        _file: file,
    }
}

fn worker(
    fx: &Fixture,
    readonly: bool,
    mem: &GuestMemoryMmap,
    queue: Queue,
) -> (BlockWorker, Arc<Interrupt>) {
    let interrupt = Arc::new(Interrupt::new(
        EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
    ));
    let mut disk_id = DiskId::default();
    disk_id[..5].copy_from_slice(b"disk0");
    let w = BlockWorker {
        disk: Box::new(RawDisk::open(&fx.path, readonly).unwrap()),
        disk_id,
        mem: mem.clone(),
        queue,
        interrupt: interrupt.clone(),
        bounce: Vec::new(),
        broken: false,
    };
    (w, interrupt)
}

fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    mem.write_obj(kind.to_le(), GuestAddress(HDR)).unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    mem.write_obj(sector.to_le(), GuestAddress(HDR + 8))
        .unwrap();
}

fn status(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

fn dirty(mem: &GuestMemoryMmap, addr: u64) -> bool {
    let r = mem.find_region(GuestAddress(addr)).unwrap();
    r.bitmap().dirty_at((addr - r.start_addr().0) as usize)
}

/// Runs the usual three-descriptor request: header, data (`data_flags`), status.
fn run_request(
    fx: &Fixture,
    readonly: bool,
    kind: u32,
    sector: u64,
    data: RawDescriptor,
) -> (GuestMemoryMmap, (u16, u32, u32), u8) {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    header(&mem, kind, sector);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let q = queue_with(&mq, &[desc(HDR, 16, NEXT, 1), data, desc(STATUS, 1, W, 0)]);
    let (mut w, irq) = worker(fx, readonly, &mem, q);
    w.process_queue();
    assert_eq!(irq.status() & 1, 1, "a used-buffer interrupt was raised");
    let u = used(&mem, &mq, 0);
    let s = status(&mem);
    (mem, u, s)
}

#[test]
fn read_lands_in_guest_memory_and_the_dirty_bitmap() {
    let fx = image();
    let (mem, u, s) = run_request(
        &fx,
        false,
        VIRTIO_BLK_T_IN,
        3,
        desc(DATA, 1024, W | NEXT, 2),
    );
    assert_eq!(s, VIRTIO_BLK_S_OK as u8);
    assert_eq!(u, (1, 0, 1025));
    let mut buf = [0u8; 1024];
    mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 3));
    assert!(buf[512..].iter().all(|&b| b == 4));
    assert!(
        dirty(&mem, DATA),
        "device writes must show in the dirty bitmap"
    );
    assert!(dirty(&mem, STATUS));
}

#[test]
fn write_then_flush_reach_the_file() {
    let fx = image();
    let mem_data = [0xabu8; 512];
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    header(&mem, VIRTIO_BLK_T_OUT, 7);
    mem.write_slice(&mem_data, GuestAddress(DATA)).unwrap();
    let q = queue_with(
        &mq,
        &[
            desc(HDR, 16, NEXT, 1),
            desc(DATA, 512, NEXT, 2),
            desc(STATUS, 1, W, 0),
        ],
    );
    let (mut w, _) = worker(&fx, false, &mem, q);
    w.process_queue();
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
    assert_eq!(used(&mem, &mq, 0), (1, 0, 1));
    let on_disk = std::fs::read(&fx.path).unwrap();
    assert_eq!(&on_disk[7 * 512..], &mem_data[..]);

    // FLUSH: header and status only.
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    mq.add_desc_chains(&[desc(HDR, 16, NEXT, 4), desc(STATUS, 1, W, 0)], 3)
        .unwrap();
    w.process_queue();
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
    assert_eq!(used(&mem, &mq, 1), (2, 3, 1));
}

#[test]
fn get_id_returns_the_disk_id() {
    let fx = image();
    let (mem, u, s) = run_request(
        &fx,
        false,
        VIRTIO_BLK_T_GET_ID,
        0,
        desc(DATA, 20, W | NEXT, 2),
    );
    assert_eq!(s, VIRTIO_BLK_S_OK as u8);
    assert_eq!(u.2, 21);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..6], b"disk0\0");
}

#[test]
fn readonly_disk_refuses_writes() {
    let fx = image();
    let before = std::fs::read(&fx.path).unwrap();
    let (_, u, s) = run_request(&fx, true, VIRTIO_BLK_T_OUT, 0, desc(DATA, 512, NEXT, 2));
    assert_eq!(s, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(u.2, 1);
    assert_eq!(std::fs::read(&fx.path).unwrap(), before);
}

#[test]
fn requests_past_the_end_or_unaligned_fail() {
    let fx = image();
    let (_, _, s) = run_request(
        &fx,
        false,
        VIRTIO_BLK_T_IN,
        7,
        desc(DATA, 1024, W | NEXT, 2),
    );
    assert_eq!(s, VIRTIO_BLK_S_IOERR as u8);
    let (_, _, s) = run_request(
        &fx,
        false,
        VIRTIO_BLK_T_IN,
        u64::MAX,
        desc(DATA, 512, W | NEXT, 2),
    );
    assert_eq!(s, VIRTIO_BLK_S_IOERR as u8);
    let (_, _, s) = run_request(&fx, false, VIRTIO_BLK_T_OUT, 0, desc(DATA, 100, NEXT, 2));
    assert_eq!(s, VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn unknown_request_is_unsupported() {
    let fx = image();
    let (_, _, s) = run_request(&fx, false, 0x1234, 0, desc(DATA, 512, W | NEXT, 2));
    assert_eq!(s, VIRTIO_BLK_S_UNSUPP as u8);
}

#[test]
fn buffers_outside_ram_or_absurd_lengths_get_ioerr() {
    let fx = image();
    // 16 MiB of RAM: this buffer lies in the hole above it.
    let (_, u, s) = run_request(
        &fx,
        false,
        VIRTIO_BLK_T_IN,
        0,
        desc(0x4000_0000, 512, W | NEXT, 2),
    );
    assert_eq!((s, u.2), (VIRTIO_BLK_S_IOERR as u8, 1));
    let (_, _, s) = run_request(
        &fx,
        false,
        VIRTIO_BLK_T_IN,
        0,
        desc(DATA, 0x8000_0000, W | NEXT, 2),
    );
    assert_eq!(s, VIRTIO_BLK_S_IOERR as u8);
    // More than 4 GiB in all: virtio-queue cuts the chain there, so the status descriptor is
    // never reached and the request is dropped untouched.
    let (_, u, s) = run_request(
        &fx,
        false,
        VIRTIO_BLK_T_IN,
        0,
        desc(DATA, u32::MAX, W | NEXT, 2),
    );
    assert_eq!((s, u.2), (0xff, 0));
    // Straddling the end of RAM.
    let (_, _, s) = run_request(
        &fx,
        false,
        VIRTIO_BLK_T_IN,
        0,
        desc((16 << 20) - 256, 512, W | NEXT, 2),
    );
    assert_eq!(s, VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn header_in_a_writable_descriptor_is_refused() {
    let fx = image();
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let q = queue_with(
        &mq,
        &[
            desc(HDR, 16, W | NEXT, 1),
            desc(DATA, 512, W | NEXT, 2),
            desc(STATUS, 1, W, 0),
        ],
    );
    let (mut w, _) = worker(&fx, false, &mem, q);
    w.process_queue();
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR as u8);
    // The "header" buffer was not filled with disk data.
    let mut b = [0u8; 4];
    mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert_eq!(b, [0; 4]);
}

#[test]
fn chains_without_a_status_byte_or_looping_are_dropped() {
    let fx = image();
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    header(&mem, VIRTIO_BLK_T_IN, 0);
    // Chain 0: no writable descriptor. Chain 1 (head 1): loops 1 -> 2 -> 1.
    // Chain 2 (head 3): a good read that must still be served afterwards.
    mq.add_desc_chains(&[desc(HDR, 16, 0, 0)], 0).unwrap();
    mq.add_desc_chains(&[desc(HDR, 16, NEXT, 2), desc(DATA, 512, W | NEXT, 1)], 1)
        .unwrap();
    mq.add_desc_chains(
        &[
            desc(HDR, 16, NEXT, 4),
            desc(DATA, 512, W | NEXT, 5),
            desc(STATUS, 1, W, 0),
        ],
        3,
    )
    .unwrap();
    let q: Queue = mq.create_queue().unwrap();
    let (mut w, irq) = worker(&fx, false, &mem, q);
    w.process_queue();
    assert_eq!(used(&mem, &mq, 0), (3, 0, 0));
    // The loop's last descriptor is writable, so it still gets its IOERR.
    assert_eq!(used(&mem, &mq, 1).1, 1);
    assert_eq!(used(&mem, &mq, 2), (3, 3, 513));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
    assert!(!irq.needs_reset());
}

#[test]
fn avail_index_far_ahead_breaks_the_device_not_the_vmm() {
    let fx = image();
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let q = queue_with(&mq, &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, W, 0)]);
    mem.write_obj(40u16, mq.avail_addr().unchecked_add(2))
        .unwrap();
    let (mut w, irq) = worker(&fx, false, &mem, q);
    w.process_queue();
    assert!(irq.needs_reset());
    assert_eq!(used(&mem, &mq, 0).0, 0, "nothing was processed");
    w.process_queue();
    assert_eq!(used(&mem, &mq, 0).0, 0);
}

#[test]
fn head_index_out_of_range_breaks_the_device() {
    let fx = image();
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let q = queue_with(&mq, &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, W, 0)]);
    // Avail ring entry 0 names descriptor 200 of a 16-entry table.
    mem.write_obj(200u16, mq.avail_addr().unchecked_add(4))
        .unwrap();
    let (mut w, irq) = worker(&fx, false, &mem, q);
    w.process_queue();
    assert!(irq.needs_reset());
}

#[test]
fn device_offers_and_describes_itself() {
    let fx = image();
    let cfg = BlockConfig {
        id: "a-very-long-disk-identifier".into(),
        path: fx.path.clone(),
        readonly: true,
    };
    let b = Block::new(&cfg).unwrap();
    assert_eq!(b.device_type(), 2);
    assert_eq!(b.capacity_sectors(), 8);
    assert_ne!(b.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(b.features() & VIRTIO_F_VERSION_1, 0);
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    let mut far = [0xffu8; 4];
    b.read_config(0x1000, &mut far);
    assert_eq!(far, [0; 4]);
    assert_eq!(&b.disk_id, b"a-very-long-disk-ide");
    let missing = BlockConfig {
        path: "/nonexistent/disk.img".into(),
        ..cfg
    };
    assert!(matches!(Block::new(&missing), Err(BlockError::Open { .. })));
}

/// The disk's worker parks on quiesce (its queue's progress handed over), serves nothing while
/// parked, goes on with resume, and is stopped by a restore so that resume says there is none.
#[test]
fn quiesce_parks_the_disk_worker_resume_lets_it_go_on_and_restore_stops_it() {
    use crate::virtio::device::{ActivateContext, ActiveQueue};
    use std::time::{Duration, Instant};
    let fx = image();
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    let mut dev = Block::new(&BlockConfig {
        id: "bk0".into(),
        path: fx.path.clone(),
        readonly: false,
    })
    .unwrap();
    let notify = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    // A GET_ID request (descriptors 0-2), another one (3-5) added later.
    let request = |first: u16| {
        [
            desc(HDR, 16, NEXT, first + 1),
            desc(DATA, 20, W | NEXT, first + 2),
            desc(STATUS, 1, W, 0),
        ]
    };
    mq.add_desc_chains(&request(0), 0).unwrap();
    let interrupt = Arc::new(Interrupt::new(
        EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
    ));
    dev.activate(ActivateContext {
        mem: mem.clone(),
        interrupt,
        queues: vec![ActiveQueue {
            queue: mq.create_queue().unwrap(),
            notify: notify.try_clone().unwrap(),
        }],
        acked_features: VIRTIO_F_VERSION_1,
    })
    .unwrap();
    let served = |n: u16| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while used(&mem, &mq, 0).0 != n {
            assert!(Instant::now() < deadline, "request {n} never served");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    served(1);

    let q = dev.quiesce().expect("a parked worker hands over its queue");
    assert_eq!((q[0].next_avail(), q[0].next_used()), (1, 1));
    mq.add_desc_chains(&request(3), 3).unwrap();
    notify.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(used(&mem, &mq, 0).0, 1, "a parked worker serves nothing");
    assert!(dev.resume(), "the parked worker goes on");
    served(2);
    assert!(!dev.resume(), "a running worker is not parked");

    let q = dev.quiesce().unwrap();
    assert_eq!((q[0].next_avail(), q[0].next_used()), (2, 2));
    dev.restore(&DeviceSnapshot::Block).unwrap();
    assert!(!dev.resume(), "restore stopped the parked worker");
    assert!(dev.quiesce().is_none(), "and no worker is left");
    dev.reset();
}
