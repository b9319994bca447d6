//! Flow control on the primary (the seed's "a slow backup throttles the primary's CPU", QEMU's
//! auto-converge): from what each epoch measured — dirty pages, the pause they cost, the link's
//! pace — choose the next epoch's length and how hard to throttle the guest's vCPUs, so that
//! pauses stay short and the backlog of unacked checkpoints stays bounded, instead of the guest
//! freezing behind a long copy or a full window.

use std::time::Duration;

/// What holds flow control's settings where they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowLimit {
    /// Nothing: full-length epochs, no throttle.
    #[default]
    None,
    /// The dirty set: a longer epoch or a faster guest would make the pause too long.
    Pause,
    /// The backup or the link: checkpoints are produced faster than they are acked.
    Backlog,
}

/// Flow control's settings, as the status view shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowReport {
    /// vCPU throttle, per mille of their time.
    pub throttle_permille: u16,
    /// What holds it (and the epoch length) there.
    pub limited_by: FlowLimit,
    /// The epoch length chosen.
    pub epoch: Duration,
    /// The pause aimed at.
    pub target_pause: Duration,
    /// The bound on bytes captured but not acked.
    pub max_backlog_bytes: u64,
    /// Pages kept writable (hot) at the last checkpoint (`checkpoint::hot_pages`).
    pub hot_pages: u64,
}

/// Flow control's settings (part of `PrimaryOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowOptions {
    /// Off: full-length epochs, never a throttle (the in-flight window still bounds the backlog,
    /// by making epochs wait).
    pub enabled: bool,
    /// The pause to aim at: epochs end, and the guest is throttled, so that the dirty set they
    /// leave costs about this much to capture.
    pub target_pause: Duration,
    /// Shortest epoch: below it a checkpoint's fixed cost (stopping vCPUs, their state) would eat
    /// the guest's time, so a faster dirtier is throttled instead.
    pub min_epoch: Duration,
    /// Longest a checkpoint may take on a busy link: checkpoints are sized to it once the link's
    /// pace is known, so that a slow link never holds an ack (and every frame behind it,
    /// heartbeats included) back for long. The epoch thread uses at most a quarter of the ack
    /// timeout.
    pub max_link_time: Duration,
    /// Longest an epoch may grow, past the checkpoint interval, for a guest that dirties many
    /// pages but leaves a dirty set that fits the page budget: it rewrites a working set, and
    /// every page's first write in an epoch costs a write-protection fault (tens of µs under
    /// PVM), so longer epochs let it get more done per fault at no cost in pause. Epochs that
    /// end on held output are unaffected.
    pub long_epoch: Duration,
}

impl Default for FlowOptions {
    /// A 3 ms pause target: against 4 ms, the 2- and 4-vCPU dirtying loads paused p50 2.8
    /// instead of 4.1 ms and p99 about 1 ms less, at the same guest work
    /// (docs/performance.md, "Flow control").
    fn default() -> Self {
        FlowOptions {
            enabled: true,
            target_pause: Duration::from_millis(3),
            min_epoch: Duration::from_millis(5),
            max_link_time: Duration::from_millis(250),
            long_epoch: Duration::from_secs(1),
        }
    }
}

/// What one epoch measured, for [`FlowControl::after_capture`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct EpochSample {
    /// Pages it dirtied (captured).
    pub pages: u64,
    /// How long the guest's vCPUs really ran in it.
    pub ran: Duration,
    /// Share of the epoch (resume to pause) its vCPUs were stopped by the throttle, per mille.
    pub throttle_permille: u16,
    /// The pause it cost.
    pub pause: Duration,
    /// The part of the pause that grows with the pages (dirty log and copy).
    pub per_page_part: Duration,
    /// It had to wait for room in the in-flight window (the backup or the link is behind).
    pub stalled: bool,
    /// It ended because its length was up (not on held output or a guest pause).
    pub timer: bool,
}

/// Exponentially weighted mean; `None` until the first sample.
#[derive(Debug, Clone, Copy, Default)]
struct Ewma(Option<f64>);

