//! virtio-net against crafted queues and a datagram socket pair standing in for the tap (one
//! frame per read/write, 12-byte vnet header first, just like a tap).

use super::gate::{GatedTxSink, TxGate};
use super::tap::VNET_HDR_LEN;
use super::tx::TxSink;
use super::worker::{NetWorker, RxState};
use super::*;
use crate::virtio::chain::test_util::*;
use crate::virtio::device::Interrupt;
use crate::virtio::GuestMemoryMmap;
use ft::gate::EpochClock;
use std::os::unix::net::UnixDatagram;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x8000;
const BUF: u64 = 0x10_0000;
const BUF2: u64 = 0x20_0000;

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    worker: NetWorker,
    host: UnixDatagram,
    irq: Arc<Interrupt>,
    counters: Arc<NetCounters>,
}

fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
    rig_with(mem, |fd| Box::new(TapTxSink::new(fd)))
}

/// A rig whose TX goes through `make_sink(tap fd)`.
fn rig_with(mem: &GuestMemoryMmap, make_sink: impl FnOnce(OwnedFd) -> Box<dyn TxSink>) -> Rig<'_> {
    let rxq = MockSplitQueue::create(mem, GuestAddress(RX_BASE), 16);
    let txq = MockSplitQueue::create(mem, GuestAddress(TX_BASE), 16);
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let dev = OwnedFd::from(dev);
    let sink = make_sink(dev.try_clone().unwrap());
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let counters = Arc::new(NetCounters::default());
    let worker = NetWorker::new(
        mem.clone(),
        irq.clone(),
        rxq.create_queue().unwrap(),
        txq.create_queue().unwrap(),
        dev,
        sink,
        counters.clone(),
    );
    Rig {
        mem,
        rxq,
        txq,
        worker,
        host,
        irq,
        counters,
    }
}

