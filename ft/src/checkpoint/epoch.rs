//! The primary's epoch thread: ends epochs (timer, output waiting, guest pause), captures each
//! while the VM is paused, and applies flow control — the next epoch's length and the vCPU
//! throttle — from what each capture measured. It owns the VM while it runs.

use super::capture::Captured;
use super::flow::{EpochSample, FlowControl, FlowLimit, FlowReport};
use super::hooks::EpochHooks;
use super::hot_pages::HotPages;
use super::pool::BufferPool;
use super::primary::{lock, GuestRun, PrimaryOptions, Shared};
use super::scrub;
use super::stats::{PauseSteps, StatsSink, Trigger};
use super::window::InFlight;
use super::{vm_err, CheckpointError};
use crate::frame::PAGE_SIZE;
use crate::vm::MigratableVm;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// How often ft.status hears of the throttle while an epoch waits for the window.
const STALL_REPORT: Duration = Duration::from_millis(100);

/// Shortest sleep while waiting for the end of a run budget.
const MIN_POLL: Duration = Duration::from_micros(50);

/// The throttle: the epoch's run budget, carried out by stopping the vCPUs once they have run
/// that long, and the share of the epoch they were really stopped.
struct Throttle {
    /// How long the vCPUs may run this epoch (`None`: no limit).
    budget: Option<Duration>,
    /// The VM can stop its vCPUs alone (`set_vcpus_running` said so).
    supported: bool,
    /// The vCPUs are stopped by the throttle now.
    stopped: bool,
    since: Instant,
    /// Time the vCPUs ran this epoch, up to `since`.
    ran: Duration,
    epoch_start: Instant,
}

impl Throttle {
    fn new() -> Throttle {
        let now = Instant::now();
        Throttle {
            budget: None,
            supported: true,
            stopped: false,
            since: now,
            ran: Duration::ZERO,
            epoch_start: now,
        }
    }

    /// Stops the vCPUs once they have used the epoch's run budget.
    fn follow<V: MigratableVm + ?Sized>(&mut self, vm: &mut V) -> Result<(), CheckpointError> {
        let over = self.budget.is_some_and(|b| self.ran_now() >= b);
        if over && !self.stopped && self.supported {
            self.supported = vm
                .set_vcpus_running(false)
                .map_err(vm_err("set_vcpus_running"))?;
            if self.supported {
                self.account();
                self.stopped = true;
            }
        }
        Ok(())
    }

    /// Restarts vCPUs the throttle stopped (the epoch thread is ending).
    fn release<V: MigratableVm + ?Sized>(&mut self, vm: &mut V) -> Result<(), CheckpointError> {
        if self.stopped {
            vm.set_vcpus_running(true)
                .map_err(vm_err("set_vcpus_running"))?;
            self.account();
            self.stopped = false;
        }
        Ok(())
    }

    /// The share of the epoch so far the vCPUs were stopped, per mille.
    fn share_now(&self) -> u16 {
        let len = self.epoch_start.elapsed().as_secs_f64();
        if len <= 0.0 {
            return 0;
        }
        let stopped = 1.0 - self.ran_now().as_secs_f64() / len;
        (stopped * 1000.0).round().clamp(0.0, 1000.0) as u16
    }

    /// Run budget left (a long time when there is none, or the vCPUs are stopped already).
    fn left(&self) -> Duration {
        match self.budget {
            Some(b) if !self.stopped => b.saturating_sub(self.ran_now()).max(MIN_POLL),
            _ => Duration::MAX,
        }
    }

    fn ran_now(&self) -> Duration {
        if self.stopped {
            self.ran
        } else {
            self.ran + self.since.elapsed()
        }
    }

    fn account(&mut self) {
        self.ran = self.ran_now();
        self.since = Instant::now();
    }

