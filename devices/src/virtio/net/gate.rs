//! The network output gate (DESIGN.md, output rule): while the VM is protected, every frame the
//! guest sends is queued with the epoch it was sent in and reaches the wire only once that epoch
//! is committed and durable ([`EpochClock::release_bound`]).
//!
//! As in Remus, only the wire is delayed: the worker completes the TX descriptor to the guest as
//! soon as the gate has copied the frame, so the guest never waits a checkpoint for its own TX
//! ring. Memory is bounded: when `cap_bytes` are held the gate reports no room and the worker
//! stops taking TX descriptors (the guest's ring fills and its stack backs off) until a release
//! frees space; nothing is dropped. The cap is soft by at most one frame (a frame is taken while
//! fewer than `cap_bytes` are held). A NIC without a gate (standalone) sends straight to its tap.

use super::tx::TxSink;
use ft::gate::{EpochClock, OutputGate, Protection};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Default bound on held TX bytes per NIC.
pub const DEFAULT_TX_CAP_BYTES: usize = 16 << 20;

/// Gate counters, readable at any time.
#[derive(Debug, Default)]
pub struct TxGateCounters {
    /// Frames held now.
    pub held_frames: AtomicU64,
    /// Bytes held now.
    pub held_bytes: AtomicU64,
    /// Frames released to the wire (or passed through) since the gate was built.
    pub released_frames: AtomicU64,
    /// Bytes released to the wire (or passed through).
    pub released_bytes: AtomicU64,
    /// Frames the wire refused on release (as a tap drops a frame it cannot queue).
    pub release_errors: AtomicU64,
    /// Longest time a frame was held, in microseconds.
    pub max_hold_us: AtomicU64,
    /// Times the gate was full and pushed back on the guest.
    pub full: AtomicU64,
}

impl TxGateCounters {
    /// Name/value pairs for `vm.counters`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("tx_gate_held_frames", l(&self.held_frames)),
            ("tx_gate_held_bytes", l(&self.held_bytes)),
            ("tx_gate_released_frames", l(&self.released_frames)),
            ("tx_gate_released_bytes", l(&self.released_bytes)),
            ("tx_gate_release_errors", l(&self.release_errors)),
            ("tx_gate_max_hold_us", l(&self.max_hold_us)),
            ("tx_gate_full", l(&self.full)),
        ]
    }
}

struct Held {
    epoch: u64,
    frame: Vec<u8>,
    since: Instant,
}

struct State {
    sink: Box<dyn TxSink>,
    held: VecDeque<Held>,
}

/// A NIC's TX gate, shared by its worker (through [`GatedTxSink`]) and the FT releaser.
pub struct TxGate {
    name: String,
    clock: Arc<EpochClock>,
    cap_bytes: u64,
    state: Mutex<State>,
    room: EventFd,
    counters: TxGateCounters,
}

impl TxGate {
    /// A gate named `name` in front of `sink`, holding at most about `cap_bytes`.
    pub fn new(
        name: &str,
        clock: Arc<EpochClock>,
        sink: Box<dyn TxSink>,
        cap_bytes: usize,
    ) -> io::Result<Self> {
        Ok(TxGate {
            name: name.to_string(),
            clock,
            cap_bytes: cap_bytes as u64,
            state: Mutex::new(State {
                sink,
                held: VecDeque::new(),
            }),
            room: EventFd::new(EFD_NONBLOCK)?,
            counters: TxGateCounters::default(),
        })
    }

    /// The gate's counters.
    pub fn counters(&self) -> &TxGateCounters {
        &self.counters
    }

    /// Takes one frame from the guest: held in a protecting mode, sent at once otherwise.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let mode = self.clock.mode();
        if mode.holds() {
            // Read under the lock: the epoch only moves while the worker is stopped anyway.
            st.held.push_back(Held {
                epoch: self.clock.current(),
                frame: frame.to_vec(),
                since: Instant::now(),
            });
            self.counters.held_frames.fetch_add(1, Ordering::Relaxed);
            self.counters
                .held_bytes
                .fetch_add(frame.len() as u64, Ordering::Relaxed);
            if !self.has_room() {
                self.counters.full.fetch_add(1, Ordering::Relaxed);
            }
            drop(st);
            self.clock.note_output();
            return Ok(());
        }
        // Frames held from before must leave first, or the wire would see them out of order.
        self.release_locked(&mut st, u64::MAX);
        st.sink.send(frame)?;
        self.counters
            .released_frames
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .released_bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the gate takes another frame now.
    pub fn has_room(&self) -> bool {
        self.counters.held_bytes.load(Ordering::Relaxed) < self.cap_bytes
    }

