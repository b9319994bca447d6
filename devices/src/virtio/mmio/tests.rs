//! The transport as a driver (well-behaved or not) sees it through its registers.

use super::*;
use crate::virtio::chain::test_util::*;
use crate::virtio::device::ActivateError;
use crate::virtio::net::{MacAddr, Net};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

const FEATURE_X: u64 = 1 << 3;

#[derive(Default)]
struct Calls {
    activations: Vec<(u64, usize)>,
    resets: usize,
}

struct Dummy {
    calls: Arc<Mutex<Calls>>,
    fail: bool,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | FEATURE_X
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::block::read_config_bytes(&[1, 2, 3, 4, 5, 6], offset, data);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.fail {
            return Err(ActivateError::QueueCount {
                expected: 0,
                got: ctx.queues.len(),
            });
        }
        self.calls
            .lock()
            .unwrap()
            .activations
            .push((ctx.acked_features, ctx.queues.len()));
        Ok(())
    }
    fn reset(&mut self) {
        self.calls.lock().unwrap().resets += 1;
    }
    fn quiesce(&mut self) -> Option<Vec<virtio_queue::Queue>> {
        None
    }
    fn state(&self) -> crate::virtio::device::DeviceSnapshot {
        crate::virtio::device::DeviceSnapshot::Block
    }
    fn restore(
        &mut self,
        _: &crate::virtio::device::DeviceSnapshot,
    ) -> Result<(), crate::virtio::device::DeviceStateError> {
        Ok(())
    }
}

fn irqfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

fn dummy(mem: &GuestMemoryMmap, fail: bool) -> (MmioTransport, Arc<Mutex<Calls>>) {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let d = Dummy {
        calls: calls.clone(),
        fail,
    };
    (
        MmioTransport::new(Box::new(d), mem.clone(), irqfd()).unwrap(),
        calls,
    )
}

fn r(t: &mut MmioTransport, off: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u32, v: u32) {
    t.write(u64::from(off), &v.to_le_bytes());
}

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRV: u32 = VIRTIO_CONFIG_S_DRIVER;
const FOK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DOK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;