impl Ewma {
    fn add(&mut self, v: f64, weight: f64) {
        self.0 = Some(match self.0 {
            Some(m) => m + (v - m) * weight,
            None => v,
        });
    }
}

/// Pages a per-page cost estimate needs before it is trusted.
const MIN_PAGES: u64 = 32;
/// Pages an epoch must dirty before it may grow past the interval: an idle guest keeps the
/// interval.
const GROW_MIN_PAGES: u64 = 256;
/// Growth per epoch while the dirty set stays under half the page budget.
const GROW_FACTOR: f64 = 1.5;

/// Shortest run the throttle leaves the guest per epoch.
const MIN_RUN: Duration = Duration::from_micros(200);

/// The controller: pure arithmetic over what epochs measured, so that it is testable without a
/// VM; the epoch thread carries out what it decides.
///
/// Each epoch may dirty about [`FlowControl::page_budget`] pages: what the pause target allows
/// at the measured cost per page, and a quarter of the backlog bound. From the guest's dirty
/// rate that is a *run budget*: how long its vCPUs may run before the epoch must end. A run
/// budget longer than the checkpoint interval changes nothing; a shorter one shortens the
/// epoch, down to `min_epoch`; below that the vCPUs stop for the rest of the epoch once they
/// have used it (the throttle). An epoch that must wait for the window (backup or link behind)
/// keeps its guest running only until the run budget is spent, then stopped until there is
/// room: the guest is slowed to the pace at which checkpoints are acked, and it runs again at
/// full speed in the first epoch that does not wait.
#[derive(Debug, Clone)]
pub(crate) struct FlowControl {
    o: FlowOptions,
    max_epoch: Duration,
    max_backlog: u64,
    /// Seconds of pause per dirty page (dirty log + copy).
    per_page: Ewma,
    /// The pause that does not grow with pages.
    fixed: Ewma,
    /// Pages the guest dirties per second of run.
    dirty_rate: Option<f64>,
    /// The link: bytes per second while busy, stream bytes per page.
    link_rate: Option<f64>,
    wire_per_page: Option<f64>,
    epoch: Duration,
    run_budget: Option<Duration>,
    /// The throttle measured in the last epoch, per mille.
    throttle: u16,
    limit: FlowLimit,
    /// The last timer-ended epoch: its length and dirty pages (to see a working set saturate).
    last_timed: Option<(Duration, u64)>,
}

impl FlowControl {
    /// A controller for epochs of at most `max_epoch` and a backlog of at most `max_backlog`
    /// bytes. It starts with the shortest epoch (nothing is known of the guest's dirty rate, and
    /// a first checkpoint of a whole interval of a fast dirtier would be a long pause).
    pub(crate) fn new(o: FlowOptions, max_epoch: Duration, max_backlog: u64) -> FlowControl {
        let first = if o.enabled {
            o.min_epoch.min(max_epoch)
        } else {
            max_epoch
        };
        FlowControl {
            o,
            max_epoch,
            max_backlog,
            per_page: Ewma::default(),
            fixed: Ewma::default(),
            dirty_rate: None,
            link_rate: None,
            wire_per_page: None,
            epoch: first,
            run_budget: None,
            throttle: 0,
            limit: FlowLimit::None,
            last_timed: None,
        }
    }

    /// The next epoch's length.
    pub(crate) fn epoch(&self) -> Duration {
        self.epoch
    }

    /// How long the guest's vCPUs may run in the next epoch (`None`: all of it).
    pub(crate) fn run_budget(&self) -> Option<Duration> {
        self.run_budget
    }

    /// Settings for the status view, with the pages the capture keeps hot (it owns them).
    pub(crate) fn report(&self, hot_pages: u64) -> FlowReport {
        FlowReport {
            throttle_permille: self.throttle,
            limited_by: self.limit,
            epoch: self.epoch,
            target_pause: self.o.target_pause,
            max_backlog_bytes: self.max_backlog,
            hot_pages,
        }
    }

    /// The link's pace (bytes per second while busy) and stream bytes per page, as the acks
    /// show them.
    pub(crate) fn set_link(&mut self, rate: Option<f64>, wire_per_page: Option<f64>) {
        self.link_rate = rate;
        self.wire_per_page = wire_per_page;
    }

