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
            SUPPRESSED_TOTAL.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Lines dropped by every call site so far (`tandem_log_lines_suppressed_total`).
static SUPPRESSED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// How many log lines the rate limits have dropped in this process.
pub fn suppressed_total() -> u64 {
    SUPPRESSED_TOTAL.load(Ordering::Relaxed)
}

// Which form a new log line needs: if the guest decides how often it happens (anything reached
// from a vCPU exit, a device register, a virtqueue, a device worker, a guest-driven reset, reboot
// or power-off), use `guest_error!`/`guest_warn!`/`guest_info!`/`guest_debug!`/`guest_trace!`; in this crate
// every line does, and clippy refuses the plain `log::` macros here (devices/clippy.toml). In
// vmm the rate-limited form is the default too (vmm/clippy.toml): plain `log::` is only for
// modules that say at their top, with `#![allow(clippy::disallowed_macros)]`, that their lines
// are host-side, bounded by something the guest does not control (API calls, VM builds, peers,
// timers). When unsure, take the rate-limited form: it costs nothing until a call site logs more
// than BURST lines in a WINDOW.

/// The rate-limited macros' common body (use them, not this).
#[doc(hidden)]
#[macro_export]
macro_rules! __guest_log {
    ($level:expr, $($arg:tt)+) => {{
        let level = $level;
        // Disabled levels neither format nor spend the call site's budget.
        if $crate::ratelimit::__log::log_enabled!(level) {
            static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
            match LIMIT.allow() {
                Some(0) => $crate::ratelimit::__log::log!(level, $($arg)+),
                Some(dropped) => $crate::ratelimit::__log::log!(
                    level,
                    "{} ({dropped} similar messages suppressed)",
                    format_args!($($arg)+)
                ),
                None => {}
            }
        }
    }};
}

/// `log::error!` with a per-call-site rate limit, for lines a guest can cause.
#[macro_export]
macro_rules! guest_error {
    ($($arg:tt)+) => { $crate::__guest_log!($crate::ratelimit::__log::Level::Error, $($arg)+) };
}

/// `log::warn!` with a per-call-site rate limit, for lines a guest can cause.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => { $crate::__guest_log!($crate::ratelimit::__log::Level::Warn, $($arg)+) };
}

/// `log::info!` with a per-call-site rate limit, for lines a guest can cause.
#[macro_export]
macro_rules! guest_info {
    ($($arg:tt)+) => { $crate::__guest_log!($crate::ratelimit::__log::Level::Info, $($arg)+) };
}

/// `log::debug!` with a per-call-site rate limit, for lines a guest can cause.
#[macro_export]
macro_rules! guest_debug {
    ($($arg:tt)+) => { $crate::__guest_log!($crate::ratelimit::__log::Level::Debug, $($arg)+) };
}

/// `log::trace!` with a per-call-site rate limit, for lines a guest can cause.
#[macro_export]
macro_rules! guest_trace {
    ($($arg:tt)+) => { $crate::__guest_log!($crate::ratelimit::__log::Level::Trace, $($arg)+) };
}

#[doc(hidden)]
pub use log as __log;

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
    fn the_macros_compile_and_log_through_log() {
        for i in 0..100 {
            crate::guest_error!("test message {i}");
            crate::guest_warn!("test message {i}");
            crate::guest_info!("test message {i}");
            crate::guest_debug!("test message {i}");
        }
    }
}
