//! The primary's in-flight window: checkpoints captured but not yet acked, bounded in count and
//! staged bytes. A full window makes the next epoch wait (backpressure) instead of queueing
//! staging buffers without bound behind a slow backup.

use super::stats::Trigger;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One unacked checkpoint.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) epoch: u64,
    pub(crate) staged_bytes: u64,
    pub(crate) pages: u64,
    pub(crate) trigger: Trigger,
    pub(crate) pause: Duration,
    pub(crate) steps: super::stats::PauseSteps,
    pub(crate) throttle_permille: u16,
    pub(crate) epoch_run: Duration,
    pub(crate) stall: Duration,
    pub(crate) resumed_at: Instant,
    pub(crate) in_flight_before: usize,
    /// Sequence number of its Commit, once the sender is about to write it.
    pub(crate) commit_seq: Option<u64>,
    /// Stream bytes, once sent.
    pub(crate) wire_bytes: u64,
    /// How its pages went out, once sent.
    pub(crate) encodings: super::stats::PageEncodings,
    /// When the Commit went out, for the ack timeout.
    pub(crate) sent_at: Option<Instant>,
    /// When the sender began writing it, for the link's pace.
    pub(crate) send_started: Option<Instant>,
}

/// The bounded queue of unacked checkpoints, oldest first.
#[derive(Debug)]
pub(crate) struct Window {
    entries: VecDeque<InFlight>,
    bytes: u64,
    max_count: usize,
    max_bytes: u64,
    /// Most checkpoints ever in flight at once.
    pub(crate) peak_count: usize,
    /// Most staged bytes ever in flight at once.
    pub(crate) peak_bytes: u64,
}

impl Window {
    pub(crate) fn new(max_count: usize, max_bytes: u64) -> Window {
        Window {
            entries: VecDeque::new(),
            bytes: 0,
            max_count: max_count.max(1),
            max_bytes,
            peak_count: 0,
            peak_bytes: 0,
        }
    }

    /// Whether another checkpoint of `next_bytes` may be captured now. An empty window always
    /// admits, so that a single checkpoint larger than the byte bound still makes progress.
    pub(crate) fn has_room(&self, next_bytes: u64) -> bool {
        self.entries.is_empty()
            || (self.entries.len() < self.max_count
                && self.bytes.saturating_add(next_bytes) <= self.max_bytes)
    }

    /// Whether a captured checkpoint of `bytes` fits beside those in flight (or nothing is in
    /// flight, so it must go alone).
    pub(crate) fn fits(&self, bytes: u64) -> bool {
        self.entries.is_empty() || self.bytes.saturating_add(bytes) <= self.max_bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Staged bytes of the checkpoints in flight.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn push(&mut self, e: InFlight) {
        self.bytes += e.staged_bytes;
        self.entries.push_back(e);
        self.peak_count = self.peak_count.max(self.entries.len());
        self.peak_bytes = self.peak_bytes.max(self.bytes);
    }

    pub(crate) fn get_mut(&mut self, epoch: u64) -> Option<&mut InFlight> {
        self.entries.iter_mut().find(|e| e.epoch == epoch)
    }

    pub(crate) fn front(&self) -> Option<&InFlight> {
        self.entries.front()
    }

    pub(crate) fn pop_front(&mut self) -> Option<InFlight> {
        let e = self.entries.pop_front()?;
        self.bytes -= e.staged_bytes;
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: u64, staged_bytes: u64) -> InFlight {
        InFlight {
            epoch,
            staged_bytes,
            pages: 0,
            trigger: Trigger::Timer,
            pause: Duration::ZERO,
            steps: Default::default(),
            throttle_permille: 0,
            epoch_run: Duration::ZERO,
            stall: Duration::ZERO,
            resumed_at: Instant::now(),
            in_flight_before: 0,
            commit_seq: None,
            wire_bytes: 0,
            encodings: Default::default(),
            sent_at: None,
            send_started: None,
        }
    }

    #[test]
    fn bounded_by_count_and_bytes_but_never_stuck() {
        let mut w = Window::new(2, 100);
        w.push(entry(1, 10));
        assert!(w.has_room(90));
        assert!(!w.has_room(91), "room for what comes next");
        assert!(w.fits(90) && !w.fits(91));
        w.push(entry(2, 10));
        assert!(!w.has_room(0), "count bound");
        w.pop_front();
        w.pop_front();
        w.push(entry(3, 1000));
        assert!(!w.has_room(0), "byte bound");
        w.pop_front();
        assert!(
            w.has_room(1000) && w.fits(1000),
            "an empty window admits even a huge checkpoint"
        );
        assert_eq!((w.peak_count, w.peak_bytes), (2, 1000));
    }
}
