//! A pause for a state capture parks the device's worker and resume lets the same thread go on;
//! whatever changes the device or its queues in between gets a fresh one.

use super::*;
use crate::virtio::device::DeviceSnapshot;
use crate::virtio::ft::FtSetup;
use ft::gate::EpochClock;
use vm_memory::Bytes;

const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x8000;
const RX_BUF: u64 = 0x30_0000;

/// A NIC (worker `tandem_net_{id}`) on a datagram socket, driven up to DRIVER_OK.
struct Nic<'a> {
    t: MmioTransport,
    host: UnixDatagram,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    name: String,
    sent: u16,
}

fn nic<'a>(mem: &'a GuestMemoryMmap, id: &str) -> Nic<'a> {
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let net = Net::with_fd(id, MacAddr::from_id(id), OwnedFd::from(dev));
    let mut t = MmioTransport::new(Box::new(net), mem.clone(), irqfd()).unwrap();
    let rxq = MockSplitQueue::create(mem, GuestAddress(RX_BASE), 16);
    let txq = MockSplitQueue::create(mem, GuestAddress(TX_BASE), 16);
    let features = VIRTIO_F_VERSION_1 | 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
    assert_eq!(negotiate(&mut t, features), ACK | DRV | FOK);
    setup_queue(&mut t, 0, &rxq, 16);
    setup_queue(&mut t, 1, &txq, 16);
    w(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert!(t.is_activated());
    Nic {
        t,
        host,
        rxq,
        txq,
        name: format!("tandem_net_{id}"),
        sent: 0,
    }
}

