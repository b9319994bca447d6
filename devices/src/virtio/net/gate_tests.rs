//! The TX gate on its own, against a sink that records what reached the wire.

use super::*;

#[derive(Clone, Default)]
struct Wire(Arc<Mutex<Vec<Vec<u8>>>>);

impl TxSink for Wire {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
}

impl Wire {
    fn frames(&self) -> Vec<u8> {
        self.0.lock().unwrap().iter().map(|f| f[0]).collect()
    }
}

fn gate(cap: usize) -> (Arc<EpochClock>, TxGate, Wire) {
    let clock = Arc::new(EpochClock::new());
    let wire = Wire::default();
    let g = TxGate::new("net0", clock.clone(), Box::new(wire.clone()), cap).unwrap();
    (clock, g, wire)
}

fn step(clock: &EpochClock, g: &TxGate, commit: Option<u64>) {
    if let Some(n) = commit {
        clock.commit(n).unwrap();
    }
    g.pump(clock);
}

#[test]
fn off_passes_frames_straight_through() {
    let (_clock, g, wire) = gate(1 << 20);
    g.send(&[1]).unwrap();
    g.send(&[2]).unwrap();
    assert_eq!(wire.frames(), [1, 2]);
    assert_eq!(g.counters().held_frames.load(Ordering::Relaxed), 0);
    assert_eq!(g.counters().released_frames.load(Ordering::Relaxed), 2);
}

#[test]
fn frames_wait_for_their_epoch_and_leave_in_order() {
    let (clock, g, wire) = gate(1 << 20);
    clock.protect().unwrap();
    g.send(&[1]).unwrap();
    g.send(&[2]).unwrap();
    assert_eq!(clock.capture(), Ok(1));
    g.send(&[3]).unwrap();
    assert_eq!(clock.capture(), Ok(2));
    g.send(&[4]).unwrap();
    step(&clock, &g, None);
    assert!(wire.frames().is_empty(), "nothing is committed");
    step(&clock, &g, Some(1));
    assert_eq!(wire.frames(), [1, 2]);
    step(&clock, &g, Some(2));
    assert_eq!(wire.frames(), [1, 2, 3]);
    let c = g.counters();
    assert_eq!(c.held_frames.load(Ordering::Relaxed), 1);
    assert_eq!(c.held_bytes.load(Ordering::Relaxed), 1);
    assert_eq!(c.released_frames.load(Ordering::Relaxed), 3);
}

#[test]
fn frames_wait_for_every_disk_to_be_durable() {
    let (clock, g, wire) = gate(1 << 20);
    let disk = clock.register_durability();
    clock.protect().unwrap();
    g.send(&[1]).unwrap();
    clock.capture().unwrap();
    step(&clock, &g, Some(1));
    assert!(wire.frames().is_empty(), "committed but not durable");
    clock.mark_durable(disk, 1).unwrap();
    step(&clock, &g, None);
    assert_eq!(wire.frames(), [1]);
}

#[test]
fn unprotected_releases_everything_and_stops_holding() {
    let (clock, g, wire) = gate(1 << 20);
    clock.protect().unwrap();
    g.send(&[1]).unwrap();
    clock.capture().unwrap();
    g.send(&[2]).unwrap();
    clock.unprotect().unwrap();
    // A frame sent before the releaser ran still leaves after the held ones.
    g.send(&[3]).unwrap();
    assert_eq!(wire.frames(), [1, 2, 3]);
    step(&clock, &g, None);
    assert_eq!(wire.frames(), [1, 2, 3]);
}

#[test]
fn halted_releases_nothing_and_drops_nothing() {
    let (clock, g, wire) = gate(1 << 20);
    clock.protect().unwrap();
    g.send(&[1]).unwrap();
    clock.capture().unwrap();
    clock.halt();
    g.send(&[2]).unwrap();
    step(&clock, &g, None);
    assert!(wire.frames().is_empty());
    assert_eq!(g.counters().held_frames.load(Ordering::Relaxed), 2);
}