    /// Pages an epoch may dirty, and which bound sets it: the pause target at the measured cost
    /// per page; a quarter of the backlog bound, so that a checkpoint fits beside the ones in
    /// flight; what the link carries in `max_link_time`.
    fn budget(&self) -> (u64, FlowLimit) {
        let mut best = (
            (self.max_backlog / 4 / crate::frame::PAGE_SIZE as u64).max(MIN_PAGES),
            FlowLimit::Backlog,
        );
        if let Some(per_page) = self.per_page.0.filter(|&c| c > 0.0) {
            let target = self.o.target_pause.as_secs_f64();
            // Whatever the fixed part costs, leave a quarter of the target for pages.
            let room = (target - self.fixed.0.unwrap_or(0.0)).max(target / 4.0);
            best = best.min(((room / per_page) as u64, FlowLimit::Pause));
        }
        if let (Some(rate), Some(per_page)) = (self.link_rate, self.wire_per_page) {
            let pages = rate * self.o.max_link_time.as_secs_f64() / per_page.max(1.0);
            best = best.min((pages.min(u64::MAX as f64) as u64, FlowLimit::Backlog));
        }
        (best.0.max(MIN_PAGES), best.1)
    }

    /// Pages an epoch may dirty (see `budget`).
    pub(crate) fn page_budget(&self) -> u64 {
        self.budget().0
    }

    /// Learns from a captured epoch and plans the next one.
    pub(crate) fn after_capture(&mut self, s: &EpochSample) {
        if !self.o.enabled {
            return;
        }
        if s.pages >= MIN_PAGES {
            let per_page = s.per_page_part.as_secs_f64() / s.pages as f64;
            self.per_page.add(per_page, 0.5);
        }
        self.fixed
            .add(s.pause.saturating_sub(s.per_page_part).as_secs_f64(), 0.3);
        let ran = s.ran.as_secs_f64();
        if ran >= MIN_RUN.as_secs_f64() {
            let rate = s.pages as f64 / ran;
            // Up at once (a burst must not make a long pause twice), down gently.
            self.dirty_rate = Some(match self.dirty_rate {
                Some(r) if rate < r => r + (rate - r) * 0.3,
                _ => rate,
            });
        }
        self.throttle = s.throttle_permille;
        if !self.grow(s) {
            self.plan(s.stalled && s.throttle_permille > 0);
        }
    }

    /// Lengthens (or keeps long) a timer-ended epoch of a busy guest whose dirty set fits the
    /// page budget with room to spare; returns whether it did.
    fn grow(&mut self, s: &EpochSample) -> bool {
        let last = self.last_timed.take();
        if s.timer {
            self.last_timed = Some((s.ran, s.pages));
        }
        let pages = self.page_budget();
        let long = self.o.long_epoch.max(self.max_epoch);
        if !s.timer || s.stalled || self.epoch < self.max_epoch || long <= self.max_epoch {
            return false;
        }
        // A dirty set that hardly grew with a longer epoch is a working set rewritten: it
        // stays about that size however long the epoch; otherwise it grows with the epoch.
        let saturated = last.is_some_and(|(len, n)| {
            s.ran.as_secs_f64() > len.as_secs_f64() * 1.2 && (s.pages as f64) < n as f64 * 1.2
        });
        let grows_to = if saturated { 1.1 } else { GROW_FACTOR };
        let next = if s.pages >= GROW_MIN_PAGES && s.pages as f64 * grows_to <= pages as f64 {
            self.epoch.mul_f64(GROW_FACTOR).min(long)
        } else if self.epoch > self.max_epoch && s.pages <= pages {
            // Still within budget: keep the length that got here.
            self.epoch
        } else {
            return false;
        };
        self.epoch = next;
        self.run_budget = None;
        self.limit = FlowLimit::None;
        true
    }

