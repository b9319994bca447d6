//! Rate limits for log messages a guest can trigger at will (a driver that keeps resetting a
//! device with bad features, say): each call site logs at most [`BURST`] messages per [`WINDOW`],
//! then counts what it dropped and says so when it may log again.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Messages a call site may log per window.
pub const BURST: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One call site's budget.
pub struct RateLimit {
    window_start_ms: AtomicU64,
    count: AtomicU32,
    suppressed: AtomicU64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimit {
    /// A fresh budget (const, so it can live in a `static` at the call site).
    pub const fn new() -> Self {
        RateLimit {
            window_start_ms: AtomicU64::new(0),
            count: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a message may be logged now, `n` being how many were dropped since the last
    /// one logged; `None` if this one must be dropped.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(now_ms())
    }

    fn allow_at(&self, now: u64) -> Option<u64> {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= WINDOW.as_millis() as u64
            && self
                .window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `log::warn!` with a per-call-site rate limit, for messages a guest can cause.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if let Some(dropped) = LIMIT.allow() {
            if dropped > 0 {
                log::warn!("{} ({dropped} similar messages suppressed)", format_args!($($arg)*));
            } else {
                log::warn!($($arg)*);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_drops_then_reports_what_it_dropped() {
        let rl = RateLimit::new();
        let w = WINDOW.as_millis() as u64;
        let t0 = w; // past the first window's start
        for _ in 0..BURST {
            assert_eq!(rl.allow_at(t0), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(rl.allow_at(t0 + 1), None);
        }
        // A new window: logging resumes and reports the 5 dropped.
        assert_eq!(rl.allow_at(t0 + w), Some(5));
        assert_eq!(rl.allow_at(t0 + w), Some(0));
    }

    #[test]
    fn the_macro_compiles_and_logs_through_log() {
        for i in 0..100 {
            crate::guest_warn!("test message {i}");
        }
    }
}