    /// Readable when the gate had no room and has some again.
    pub fn room_fd(&self) -> RawFd {
        self.room.as_raw_fd()
    }

    /// Sends every held frame of epochs ≤ `bound`, in the order the guest sent them.
    pub fn release_through(&self, bound: u64) {
        let mut st = self.lock();
        self.release_locked(&mut st, bound);
    }

    /// Whether a committed frame may leave now. A protected primary sends only under the lease
    /// its acks renew (`ft::gate::Lease`), as it writes the shared disk: one stopped past its
    /// failure timeout with committed frames still held must not send them once it continues,
    /// when a backup may be live and answering for the guest. They stay held until an ack
    /// renews the lease, or the pair ends (released if this member won, dropped if it halted);
    /// the guest's TCP covers them either way.
    fn may_send(&self) -> bool {
        self.clock.mode() != Protection::Protected
            || self.clock.lease().terms().is_none()
            || self.clock.lease().check().is_ok()
    }

    fn release_locked(&self, st: &mut State, bound: u64) {
        let was_full = !self.has_room();
        let mut freed = false;
        // Before every frame, not once per batch: the process may stop between two.
        while st.held.front().is_some_and(|h| h.epoch <= bound) && self.may_send() {
            let Some(h) = st.held.pop_front() else { break };
            let len = h.frame.len() as u64;
            let held_us = u64::try_from(h.since.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.counters
                .max_hold_us
                .fetch_max(held_us, Ordering::Relaxed);
            self.counters.held_frames.fetch_sub(1, Ordering::Relaxed);
            self.counters.held_bytes.fetch_sub(len, Ordering::Relaxed);
            freed = true;
            match st.sink.send(&h.frame) {
                Ok(()) => {
                    self.counters
                        .released_frames
                        .fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .released_bytes
                        .fetch_add(len, Ordering::Relaxed);
                }
                Err(e) => {
                    // The wire may lose a frame (a full tap queue); TCP retransmits it.
                    crate::guest_debug!("{}: held frame lost on release: {e}", self.name);
                    self.counters.release_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if freed && was_full && self.has_room() {
            if let Err(e) = self.room.write(1) {
                crate::guest_error!("{}: cannot wake the NIC worker: {e}", self.name);
            }
        }
    }

    /// The pair is over or the VM stops: sends every held frame if the clock lets output go
    /// (no pair, or unprotected), or drops them with a logged reason if it never will (halted:
    /// the guest went live elsewhere, and these frames belong to epochs the backup never
    /// committed). Nothing stays held silently.
    pub fn settle(&self, why: &str) {
        match self.clock.mode() {
            Protection::Off | Protection::Unprotected => self.release_through(u64::MAX),
            mode @ (Protection::Protected | Protection::Halted) => {
                let mut st = self.lock();
                let (n, bytes) = (
                    st.held.len(),
                    st.held.iter().map(|h| h.frame.len()).sum::<usize>(),
                );
                if n == 0 {
                    return;
                }
                crate::guest_warn!(
                    "{}: discarding {n} held frames ({bytes} bytes) ({why}): output is {mode:?}, \
                     so their epochs will never be released",
                    self.name
                );
                st.held.clear();
                self.counters.held_frames.store(0, Ordering::Relaxed);
                self.counters.held_bytes.store(0, Ordering::Relaxed);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic mid-release leaves the queue consistent (pop before send): go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl OutputGate for TxGate {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_durability_source(&self) -> bool {
        false
    }

    fn pump(&self, clock: &EpochClock) {
        match clock.mode() {
            Protection::Protected => self.release_through(clock.release_bound()),
            Protection::Off | Protection::Unprotected => self.release_through(u64::MAX),
            Protection::Halted => {}
        }
    }
}

/// The [`TxSink`] the NIC's worker sends through when FT is enabled.
pub struct GatedTxSink(pub Arc<TxGate>);

impl TxSink for GatedTxSink {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.send(frame)
    }

    fn has_room(&self) -> bool {
        self.0.has_room()
    }

    fn room_fd(&self) -> Option<RawFd> {
        Some(self.0.room_fd())
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