    /// The capture stopped the whole VM and resumed it (or left it paused): the vCPUs are no
    /// longer stopped by the throttle. Returns how long they ran in the epoch and the share of
    /// it they were stopped (per mille), and starts the next epoch's count.
    fn captured(&mut self) -> (Duration, u16) {
        self.account();
        self.stopped = false;
        let len = self.epoch_start.elapsed();
        let ran = self.ran.min(len);
        let stopped = if len.is_zero() {
            0.0
        } else {
            1.0 - ran.as_secs_f64() / len.as_secs_f64()
        };
        self.ran = Duration::ZERO;
        self.epoch_start = self.since;
        (ran, (stopped * 1000.0).round().clamp(0.0, 1000.0) as u16)
    }
}

/// Ends epochs and captures them until stopped; returns (checkpoints captured, total stall).
/// Lifts the throttle when it ends: an unprotected guest runs at full speed.
pub(super) fn epoch_loop<V: MigratableVm>(
    s: &Shared,
    vm: &Mutex<V>,
    tx: mpsc::Sender<Captured>,
    o: &PrimaryOptions,
    hooks: &dyn EpochHooks,
    stats: &dyn StatsSink,
) -> (u64, Duration) {
    hooks.epoch_thread_started();
    let mut hot = HotPages::default();
    let pool = BufferPool::new(
        o.max_in_flight + 2,
        usize::try_from(o.max_backlog_bytes).unwrap_or(usize::MAX),
    );
    let mut flow_opts = o.flow;
    flow_opts.max_link_time = flow_opts.max_link_time.min(o.ack_timeout / 4);
    let mut flow = FlowControl::new(flow_opts, o.checkpoint_interval, o.max_backlog_bytes);
    let mut throttle = Throttle::new();
    let mut reported = flow.report(hot.kept());
    stats.flow(&reported);
    let mut epoch = 0u64;
    let mut total_stall = Duration::ZERO;
    let mut started = Instant::now();
    loop {
        throttle.budget = flow.run_budget();
        let trigger = match wait_epoch_end(s, vm, o, hooks, started, flow.epoch(), &mut throttle) {
            Ok(Some(t)) => t,
            Ok(None) => break,
            Err(e) => {
                s.fail(e);
                break;
            }
        };
        let stall_from = Instant::now();
        // Room for the checkpoint flow control plans (none asked when it is off).
        let next = if o.flow.enabled {
            flow.page_budget() * PAGE_SIZE as u64
        } else {
            0
        };
        let mut stalled = false;
        let mut said: Option<Instant> = None;
        let mut w = lock(&s.window);
        while !w.has_room(next) && !s.stop.load(Ordering::SeqCst) {
            stalled = true;
            w = s
                .changed
                .wait_timeout(w, o.poll_interval.max(Duration::from_millis(1)))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
            drop(w);
            // The backup or the link is behind: the guest may dirty its budget, no more.
            if let Err(e) = throttle.follow(&mut *lock(vm)) {
                s.fail(e);
                return finish(s, vm, &mut throttle, epoch, total_stall);
            }
            // Say so now, not only once the epoch can end (a slow link may take seconds).
            if throttle.stopped && said.is_none_or(|t| t.elapsed() >= STALL_REPORT) {
                said = Some(Instant::now());
                stats.flow(&FlowReport {
                    throttle_permille: throttle.share_now(),
                    limited_by: FlowLimit::Backlog,
                    ..flow.report(hot.kept())
                });
            }
            w = lock(&s.window);
        }
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        let stall = stall_from.elapsed();
        total_stall += stall;
        let in_flight_before = w.len();
        drop(w);

        let trigger = match trigger {
            Trigger::Pause => take_pause(s),
            t => t,
        };
        let keep_paused = trigger == Trigger::Pause;
        let mut guard = lock(vm);
        let run = started.elapsed();
        let paused_at = Instant::now();
        let cap = capture(
            &mut *guard,
            s,
            epoch + 1,
            hooks,
            keep_paused,
            &pool,
            &mut hot,
        );
        let pause = paused_at.elapsed();
        let (mut cap, steps) = match cap {
            Ok(c) => c,
            Err(e) => {
                drop(guard);
                s.fail(e);
                break;
            }
        };
        let (ran, throttle_permille) = throttle.captured();
        drop(guard);
        let link = lock(&s.link).clone();
        flow.set_link(link.rate(), link.per_page());
        flow.after_capture(&EpochSample {
            pages: cap.pages(),
            ran,
            throttle_permille,
            pause,
            per_page_part: steps.dirty_log + steps.copy,
            stalled,
            timer: trigger == Trigger::Timer,
        });
        let report = flow.report(hot.kept());
        if report != reported {
            stats.flow(&report);
            reported = report;
        }
        cap.pause = pause;
        cap.guest_paused = keep_paused;
        epoch += 1;
        started = Instant::now();
        let mut w = lock(&s.window);
        w.push(InFlight {
            epoch,
            staged_bytes: cap.staged_bytes(),
            pages: cap.pages(),
            trigger,
            pause,
            steps,
            throttle_permille,
            epoch_run: run,
            stall,
            resumed_at: started,
            in_flight_before,
            commit_seq: None,
            wire_bytes: 0,
            encodings: Default::default(),
            sent_at: None,
            send_started: None,
        });
        let (epochs, bytes) = (w.len(), w.bytes());
        drop(w);
        stats.in_flight(epochs, bytes);
        if tx.send(cap).is_err() {
            break; // the sender ended on an error it has recorded
        }
        if keep_paused {
            if !stay_paused(s, vm, epoch, hooks) {
                break;
            }
            started = Instant::now();
        }
    }
    finish(s, vm, &mut throttle, epoch, total_stall)
}