/// Drives the status machine to FEATURES_OK acking `features`; returns the status read back.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    w(t, VIRTIO_MMIO_STATUS, ACK);
    w(t, VIRTIO_MMIO_STATUS, ACK | DRV);
    w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    w(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    w(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    w(t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK);
    r(t, VIRTIO_MMIO_STATUS)
}

/// Programs queue `index` from a mock queue and enables it.
fn setup_queue(t: &mut MmioTransport, index: u32, mq: &MockSplitQueue<GuestMemoryMmap>, size: u32) {
    w(t, VIRTIO_MMIO_QUEUE_SEL, index);
    w(t, VIRTIO_MMIO_QUEUE_NUM, size);
    for (lo, hi, a) in [
        (
            VIRTIO_MMIO_QUEUE_DESC_LOW,
            VIRTIO_MMIO_QUEUE_DESC_HIGH,
            mq.desc_table_addr(),
        ),
        (
            VIRTIO_MMIO_QUEUE_AVAIL_LOW,
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
            mq.avail_addr(),
        ),
        (
            VIRTIO_MMIO_QUEUE_USED_LOW,
            VIRTIO_MMIO_QUEUE_USED_HIGH,
            mq.used_addr(),
        ),
    ] {
        w(t, lo, a.0 as u32);
        w(t, hi, (a.0 >> 32) as u32);
    }
    w(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

#[test]
fn identity_and_config_space() {
    let mem = memory();
    let (mut t, _) = dummy(&mem, false);
    assert_eq!(r(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
    assert_eq!(r(&mut t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
    assert_eq!(r(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 0);
    let mut b = [0u8; 2];
    t.read(0x102, &mut b);
    assert_eq!(b, [3, 4]);
    assert_eq!(r(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
}

#[test]
fn features_are_negotiated() {
    let mem = memory();
    let (mut t, _) = dummy(&mem, false);
    w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), FEATURE_X as u32);
    w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
    w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
    assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);

    // Without VERSION_1 (a legacy driver) FEATURES_OK does not stick.
    assert_eq!(negotiate(&mut t, FEATURE_X), ACK | DRV);
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    // Unoffered features: refused.
    assert_eq!(negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 5), ACK | DRV);
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    // Bits in a feature word past 63: refused.
    w(&mut t, VIRTIO_MMIO_STATUS, ACK);
    w(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV);
    w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
    w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    assert_eq!(negotiate(&mut t, VIRTIO_F_VERSION_1), ACK | DRV);
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    // A proper subset with VERSION_1: accepted, and frozen afterwards.
    assert_eq!(
        negotiate(&mut t, VIRTIO_F_VERSION_1 | FEATURE_X),
        ACK | DRV | FOK
    );
    w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
    assert_eq!(t.acked_features, VIRTIO_F_VERSION_1 | FEATURE_X);
}

#[test]
fn status_machine_refuses_skipped_and_cleared_bits() {
    let mem = memory();
    let (mut t, calls) = dummy(&mem, false);
    // DRIVER before ACKNOWLEDGE, DRIVER_OK before FEATURES_OK: not taken.
    w(&mut t, VIRTIO_MMIO_STATUS, DRV);
    assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
    w(&mut t, VIRTIO_MMIO_STATUS, ACK);
    w(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | DOK);
    assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), ACK | DRV);
    // Clearing a bit is not a reset.
    w(&mut t, VIRTIO_MMIO_STATUS, DRV);
    assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), ACK | DRV);
    assert!(calls.lock().unwrap().activations.is_empty());
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(calls.lock().unwrap().resets, 1);
}

#[test]
fn activation_and_reset() {
    let mem = memory();
    let (mut t, calls) = dummy(&mem, false);
    let q0 = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let q1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), 8);
    assert_eq!(negotiate(&mut t, VIRTIO_F_VERSION_1), ACK | DRV | FOK);
    w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
    w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    setup_queue(&mut t, 0, &q0, 16);
    setup_queue(&mut t, 1, &q1, 8);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    w(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), ACK | DRV | FOK | DOK);
    assert!(t.is_activated());
    assert_eq!(
        calls.lock().unwrap().activations,
        vec![(VIRTIO_F_VERSION_1, 2)]
    );
    // Queue set-up registers are locked once the device runs (QueueReady=0, which stops the
    // device, has its own test).
    w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    w(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
    w(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x4000);
    w(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    assert!(t.is_activated());
    assert_eq!(calls.lock().unwrap().resets, 0);
    // Reset: everything back to the start, device told.
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert!(!t.is_activated());
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(calls.lock().unwrap().resets, 1);
}

#[test]
fn bad_queues_make_the_device_need_a_reset() {
    let mem = memory();
    // Size not a power of two.
    let (mut t, calls) = dummy(&mem, false);
    let q0 = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let q1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), 8);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, &q0, 12);
    setup_queue(&mut t, 1, &q1, 8);
    w(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert_ne!(
        r(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    assert_eq!(
        r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        VIRTIO_MMIO_INT_CONFIG
    );
    assert!(calls.lock().unwrap().activations.is_empty());
    // Larger than the maximum, and a queue left disabled.
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0, "reset clears NEEDS_RESET");
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, &q0, 32);
    w(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert_ne!(
        r(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    // Rings outside guest RAM.
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, &q0, 16);
    setup_queue(&mut t, 1, &q1, 8);
    w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    w(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    w(&mut t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0x10);
    w(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    // The driver writes back what it read, NEEDS_RESET included: still no activation.
    w(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert!(calls.lock().unwrap().activations.is_empty());
    // A device that fails to start.
    let (mut t, _) = dummy(&mem, true);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, &q0, 16);
    setup_queue(&mut t, 1, &q1, 8);
    w(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert_ne!(
        r(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    assert!(!t.is_activated());
}

#[test]
fn odd_accesses_are_ignored() {
    let mem = memory();
    let (mut t, _) = dummy(&mem, false);
    // Narrow, unaligned and out-of-window reads of registers read as zero.
    let mut b2 = [0xffu8; 2];
    t.read(0, &mut b2);
    assert_eq!(b2, [0, 0]);
    let mut b4 = [0xffu8; 4];
    t.read(2, &mut b4);
    assert_eq!(b4, [0; 4]);
    // Narrow status write, read-only register writes, queue writes before FEATURES_OK.
    t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
    assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
    w(&mut t, VIRTIO_MMIO_MAGIC_VALUE, 0);
    w(&mut t, VIRTIO_MMIO_DEVICE_ID, 7);
    assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
    w(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    // Queue selection past the last queue: harmless.
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    w(&mut t, VIRTIO_MMIO_QUEUE_SEL, u32::MAX);
    w(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
    w(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 99);
    // Config writes go to the device, which ignores them.
    t.write(0x100, &[9, 9]);
    let mut c = [0u8; 1];
    t.read(0x100, &mut c);
    assert_eq!(c, [1]);
}

#[test]
fn interrupt_status_and_ack() {
    let mem = memory();
    let (mut t, _) = dummy(&mem, false);
    t.interrupt().signal_used_queue();
    t.interrupt().signal_config();
    assert_eq!(t.interrupt().irqfd().read().unwrap(), 2);
    assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
    w(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    w(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 2);
    assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

/// A NIC driven through its registers: its worker thread starts, sends a frame on a
/// QueueNotify, and is gone after reset.
#[test]
fn net_worker_runs_from_driver_ok_to_reset() {
    let mem = memory();
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    let net = Net::with_fd("n0", MacAddr::from_id("n0"), OwnedFd::from(dev));
    let mut t = MmioTransport::new(Box::new(net), mem.clone(), irqfd()).unwrap();
    assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_ID), 1);
    let mut mac = [0u8; 6];
    t.read(0x100, &mut mac);
    assert_eq!(mac, MacAddr::from_id("n0").0);
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let features = VIRTIO_F_VERSION_1 | 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
    assert_eq!(negotiate(&mut t, features), ACK | DRV | FOK);
    setup_queue(&mut t, 0, &rxq, 16);
    setup_queue(&mut t, 1, &txq, 16);
    w(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert!(t.is_activated());
    txq.add_desc_chains(
        &[desc(0x10_0000, 12, NEXT, 1), desc(0x20_0000, 64, 0, 0)],
        0,
    )
    .unwrap();
    w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 128];
    assert_eq!(host.recv(&mut buf).unwrap(), 76);
    // The used-buffer interrupt follows.
    let deadline = Instant::now() + Duration::from_secs(5);
    while r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS) & 1 == 0 {
        assert!(Instant::now() < deadline, "no interrupt");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(thread_named("tandem_net_n0"));
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert!(!t.is_activated());
    assert!(thread_gone("tandem_net_n0"), "reset joined the worker");
}

/// Whether no thread is named `name`, waiting up to 5 s: a joined thread can stay listed in
/// /proc for a moment (the join returns when it clears its tid, before it is reaped).
fn thread_gone(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while thread_named(name) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn thread_named(name: &str) -> bool {
    std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
        let comm = std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap_or_default();
        comm.trim() == name
    })
}

#[test]
fn driver_disabling_a_queue_after_driver_ok_stops_the_device() {
    let mem = memory();
    let (mut t, calls) = dummy(&mem, false);
    let q0 = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let q1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), 8);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, &q0, 16);
    setup_queue(&mut t, 1, &q1, 8);
    w(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert!(t.is_activated());
    // Writing 1 again, or touching another queue register, changes nothing.
    w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    w(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    w(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
    assert!(t.is_activated());
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
    // The driver lets go of queue 1 and reads it back as 0 (virtio 1.x, 4.2.2.2).
    w(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert!(!t.is_activated());
    assert_eq!(calls.lock().unwrap().resets, 1);
    // Queue 0 still reads ready until the driver clears it too; that stops nothing more.
    w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    w(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(calls.lock().unwrap().resets, 1);
    // A full reset and a new setup activate the device again.
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, &q0, 16);
    setup_queue(&mut t, 1, &q1, 8);
    w(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert!(t.is_activated());
    assert_eq!(calls.lock().unwrap().activations.len(), 2);
}

mod activation;
mod park;
