//! The link's pace as the primary sees it, for flow control: how fast acked checkpoints drain
//! while the link is busy, and how many stream bytes a dirty page costs (deltas make it much
//! less than a page).

use std::time::{Duration, Instant};

/// A checkpoint as acked, for [`LinkEstimate::acked`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Acked {
    /// Stream bytes.
    pub wire_bytes: u64,
    /// Pages it carried.
    pub pages: u64,
    /// When the sender began writing it.
    pub send_started: Instant,
    /// When its ack arrived.
    pub acked_at: Instant,
}

/// Pages a per-page wire cost needs before it is trusted.
const MIN_PAGES: u64 = 32;
/// Bytes a drain-rate sample needs: smaller checkpoints measure round trips, not the link.
const MIN_SAMPLE_BYTES: u64 = 64 << 10;

/// Drain rate and wire bytes per page.
#[derive(Debug, Clone, Default)]
pub(crate) struct LinkEstimate {
    /// Bytes per second acked while the link was busy; `None` while nothing says the link is a
    /// limit.
    rate: Option<f64>,
    /// Stream bytes per dirty page.
    per_page: Option<f64>,
    last_ack: Option<Instant>,
}

impl LinkEstimate {
    /// Learns from an ack, in order.
    pub(crate) fn acked(&mut self, a: &Acked) {
        if a.pages >= MIN_PAGES {
            let v = a.wire_bytes as f64 / a.pages as f64;
            self.per_page = Some(self.per_page.map_or(v, |m| m + (v - m) * 0.3));
        }
        // Busy: it was queued behind the previous checkpoint, so the link carried it from that
        // ack to this one.
        let busy = self.last_ack.filter(|&prev| a.send_started < prev);
        let since = busy.unwrap_or(a.send_started);
        let took = a
            .acked_at
            .saturating_duration_since(since)
            .max(Duration::from_micros(1));
        let sample = a.wire_bytes as f64 / took.as_secs_f64();
        self.rate = match (busy, self.rate) {
            (Some(_), Some(r)) if a.wire_bytes >= MIN_SAMPLE_BYTES => Some(r + (sample - r) * 0.5),
            (Some(_), None) if a.wire_bytes >= MIN_SAMPLE_BYTES => Some(sample),
            // The link was idle before it: it keeps up; let the estimate rise (and stop
            // limiting) unless this one alone shows the pace.
            (None, Some(r)) => Some((r * 1.5).max(sample)),
            (_, r) => r,
        };
        self.last_ack = Some(a.acked_at);
    }

    /// Bytes per second while busy, if known.
    pub(crate) fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Stream bytes per dirty page, if known.
    pub(crate) fn per_page(&self) -> Option<f64> {
        self.per_page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_link_is_measured_and_an_idle_one_lets_the_estimate_rise() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut l = LinkEstimate::default();
        // Idle link, small checkpoint: nothing learnt about the rate.
        l.acked(&Acked {
            wire_bytes: 4 << 10,
            pages: 40,
            send_started: ms(0),
            acked_at: ms(1),
        });
        assert_eq!(l.rate(), None);
        assert_eq!(l.per_page(), Some(4096.0 / 40.0));
        // 1 MB queued behind the first, acked 1 s after it: 1 MB/s.
        l.acked(&Acked {
            wire_bytes: 1_000_000,
            pages: 250,
            send_started: ms(0),
            acked_at: ms(1001),
        });
        assert!((l.rate().unwrap() - 1e6).abs() < 1.0, "{:?}", l.rate());
        // The next one went out on an idle link and came back fast: the estimate rises.
        l.acked(&Acked {
            wire_bytes: 100_000,
            pages: 25,
            send_started: ms(1100),
            acked_at: ms(1110),
        });
        assert!(l.rate().unwrap() >= 1e7, "{:?}", l.rate());
    }
}