#[test]
fn a_full_gate_pushes_back_and_wakes_when_released() {
    let (clock, g, wire) = gate(3);
    clock.protect().unwrap();
    g.send(&[1, 1]).unwrap();
    assert!(g.has_room());
    g.send(&[2, 2]).unwrap();
    assert!(!g.has_room(), "4 bytes held, cap 3");
    assert_eq!(g.counters().full.load(Ordering::Relaxed), 1);
    let mut v = [0u8; 8];
    // SAFETY: an 8-byte read from the gate's eventfd into a local buffer.
    let n = unsafe { libc::read(g.room_fd(), v.as_mut_ptr() as *mut libc::c_void, 8) };
    assert_eq!(n, -1, "no wakeup while full");
    clock.capture().unwrap();
    step(&clock, &g, Some(1));
    assert!(g.has_room());
    assert_eq!(wire.frames(), [1, 2]);
    // SAFETY: as above.
    let n = unsafe { libc::read(g.room_fd(), v.as_mut_ptr() as *mut libc::c_void, 8) };
    assert_eq!(n, 8);
}

#[test]
fn release_errors_are_counted_not_retried_forever() {
    struct Broken;
    impl TxSink for Broken {
        fn send(&mut self, _: &[u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ENOBUFS))
        }
    }
    let clock = Arc::new(EpochClock::new());
    let g = TxGate::new("net0", clock.clone(), Box::new(Broken), 100).unwrap();
    clock.protect().unwrap();
    g.send(&[1]).unwrap();
    clock.capture().unwrap();
    step(&clock, &g, Some(1));
    assert_eq!(g.counters().release_errors.load(Ordering::Relaxed), 1);
    assert_eq!(g.counters().held_frames.load(Ordering::Relaxed), 0);
}

#[test]
fn settling_releases_what_an_unprotected_clock_allows_and_drops_what_a_halted_one_never_will() {
    let (clock, g, wire) = gate(1 << 20);
    clock.protect().unwrap();
    g.send(&[1]).unwrap();
    g.send(&[2]).unwrap();
    // The pair ended as asked; nothing pumps any more (the releaser is gone): settling sends.
    clock.unprotect().unwrap();
    g.settle("the VM stops");
    assert_eq!(wire.frames(), [1, 2]);

    let (clock, g, wire) = gate(1 << 20);
    clock.protect().unwrap();
    g.send(&[3]).unwrap();
    clock.halt();
    g.settle("the VM stops");
    assert!(
        wire.frames().is_empty(),
        "a halted member's output never leaves"
    );
    assert_eq!(g.counters().held_frames.load(Ordering::Relaxed), 0);
    assert_eq!(g.counters().held_bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_protected_primary_sends_committed_frames_only_under_its_lease() {
    let (clock, g, wire) = gate(1 << 20);
    clock
        .lease()
        .set_terms(ft::gate::LeaseTerms::for_failure_timeout(
            std::time::Duration::from_millis(40),
        ));
    clock.protect().unwrap();
    g.send(&[1]).unwrap();
    assert_eq!(clock.capture(), Ok(1));
    // Committed, but the ack that renewed the lease was sent long ago (a primary stopped
    // past its timeout): the frame stays held.
    clock.lease().renew(std::time::Instant::now());
    std::thread::sleep(std::time::Duration::from_millis(60));
    step(&clock, &g, Some(1));
    assert!(wire.frames().is_empty(), "sent without a lease");
    assert_eq!(g.counters().held_frames.load(Ordering::Relaxed), 1);
    // A fresh ack renews it: the frame leaves.
    clock.lease().renew(std::time::Instant::now());
    step(&clock, &g, None);
    assert_eq!(wire.frames(), [1]);
    // Halted with frames held: they are dropped, never sent.
    g.send(&[2]).unwrap();
    assert_eq!(clock.capture(), Ok(2));
    clock.halt();
    g.settle("test");
    assert_eq!(wire.frames(), [1]);
}