/// A frame as the tap delivers it: a header with DATA_VALID set, then `len` bytes of `fill`.
fn tap_frame(len: usize, fill: u8) -> Vec<u8> {
    let mut v = vec![0u8; VNET_HDR_LEN];
    v[0] = 2;
    v.extend(std::iter::repeat_n(fill, len));
    v
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[test]
fn rx_delivers_frames_behind_a_clean_header() {
    let mem = memory();
    let mut r = rig(&mem);
    r.rxq.add_desc_chains(&[desc(BUF, 2048, W, 0)], 0).unwrap();
    r.host.send(&tap_frame(60, 0x5a)).unwrap();
    assert_eq!(r.worker.process_rx(), RxState::WaitForTap);
    assert_eq!(used(r.mem, &r.rxq, 0), (1, 0, 72));
    let mut got = [0u8; 72];
    mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(&got[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert!(got[12..].iter().all(|&b| b == 0x5a));
    let region = mem.find_region(GuestAddress(BUF)).unwrap();
    assert!(region
        .bitmap()
        .dirty_at((BUF - region.start_addr().0) as usize));
    assert_eq!(r.irq.status() & 1, 1);
    assert_eq!(count(&r.counters.rx_frames), 1);
}

#[test]
fn rx_waits_for_buffers_instead_of_dropping() {
    let mem = memory();
    let mut r = rig(&mem);
    r.host.send(&tap_frame(100, 1)).unwrap();
    r.host.send(&tap_frame(100, 2)).unwrap();
    assert_eq!(r.worker.process_rx(), RxState::WaitForBuffers);
    r.rxq
        .add_desc_chains(&[desc(BUF, 2048, W, 0), desc(BUF2, 2048, W, 0)], 0)
        .unwrap();
    assert_eq!(r.worker.process_rx(), RxState::WaitForTap);
    assert_eq!(used(r.mem, &r.rxq, 1), (2, 1, 112));
    let (a, b): (u8, u8) = (
        mem.read_obj(GuestAddress(BUF + 12)).unwrap(),
        mem.read_obj(GuestAddress(BUF2 + 12)).unwrap(),
    );
    assert_eq!((a, b), (1, 2));
    assert_eq!(count(&r.counters.rx_dropped), 0);
}

#[test]
fn rx_returns_bad_chains_unused_and_keeps_the_frame() {
    let mem = memory();
    let mut r = rig(&mem);
    // Chain 0 is device-readable (wrong direction), chain 1 lies outside RAM, chain 2 is tiny,
    // chain 3 is good.
    r.rxq
        .add_desc_chains(
            &[
                desc(BUF, 2048, 0, 0),
                desc(0x4000_0000, 2048, W, 0),
                desc(BUF, 8, W, 0),
                desc(BUF2, 2048, W, 0),
            ],
            0,
        )
        .unwrap();
    r.host.send(&tap_frame(60, 7)).unwrap();
    assert_eq!(r.worker.process_rx(), RxState::WaitForTap);
    for i in 0..3 {
        assert_eq!(used(r.mem, &r.rxq, i).2, 0);
    }
    assert_eq!(used(r.mem, &r.rxq, 3), (4, 3, 72));
    let b: u8 = mem.read_obj(GuestAddress(BUF2 + 12)).unwrap();
    assert_eq!(b, 7);
    let untouched: u8 = mem.read_obj(GuestAddress(BUF)).unwrap();
    assert_eq!(untouched, 0);
}

#[test]
fn rx_drops_a_frame_too_big_for_any_buffer_and_keeps_the_buffer() {
    let mem = memory();
    let mut r = rig(&mem);
    r.rxq.add_desc_chains(&[desc(BUF, 1526, W, 0)], 0).unwrap();
    r.host.send(&tap_frame(4000, 1)).unwrap();
    r.host.send(&tap_frame(60, 2)).unwrap();
    assert_eq!(r.worker.process_rx(), RxState::WaitForTap);
    assert_eq!(used(r.mem, &r.rxq, 0), (1, 0, 72));
    assert_eq!(count(&r.counters.rx_dropped), 1);
}

#[test]
fn rx_avail_index_far_ahead_breaks_the_device_not_the_vmm() {
    let mem = memory();
    let mut r = rig(&mem);
    mem.write_obj(100u16, r.rxq.avail_addr().unchecked_add(2))
        .unwrap();
    r.host.send(&tap_frame(60, 2)).unwrap();
    assert_eq!(r.worker.process_rx(), RxState::WaitForTap);
    assert!(r.irq.needs_reset());
    assert_eq!(used(r.mem, &r.rxq, 0).0, 0);
}

#[test]
fn tx_sends_the_frame_without_the_guest_header() {
    let mem = memory();
    let mut r = rig(&mem);
    // The guest asks for checksum offload it never negotiated; the header must not pass.
    mem.write_slice(&[1u8; 12], GuestAddress(BUF)).unwrap();
    mem.write_slice(&[0x42; 100], GuestAddress(BUF2)).unwrap();
    r.txq
        .add_desc_chains(&[desc(BUF, 12, NEXT, 1), desc(BUF2, 100, 0, 0)], 0)
        .unwrap();
    r.worker.process_tx();
    assert_eq!(used(r.mem, &r.txq, 0), (1, 0, 0));
    let mut got = [0u8; 200];
    let n = r.host.recv(&mut got).unwrap();
    assert_eq!(n, 112);
    assert_eq!(&got[..12], &[0; 12]);
    assert!(got[12..112].iter().all(|&b| b == 0x42));
    assert_eq!(count(&r.counters.tx_frames), 1);
}

#[test]
fn tx_drops_hostile_chains_and_goes_on() {
    let mem = memory();
    let mut r = rig(&mem);
    // The mock starts a new chain only after a descriptor without NEXT, so add them one by one.
    let chains: [(&[_], u16); 6] = [
        // Writable descriptor in a TX chain.
        (&[desc(BUF, 112, W, 0)], 0),
        // Outside RAM.
        (&[desc(0x4000_0000, 112, 0, 0)], 1),
        // A loop 2 -> 3 -> 2.
        (&[desc(BUF, 12, NEXT, 3), desc(BUF, 12, NEXT, 2)], 2),
        // Header only, no frame.
        (&[desc(BUF, 12, 0, 0)], 4),
        // Absurd length.
        (&[desc(BUF, u32::MAX, 0, 0)], 5),
        // Good.
        (&[desc(BUF2, 72, 0, 0)], 6),
    ];
    for (descs, at) in chains {
        r.txq.add_desc_chains(descs, at).unwrap();
    }
    r.worker.process_tx();
    assert_eq!(used(r.mem, &r.txq, 0).0, 6);
    let mut got = [0u8; 200];
    assert_eq!(r.host.recv(&mut got).unwrap(), 72);
    assert!(r.host.recv(&mut got).is_err(), "only the good frame left");
    assert_eq!(count(&r.counters.tx_dropped), 5);
    assert!(!r.irq.needs_reset());
}

#[test]
fn macs_parse_print_and_derive() {
    let m: MacAddr = "52:54:00:ab:CD:0f".parse().unwrap();
    assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
    assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
    for bad in [
        "",
        "52:54:00:ab:cd",
        "52:54:00:ab:cd:0f:00",
        "5:54:00:ab:cd:0f",
        "zz:54:00:ab:cd:0f",
    ] {
        assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
    }
    let a = MacAddr::from_id("net0");
    assert_eq!(a, MacAddr::from_id("net0"));
    assert_ne!(a, MacAddr::from_id("net1"));
    assert!(!a.is_multicast());
    assert_eq!(a.0[0] & 2, 2, "locally administered");
    assert!("ff:ff:ff:ff:ff:ff"
        .parse::<MacAddr>()
        .unwrap()
        .is_multicast());
}

/// A rig whose TX passes through an FT gate with `cap` bytes, on a protected clock.
fn gated_rig(mem: &GuestMemoryMmap, cap: usize) -> (Rig<'_>, Arc<EpochClock>, Arc<TxGate>) {
    let clock = Arc::new(EpochClock::new());
    clock.protect().unwrap();
    let mut gate = None;
    let r = rig_with(mem, |fd| {
        let g = Arc::new(
            TxGate::new("net0", clock.clone(), Box::new(TapTxSink::new(fd)), cap).unwrap(),
        );
        gate = Some(g.clone());
        Box::new(GatedTxSink(g))
    });
    (r, clock, gate.unwrap())
}

#[test]
fn gated_tx_completes_to_the_guest_at_once_and_holds_the_wire() {
    let mem = memory();
    let (mut r, clock, gate) = gated_rig(&mem, 1 << 20);
    mem.write_slice(&[0x42; 100], GuestAddress(BUF2)).unwrap();
    r.txq.add_desc_chains(&[desc(BUF2, 112, 0, 0)], 0).unwrap();
    r.worker.process_tx();
    // The guest has its descriptor back and an interrupt...
    assert_eq!(used(r.mem, &r.txq, 0), (1, 0, 0));
    assert_eq!(count(&r.counters.tx_frames), 1);
    // ...but nothing is on the wire before epoch 1 commits.
    let mut got = [0u8; 200];
    assert!(r.host.recv(&mut got).is_err());
    clock.capture().unwrap();
    ft::gate::OutputGate::pump(&*gate, &clock);
    assert!(r.host.recv(&mut got).is_err(), "captured is not committed");
    clock.commit(1).unwrap();
    ft::gate::OutputGate::pump(&*gate, &clock);
    assert_eq!(r.host.recv(&mut got).unwrap(), 112);
}

#[test]
fn a_full_gate_leaves_tx_chains_in_the_ring_until_release() {
    let mem = memory();
    // Room for one 100-byte frame: the second chain waits.
    let (mut r, clock, gate) = gated_rig(&mem, 100);
    r.txq.add_desc_chains(&[desc(BUF2, 112, 0, 0)], 0).unwrap();
    r.txq.add_desc_chains(&[desc(BUF2, 112, 0, 0)], 1).unwrap();
    r.worker.process_tx();
    assert_eq!(used(r.mem, &r.txq, 0).0, 1);
    assert!(!gate.has_room());
    assert_eq!(count(&r.counters.tx_dropped), 0);
    clock.capture().unwrap();
    clock.commit(1).unwrap();
    ft::gate::OutputGate::pump(&*gate, &clock);
    // The release wakes the worker through the room eventfd.
    let mut v = [0u8; 8];
    // SAFETY: an 8-byte read from the gate's eventfd into a local buffer.
    let n = unsafe { libc::read(gate.room_fd(), v.as_mut_ptr() as *mut libc::c_void, 8) };
    assert_eq!(n, 8);
    r.worker.process_tx();
    assert_eq!(used(r.mem, &r.txq, 0).0, 2);
    assert_eq!(count(&r.counters.tx_dropped), 0);
}