    /// Epoch length and run budget from the estimates.
    fn plan(&mut self, held_by_backlog: bool) {
        let (min, max) = (self.o.min_epoch.min(self.max_epoch), self.max_epoch);
        let (pages, bound) = self.budget();
        let run = self
            .dirty_rate
            .filter(|&r| r > 0.0)
            .map(|r| Duration::from_secs_f64((pages as f64 / r).min(3600.0)));
        (self.epoch, self.run_budget, self.limit) = match run {
            None => (max, None, FlowLimit::None),
            Some(run) if run >= max => (max, Some(run), FlowLimit::None),
            Some(run) if run >= min => (run, Some(run), bound),
            Some(run) => (min, Some(run.max(MIN_RUN)), bound),
        };
        if held_by_backlog {
            self.limit = FlowLimit::Backlog;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn control() -> FlowControl {
        FlowControl::new(FlowOptions::default(), 25 * MS, 64 << 20)
    }

    /// What the epoch thread does with the plan for a guest dirtying `rate` pages/s of run,
    /// each page costing 1 µs of pause on top of 300 µs; `stall` is how long the window made the
    /// epoch wait beyond its length.
    fn epoch(f: &FlowControl, rate: f64, stall: Duration) -> EpochSample {
        let len = f.epoch() + stall;
        let ran = f.run_budget().map_or(len, |b| b.min(len));
        let pages = (rate * ran.as_secs_f64()) as u64;
        let per_page = Duration::from_micros(pages);
        EpochSample {
            pages,
            ran,
            throttle_permille: (1000.0 * (1.0 - ran.as_secs_f64() / len.as_secs_f64())) as u16,
            pause: 300 * Duration::from_micros(1) + per_page,
            per_page_part: per_page,
            stalled: !stall.is_zero(),
            timer: true,
        }
    }

    #[test]
    fn a_slow_dirtier_keeps_full_epochs_and_no_throttle() {
        let mut f = control();
        assert_eq!(f.epoch(), 5 * MS, "starts short");
        for _ in 0..20 {
            f.after_capture(&epoch(&f, 2_000.0, Duration::ZERO));
        }
        assert_eq!(f.epoch(), 25 * MS);
        assert_eq!(epoch(&f, 2_000.0, Duration::ZERO).throttle_permille, 0);
        assert_eq!(f.report(0).limited_by, FlowLimit::None);
    }

    #[test]
    fn a_faster_dirtier_gets_shorter_epochs_then_a_throttle() {
        let mut f = control();
        // 400k pages/s: a 25 ms epoch would dirty 10k pages, 10 ms of pause.
        for _ in 0..20 {
            f.after_capture(&epoch(&f, 400_000.0, Duration::ZERO));
        }
        assert!(
            f.epoch() < 25 * MS && f.epoch() >= 5 * MS,
            "{:?}",
            f.epoch()
        );
        let e = epoch(&f, 400_000.0, Duration::ZERO);
        assert_eq!(e.throttle_permille, 0);
        assert!(e.pause <= 5 * MS, "{:?}", e.pause);
        assert_eq!(f.report(0).limited_by, FlowLimit::Pause);
        // 10M pages/s: even a 5 ms epoch is too much; the guest is throttled.
        for _ in 0..20 {
            f.after_capture(&epoch(&f, 10_000_000.0, Duration::ZERO));
        }
        assert_eq!(f.epoch(), 5 * MS);
        let e = epoch(&f, 10_000_000.0, Duration::ZERO);
        assert!(e.throttle_permille > 900, "{}", e.throttle_permille);
        assert!(e.pause <= 5 * MS, "{:?}", e.pause);
        assert_eq!(f.report(0).limited_by, FlowLimit::Pause);
    }

    #[test]
    fn a_slow_link_holds_the_guest_to_its_budget_and_lets_go_when_it_catches_up() {
        let mut f = FlowControl::new(FlowOptions::default(), 25 * MS, 1 << 20);
        for _ in 0..10 {
            f.after_capture(&epoch(&f, 2_000.0, 200 * MS));
        }
        // 64 pages of budget at 2000 pages/s: 32 ms of run in each ~225 ms epoch.
        assert!(f.report(0).throttle_permille > 800, "{:?}", f.report(0));
        assert_eq!(f.report(0).limited_by, FlowLimit::Backlog);
        f.after_capture(&epoch(&f, 2_000.0, Duration::ZERO));
        assert_eq!(f.report(0).throttle_permille, 0);
        assert_eq!(f.report(0).limited_by, FlowLimit::None);
    }

    #[test]
    fn an_idle_guest_is_never_held_back_by_a_slow_link() {
        let mut f = control();
        for _ in 0..10 {
            f.after_capture(&epoch(&f, 10.0, 500 * MS));
        }
        assert_eq!(f.report(0).throttle_permille, 0, "{:?}", f.report(0));
        assert!(f.run_budget().is_none_or(|b| b > 525 * MS));
    }

    #[test]
    fn off_means_off() {
        let mut f = FlowControl::new(
            FlowOptions {
                enabled: false,
                ..FlowOptions::default()
            },
            25 * MS,
            64 << 20,
        );
        f.after_capture(&epoch(&f, 10_000_000.0, 100 * MS));
        assert_eq!((f.epoch(), f.run_budget()), (25 * MS, None));
    }

    #[test]
    fn a_slow_link_sizes_checkpoints_to_what_it_carries_in_a_quarter_second() {
        let mut f = control();
        // 1 MB/s, 4 KiB a page: 250 ms carry 61 pages.
        f.set_link(Some(1e6), Some(4096.0));
        for _ in 0..5 {
            f.after_capture(&epoch(&f, 20_000.0, Duration::ZERO));
        }
        assert_eq!(f.page_budget(), 61);
        assert_eq!(f.report(0).limited_by, FlowLimit::Backlog);
        assert!(epoch(&f, 20_000.0, Duration::ZERO).throttle_permille > 300);
        // Deltas: 40 bytes a page, the same link carries 6250.
        f.set_link(Some(1e6), Some(40.0));
        f.after_capture(&epoch(&f, 20_000.0, Duration::ZERO));
        assert_eq!(epoch(&f, 20_000.0, Duration::ZERO).throttle_permille, 0);
    }

    /// A guest that rewrites a 1500-page working set at 1M writes/s, each page's first write in
    /// an epoch a 20 µs fault: in an epoch of `len` it dirties min(len / 20 µs, 1500) pages.
    fn rewriter(f: &FlowControl) -> EpochSample {
        let len = f.epoch();
        let pages = ((len.as_secs_f64() / 20e-6) as u64).min(1500);
        EpochSample {
            pages,
            ran: len,
            throttle_permille: 0,
            pause: Duration::from_micros(300 + pages),
            per_page_part: Duration::from_micros(pages),
            stalled: false,
            timer: true,
        }
    }

    #[test]
    fn a_working_set_that_fits_the_budget_gets_long_epochs() {
        let mut f = control();
        for _ in 0..30 {
            f.after_capture(&rewriter(&f));
        }
        assert_eq!(f.epoch(), Duration::from_secs(1), "{:?}", f.report(0));
        assert_eq!(f.report(0).limited_by, FlowLimit::None);
        // The dirty set stays the working set: the pause with it.
        assert!(rewriter(&f).pause <= FlowOptions::default().target_pause);
        // An idle guest keeps the interval.
        let mut idle = control();
        for _ in 0..30 {
            idle.after_capture(&epoch(&idle, 100.0, Duration::ZERO));
        }
        assert_eq!(idle.epoch(), 25 * MS);
        // A working set too large for the budget is not grown into.
        let mut big = FlowControl::new(FlowOptions::default(), 25 * MS, 64 << 20);
        for _ in 0..30 {
            let mut e = rewriter(&big);
            e.pages *= 4;
            e.pause = Duration::from_micros(300 + e.pages);
            e.per_page_part = Duration::from_micros(e.pages);
            big.after_capture(&e);
        }
        assert!(big.epoch() <= 25 * MS, "{:?}", big.epoch());
    }

    #[test]
    fn the_page_budget_fits_the_backlog_bound() {
        let f = FlowControl::new(FlowOptions::default(), 25 * MS, 1 << 20);
        assert_eq!(f.page_budget(), (1 << 20) / 4 / 4096);
    }
}
