//! Activation off the vCPU thread (a DRIVER_OK that only asks, and what overtakes the request)
//! and a device worker that panics.

use super::*;

/// Drives `t` (queues at `q0`/`q1`) up to DRIVER_OK.
fn driver_ok(
    t: &mut MmioTransport,
    q0: &MockSplitQueue<GuestMemoryMmap>,
    q1: &MockSplitQueue<GuestMemoryMmap>,
) {
    assert_eq!(negotiate(t, VIRTIO_F_VERSION_1), ACK | DRV | FOK);
    setup_queue(t, 0, q0, 16);
    setup_queue(t, 1, q1, 8);
    w(t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
}

/// A notifier that counts its calls.
fn counting_notifier(t: &mut MmioTransport) -> Arc<std::sync::atomic::AtomicUsize> {
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = n.clone();
    t.set_activation_notifier(Box::new(move || {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    n
}

#[test]
fn with_a_notifier_driver_ok_only_asks_for_the_activation() {
    let mem = memory();
    let (mut t, calls) = dummy(&mem, false);
    let asked = counting_notifier(&mut t);
    let q0 = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let q1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), 8);
    driver_ok(&mut t, &q0, &q1);
    // The driver sees DRIVER_OK at once; the device has not started on this (vCPU) thread.
    assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), ACK | DRV | FOK | DOK);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(t.is_activation_pending());
    assert!(!t.is_activated());
    assert!(calls.lock().unwrap().activations.is_empty());
    // The owner's thread runs it; a repeated or late call does nothing.
    t.activate_pending();
    assert!(t.is_activated() && !t.is_activation_pending());
    t.activate_pending();
    assert_eq!(calls.lock().unwrap().activations.len(), 1);
}

#[test]
fn a_reset_or_a_quiesce_overtakes_a_pending_activation() {
    let mem = memory();
    let q0 = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let q1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), 8);

    // Reset before the VMM thread got to it: nothing starts.
    let (mut t, calls) = dummy(&mem, false);
    counting_notifier(&mut t);
    driver_ok(&mut t, &q0, &q1);
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    t.activate_pending();
    assert!(!t.is_activated());
    assert!(calls.lock().unwrap().activations.is_empty());

    // The driver stops a queue before it: nothing starts either.
    let (mut t, calls) = dummy(&mem, false);
    counting_notifier(&mut t);
    driver_ok(&mut t, &q0, &q1);
    w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    w(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    t.activate_pending();
    assert!(calls.lock().unwrap().activations.is_empty());

    // A pause (state capture) takes the request over: the snapshot says the device runs, the
    // late activation does nothing, and resume starts the device (on the resuming thread).
    let (mut t, calls) = dummy(&mem, false);
    counting_notifier(&mut t);
    driver_ok(&mut t, &q0, &q1);
    t.quiesce();
    assert!(t.state().activated, "a snapshot restores it as running");
    t.activate_pending();
    assert!(calls.lock().unwrap().activations.is_empty());
    t.resume();
    assert_eq!(calls.lock().unwrap().activations.len(), 1);
    assert!(t.is_activated());
}

/// A device whose worker panics when its first queue is notified, as a bug would.
struct Panicky {
    worker: Option<crate::virtio::worker::Worker<Vec<virtio_queue::Queue>>>,
}

impl VirtioDevice for Panicky {
    fn device_type(&self) -> u32 {
        43
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        use vmm_sys_util::epoll::{EpollEvent, EventSet};
        let mut queues = ctx.queues;
        let notify = queues.remove(0).notify;
        let body = move |ep: crate::virtio::worker::WorkerEpoll<Vec<virtio_queue::Queue>>| {
            use std::os::fd::AsRawFd;
            ep.add(notify.as_raw_fd(), EventSet::IN, 0).unwrap();
            let mut events = vec![EpollEvent::default(); 2];
            // Never parked: its quiesce stops it.
            match ep.wait(&mut events, Vec::new) {
                Ok(Some(_)) => panic!("a bug in the device model"),
                _ => queues.into_iter().map(|q| q.queue).collect(),
            }
        };
        self.worker = Some(
            crate::virtio::worker::Worker::spawn("tandem_test_panicky".into(), ctx.interrupt, body)
                .map_err(ActivateError::Worker)?,
        );
        Ok(())
    }
    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            let _ = w.stop();
        }
    }
    fn quiesce(&mut self) -> Option<Vec<virtio_queue::Queue>> {
        self.worker.take()?.stop()
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

#[test]
fn a_worker_that_panics_leaves_its_device_broken_and_everything_else_running() {
    let mem = memory();
    let dev = Panicky { worker: None };
    let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irqfd()).unwrap();
    let q0 = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let q1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), 8);
    let before = crate::virtio::worker::panics();
    driver_ok(&mut t, &q0, &q1);
    assert!(t.is_activated());
    // The driver kicks queue 0 (no ioeventfd here: the transport forwards it).
    w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while r(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET == 0 {
        assert!(
            Instant::now() < deadline,
            "the panic never marked the device"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(crate::virtio::worker::panics() > before, "counted");
    assert_ne!(
        r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS) & 2,
        0,
        "config interrupt"
    );
    // A pause finds no worker to hand the queues back: the device stays stopped (its queues'
    // progress died with the thread) rather than restarting from stale copies.
    t.quiesce();
    let s = t.state();
    assert!(!s.activated && s.needs_reset, "{s:?}");
    t.resume();
    assert!(!t.is_activated());
    // The driver resets the device and sets it up again: it runs.
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
    driver_ok(&mut t, &q0, &q1);
    assert!(t.is_activated());
    assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), ACK | DRV | FOK | DOK);
    t.shutdown();
}