/// The epoch thread's last act: lift the throttle, say it is done.
fn finish<V: MigratableVm>(
    s: &Shared,
    vm: &Mutex<V>,
    throttle: &mut Throttle,
    epoch: u64,
    total_stall: Duration,
) -> (u64, Duration) {
    if let Err(e) = throttle.release(&mut *lock(vm)) {
        log::warn!("ft primary: cannot lift the vCPU throttle: {e}");
    }
    s.epoch_done.store(true, Ordering::SeqCst);
    s.changed.notify_all();
    (epoch, total_stall)
}

/// A pause asked for may have been withdrawn while its checkpoint waited for room in the
/// window: take it now (the checkpoint about to be captured pauses the guest), or capture an
/// ordinary one.
fn take_pause(s: &Shared) -> Trigger {
    let mut g = lock(&s.guest);
    if *g == GuestRun::PauseAsked {
        *g = GuestRun::Pausing;
        Trigger::Pause
    } else {
        Trigger::Timer
    }
}

/// The guest is paused after its checkpoint: says so, then waits for `resume_guest` (resumes
/// the guest, `true`) or the end of epochs (leaves it paused, `false`).
fn stay_paused<V: MigratableVm>(
    s: &Shared,
    vm: &Mutex<V>,
    epoch: u64,
    hooks: &dyn EpochHooks,
) -> bool {
    s.vm_paused.store(true, Ordering::SeqCst);
    let mut g = lock(&s.guest);
    *g = GuestRun::Paused;
    s.changed.notify_all();
    loop {
        if s.stop.load(Ordering::SeqCst) {
            return false;
        }
        if *g == GuestRun::ResumeAsked {
            break;
        }
        // A paused guest is a still copy: the scrub may compare it at its own pace.
        drop(g);
        scrub::while_guest_paused(&s.scrub, &*lock(vm), epoch, hooks);
        g = lock(&s.guest);
        if *g == GuestRun::ResumeAsked {
            break;
        }
        g = s
            .changed
            .wait_timeout(g, Duration::from_millis(10))
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    drop(g);
    if let Err(e) = lock(vm).resume() {
        s.fail(vm_err("resume")(e));
        return false;
    }
    s.vm_paused.store(false, Ordering::SeqCst);
    *lock(&s.guest) = GuestRun::Running;
    s.changed.notify_all();
    true
}

/// Waits until the epoch should end: `length` passed, or output is held and nothing is in
/// flight (output-triggered), or the guest is to pause; meanwhile the throttle stops the vCPUs
/// once they have used the epoch's run budget. `None` once stopped.
fn wait_epoch_end<V: MigratableVm>(
    s: &Shared,
    vm: &Mutex<V>,
    o: &PrimaryOptions,
    hooks: &dyn EpochHooks,
    started: Instant,
    length: Duration,
    throttle: &mut Throttle,
) -> Result<Option<Trigger>, CheckpointError> {
    loop {
        if s.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        {
            let mut g = lock(&s.guest);
            match *g {
                // Taken (Pausing) only once the checkpoint has room: see `take_pause`.
                GuestRun::PauseAsked => return Ok(Some(Trigger::Pause)),
                // Asked to resume a guest that is not paused (a pause that failed): nothing to do.
                GuestRun::ResumeAsked => {
                    *g = GuestRun::Running;
                    s.changed.notify_all();
                }
                GuestRun::Running | GuestRun::Pausing | GuestRun::Paused => {}
            }
        }
        let elapsed = started.elapsed();
        if elapsed >= length {
            return Ok(Some(Trigger::Timer));
        }
        let waiting = hooks.output_waiting();
        if waiting && lock(&s.window).is_empty() {
            return Ok(Some(Trigger::Output));
        }
        throttle.follow(&mut *lock(vm))?;
        let nap = o.poll_interval.min(length - elapsed).min(throttle.left());
        if waiting {
            // Output is held behind a checkpoint in flight: its ack ends this wait.
            let w = lock(&s.window);
            if !w.is_empty() {
                let _ = s.changed.wait_timeout(w, nap);
            }
        } else {
            // A gate holding output ends this wait at once.
            hooks.wait_output(nap);
        }
    }
}

/// Pause, take the dirty log, wait (paused) for room if the checkpoint would overflow the
/// backlog bound beside those in flight, copy into a staging buffer, save state, tell the
/// gates, resume (unless `keep_paused`), timing each step. The VM is running again when this
/// returns, unless resuming itself failed.
fn capture<V: MigratableVm + ?Sized>(
    vm: &mut V,
    s: &Shared,
    epoch: u64,
    hooks: &dyn EpochHooks,
    keep_paused: bool,
    pool: &std::sync::Arc<BufferPool>,
    hot: &mut HotPages,
) -> Result<(Captured, PauseSteps), CheckpointError> {
    let mut steps = PauseSteps::default();
    let t = Instant::now();
    // The vCPU threads read their own state as they park, while this thread goes on.
    vm.pause_for_capture().map_err(vm_err("pause"))?;
    steps.stop = t.elapsed();
    let cap = (|| {
        let t = Instant::now();
        let pfns = Captured::dirty_pages(vm, hot)?;
        steps.dirty_log = t.elapsed();
        let t = Instant::now();
        wait_for_room(s, pfns.len() as u64 * PAGE_SIZE as u64);
        steps.backlog_wait = t.elapsed();
        let mut cap = Captured::take(vm, epoch, pfns, pool, &mut steps)?;
        let t = Instant::now();
        hooks.epoch_captured(epoch);
        cap.set_extras(hooks.take_epoch_extras(epoch));
        // The replica scrub hashes its share while the guest is paused at this checkpoint
        // (bounded per pause, `crate::scrub`); counted with the gates' step.
        scrub::at_capture(&s.scrub, &*vm, &cap, hooks);
        steps.gates = t.elapsed();
        Ok(cap)
    })();
    // Resume even when the capture failed: a stopped guest is worse than an unprotected one.
    if !keep_paused || cap.is_err() {
        let t = Instant::now();
        vm.resume().map_err(vm_err("resume"))?;
        // The guest's pause ends when its vCPUs are let go, not when this thread next runs.
        steps.resume = match vm.resumed_at() {
            Some(at) if at >= t => at - t,
            _ => t.elapsed(),
        };
    }
    cap.map(|c| (c, steps))
}

/// Waits until `bytes` more fit in the backlog bound beside the checkpoints in flight, or none
/// is in flight, or checkpointing stops (the ack timeout bounds the wait).
fn wait_for_room(s: &Shared, bytes: u64) {
    let mut w = lock(&s.window);
    while !w.fits(bytes) && !s.stop.load(Ordering::SeqCst) {
        w = s
            .changed
            .wait_timeout(w, Duration::from_millis(1))
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}