impl Nic<'_> {
    /// The guest queues a 64-byte frame and kicks TX.
    fn queue_tx(&mut self) {
        let i = self.sent * 2;
        self.txq
            .add_desc_chains(
                &[desc(0x10_0000, 12, NEXT, i + 1), desc(0x20_0000, 64, 0, 0)],
                i,
            )
            .unwrap();
        self.sent += 1;
        w(&mut self.t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    }

    /// The next frame on the host side, within 5 s.
    fn recv(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 128];
        loop {
            match self.host.recv(&mut buf) {
                Ok(n) => return n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no frame");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn nothing_sent(&self) -> bool {
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 128];
        self.host.recv(&mut buf).is_err()
    }

    /// The kernel id of the worker thread, waiting up to 5 s for one (a new thread names
    /// itself only once it runs).
    fn running_tid(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(tid) = self.worker_tid() {
                return tid;
            }
            assert!(Instant::now() < deadline, "no worker runs");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether the worker thread is gone, waiting up to 5 s for /proc to drop a thread just
    /// joined (the join returns when the thread is done with its memory, a bit before that).
    fn worker_gone(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.worker_tid().is_some() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// The kernel id of the worker thread, if one runs.
    fn worker_tid(&self) -> Option<String> {
        std::fs::read_dir("/proc/self/task").unwrap().find_map(|t| {
            let t = t.unwrap();
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            (comm.trim() == self.name).then(|| t.file_name().to_string_lossy().into_owned())
        })
    }

    /// TX progress in the transport's copy (call while quiesced).
    fn tx_progress(&self) -> (u16, u16) {
        let q = &self.t.state().queues[1];
        (q.next_avail, q.next_used)
    }
}

#[test]
fn quiesce_parks_the_worker_and_resume_lets_the_same_thread_go_on() {
    let mem = memory();
    let mut n = nic(&mem, "pk0");
    n.queue_tx();
    assert_eq!(n.recv(), 76);
    let tid = n.running_tid();

    n.t.quiesce();
    // The snapshot sees the worker's progress; the thread is still there, parked.
    assert_eq!(n.tx_progress(), (1, 1));
    assert_eq!(n.worker_tid().as_ref(), Some(&tid));
    // A parked worker does nothing: a frame queued now waits for resume.
    n.queue_tx();
    assert!(n.nothing_sent(), "a parked worker sent a frame");
    assert_eq!(n.tx_progress(), (1, 1));

    n.t.resume();
    assert!(n.t.is_activated());
    assert_eq!(n.recv(), 76, "the kick made while parked is served");
    assert_eq!(n.worker_tid(), Some(tid.clone()), "the same thread went on");

    // Pause after pause: still the same thread, and each snapshot is current.
    for round in 0..3 {
        n.t.quiesce();
        assert_eq!(n.tx_progress(), (2 + round, 2 + round));
        n.t.resume();
        n.queue_tx();
        assert_eq!(n.recv(), 76);
    }
    assert_eq!(n.worker_tid(), Some(tid));
    n.t.shutdown();
    assert!(n.worker_gone(), "shutdown joined the worker");
}

#[test]
fn a_frame_held_by_a_parked_worker_is_in_the_snapshot_and_delivered_once_after_resume() {
    let mem = memory();
    let mut n = nic(&mem, "pk1");
    // A frame arrives while the guest has no RX buffer: the worker reads it and holds it.
    n.host.send(&[7u8; 72]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        n.t.quiesce();
        match n.t.state().device {
            DeviceSnapshot::Net {
                held_frame: Some(f),
                ..
            } => {
                assert_eq!(f, vec![7u8; 72]);
                break;
            }
            DeviceSnapshot::Net {
                held_frame: None, ..
            } => {}
            other => panic!("{other:?}"),
        }
        n.t.resume();
        assert!(Instant::now() < deadline, "the worker never read the frame");
        std::thread::sleep(Duration::from_millis(1));
    }
    let tid = n.worker_tid();
    n.t.resume();
    // The guest gives a buffer: the frame the worker kept arrives, once.
    n.rxq
        .add_desc_chains(&[desc(RX_BUF, 2048, W, 0)], 0)
        .unwrap();
    w(&mut n.t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        n.t.quiesce();
        let s = n.t.state();
        if s.queues[0].next_used == 1 {
            assert!(matches!(
                s.device,
                DeviceSnapshot::Net {
                    held_frame: None,
                    ..
                }
            ));
            break;
        }
        n.t.resume();
        assert!(Instant::now() < deadline, "the held frame never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut frame = [0u8; 60];
    mem.read_slice(&mut frame, GuestAddress(RX_BUF + 12))
        .unwrap();
    assert_eq!(frame, [7u8; 60]);
    assert_eq!(n.worker_tid(), tid, "the same thread all along");
    n.t.shutdown();
}

#[test]
fn a_restore_or_an_ft_gate_while_quiesced_gets_a_fresh_worker_from_the_saved_state() {
    let mem = memory();
    let mut n = nic(&mem, "pk2");
    n.queue_tx();
    assert_eq!(n.recv(), 76);
    let first = n.running_tid();

    // Restore (here, of what the snapshot says now): the parked worker is stopped at once
    // and resume starts a new one from the restored queues.
    n.t.quiesce();
    let saved = n.t.state();
    n.t.restore(&saved).unwrap();
    assert!(n.worker_gone(), "restore stopped the parked worker");
    n.t.resume();
    let second = n.running_tid();
    assert_ne!(second, first);
    n.queue_tx();
    assert_eq!(
        n.recv(),
        76,
        "the new worker goes on from the saved progress"
    );
    n.t.quiesce();
    assert_eq!(n.tx_progress(), (2, 2));

    // An FT gate: the parked worker (with its ungated sink) stops; a gated one starts.
    let setup = FtSetup::new(
        Arc::new(EpochClock::new()),
        crate::virtio::block::gate::DiskMode::Shared,
    );
    assert!(n.t.enable_ft(&setup, 0).unwrap().is_some());
    assert!(n.worker_gone(), "enable_ft stopped the parked worker");
    n.t.resume();
    let third = n.running_tid();
    assert_ne!(third, second);
    n.t.quiesce();
    assert_eq!(n.tx_progress(), (2, 2));
    n.t.resume();
    assert_eq!(n.worker_tid(), Some(third));
    n.t.shutdown();
}

#[test]
fn a_reset_while_quiesced_stops_the_parked_worker_for_good() {
    let mem = memory();
    let mut n = nic(&mem, "pk3");
    n.queue_tx();
    assert_eq!(n.recv(), 76);
    n.t.quiesce();
    assert!(n.worker_tid().is_some());
    w(&mut n.t, VIRTIO_MMIO_STATUS, 0);
    assert!(n.worker_gone(), "the reset joined the parked worker");
    n.t.resume();
    assert!(!n.t.is_activated(), "nothing restarts a reset device");
    assert!(n.worker_gone());

    // FAILED while quiesced, and a drop while parked, join the worker too.
    let mut n = nic(&mem, "pk4");
    n.t.quiesce();
    w(
        &mut n.t,
        VIRTIO_MMIO_STATUS,
        ACK | DRV | FOK | DOK | VIRTIO_CONFIG_S_FAILED,
    );
    assert!(n.worker_gone(), "FAILED joined the parked worker");
    n.t.resume();
    assert!(!n.t.is_activated());
    let mut n = nic(&mem, "pk5");
    n.t.quiesce();
    // Swap in another transport to drop this one (and its parked worker) alone.
    drop(std::mem::replace(&mut n.t, dummy(&mem, false).0));
    assert!(n.worker_gone(), "dropping joined the parked worker");
}
