//! The primary side: FT initial sync, then epochs, each captured while paused and sent while the
//! guest runs on. Three threads share the work so that the guest never waits on the network:
//! the epoch thread (owns the VM: pause, capture, resume), the sender thread (frames a captured
//! checkpoint onto the stream, heartbeats when idle) and the ack thread (matches Acks to
//! checkpoints, releases outputs through the hooks, reports stats).
//!
//! Guest pause (`vm.pause` on the primary, [`FtPrimary::pause_guest`]): the epoch thread takes
//! one more checkpoint and leaves the guest paused after it; its Commit says so, so the backup
//! knows, and a backup that goes live from it comes up paused. No epochs run while paused
//! (nothing changes); heartbeats keep the pair alive. [`FtPrimary::resume_guest`] resumes the
//! guest and epochs go on; the backup learns it from the next checkpoint.

use super::capture::Captured;
use super::epoch::epoch_loop;
use super::flow::FlowOptions;
use super::hooks::EpochHooks;
use super::link::{Acked, LinkEstimate};
use super::scrub;
use super::sent_pages::SentPages;
use super::settings::{PairDiskMode, PairSettings};
use super::stats::{CheckpointStats, StatsSink};
use super::window::Window;
use super::{now_ms, CheckpointError};
use crate::frame::Frame;
use crate::migration::channel::{FrameWriter, Inbox, Waited};
use crate::migration::{
    error_chain, ft_initial_sync, open_ft_stream, MigrationError, OpenedStream, ProgressHandle,
    Role, SendOptions, SendReport,
};
use crate::scrub::{PrimaryScrub, ScrubOptions, ScrubStatus, VerifyTicket};
use crate::transport::Connection;
use crate::vm::MigratableVm;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default bound on the staged bytes of unacked checkpoints.
pub const DEFAULT_MAX_BACKLOG_BYTES: u64 = 64 << 20;

/// Primary-side settings.
#[derive(Debug, Clone)]
pub struct PrimaryOptions {
    /// The initial sync's pre-copy settings (its io_timeout also bounds each write).
    pub sync: SendOptions,
    /// Longest epoch.
    pub checkpoint_interval: Duration,
    /// How often the epoch thread looks at `output_waiting` (output-triggered epochs).
    pub poll_interval: Duration,
    /// Most unacked checkpoints (K).
    pub max_in_flight: usize,
    /// Most staged bytes of unacked checkpoints (B, `ft.enable`'s `max_backlog_bytes`): an
    /// epoch waits for room for the checkpoint flow control expects, and a checkpoint that turns
    /// out larger waits in its pause for acks; only a single checkpoint larger than B alone can
    /// exceed it (flow control sizes epochs to a quarter of it).
    pub max_backlog_bytes: u64,
    /// Flow control: epoch length and vCPU throttle.
    pub flow: FlowOptions,
    /// Heartbeat when nothing else was sent for this long.
    pub heartbeat_interval: Duration,
    /// An unacked checkpoint older than this ends checkpointing.
    pub ack_timeout: Duration,
    /// Bytes of last-sent page copies kept for delta encoding (capped at guest memory); 0 sends
    /// every dirty page whole.
    pub delta_cache_bytes: u64,
    /// How long [`FtPrimary::end`] waits for the backup to confirm that it discarded its copy.
    pub end_confirm_timeout: Duration,
    /// The replica scrub (`crate::scrub`): background rate and `ft.verify`'s pace.
    pub scrub: ScrubOptions,
}

impl Default for PrimaryOptions {
    fn default() -> Self {
        PrimaryOptions {
            sync: SendOptions::default(),
            checkpoint_interval: Duration::from_millis(25),
            poll_interval: Duration::from_millis(1),
            max_in_flight: 2,
            max_backlog_bytes: DEFAULT_MAX_BACKLOG_BYTES,
            flow: FlowOptions::default(),
            heartbeat_interval: Duration::from_millis(100),
            ack_timeout: Duration::from_secs(5),
            delta_cache_bytes: 64 << 20,
            end_confirm_timeout: Duration::from_millis(500),
            scrub: ScrubOptions::default(),
        }
    }
}

/// What a primary did, for the status view.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PrimaryReport {
    /// The initial sync.
    pub sync: SendReport,
    /// Checkpoints captured after the initial sync.
    pub captured: u64,
    /// Last checkpoint the backup acked (0: only the initial sync).
    pub committed: Option<u64>,
    /// Most checkpoints in flight at once.
    pub peak_in_flight: usize,
    /// Most staged bytes in flight at once.
    pub peak_in_flight_bytes: u64,
    /// Total time epochs waited for the window.
    pub total_stall: Duration,
}

/// What `stop` hands back: the VM (running, now unprotected), the report, and the error that
/// ended checkpointing early, if one did.
pub struct PrimaryExit<V> {
    /// The VM; running unless `error` says it could not be resumed.
    pub vm: V,
    /// The guest was left paused by `pause_guest`.
    pub guest_paused: bool,
    /// Figures.
    pub report: PrimaryReport,
    /// Why checkpointing stopped before `stop` was called.
    pub error: Option<CheckpointError>,
    /// [`FtPrimary::end`]: the backup confirmed that it discarded its copy and will never go
    /// live from it (`EndConfirmed`). Only then may the guest run alone without the arbiter.
    pub end_confirmed: bool,
}

/// The guest's run state as the epoch thread sees it; the pair asks, the epoch thread acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GuestRun {
    Running,
    /// `pause_guest`: the next checkpoint leaves the guest paused.
    PauseAsked,
    /// The epoch thread took the request: the checkpoint that pauses is under way.
    Pausing,
    Paused,
    /// `resume_guest`: the epoch thread resumes the guest and epochs go on.
    ResumeAsked,
}

/// State the three threads share.
pub(super) struct Shared {
    pub(super) guest: Mutex<GuestRun>,
    /// The epoch thread left the VM paused (after a `Trigger::Pause` checkpoint).
    pub(super) vm_paused: AtomicBool,
    pub(super) window: Mutex<Window>,
    /// The link's pace, learnt from acks (the ack thread writes, the epoch thread reads).
    pub(super) link: Mutex<LinkEstimate>,
    pub(super) changed: Condvar,
    pub(super) stop: AtomicBool,
    error: Mutex<Option<CheckpointError>>,
    committed: Mutex<Option<u64>>,
    /// The epoch thread has ended: no checkpoint will join the window any more.
    pub(super) epoch_done: AtomicBool,
    /// The backup answered our Abort with EndConfirmed.
    end_confirmed: AtomicBool,
    /// The pair ends on purpose: unacked checkpoints stop mattering at this deadline (the
    /// backup discards everything, or the caller must win the arbiter), so the ack thread
    /// waits for them no longer than that.
    end_deadline: Mutex<Option<Instant>>,
    /// The backup's Fence was honoured (lease given up): the sender answers it, then stops.
    fenced: Mutex<Option<u64>>,
    /// The replica scrub.
    pub(super) scrub: Arc<PrimaryScrub>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking engine thread is reported through its join; the data stays usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Records the first error and stops everything.
    pub(super) fn fail(&self, e: CheckpointError) {
        let why = error_chain(&e);
        log::warn!("ft primary: {why}");
        let mut slot = lock(&self.error);
        if slot.is_none() {
            *slot = Some(e);
        }
        drop(slot);
        self.stop.store(true, Ordering::SeqCst);
        self.changed.notify_all();
        self.scrub.end(&format!("checkpointing stopped: {why}"));
    }

    pub(super) fn failed(&self) -> bool {
        lock(&self.error).is_some()
    }
}

/// A running FT primary.
pub struct FtPrimary<V> {
    shared: Arc<Shared>,
    vm: Option<Arc<Mutex<V>>>,
    conn: Box<dyn Connection>,
    sync: SendReport,
    end_confirm_timeout: Duration,
    epoch_thread: Option<JoinHandle<(u64, Duration)>>,
    sender_thread: Option<JoinHandle<FrameWriter>>,
    ack_thread: Option<JoinHandle<Inbox>>,
}

impl<V: MigratableVm + Send + 'static> FtPrimary<V> {
    /// Opens the FT stream over `conn` ([`open_ft_stream`], with settings taken from `opts` and
    /// shared disks), then as [`FtPrimary::start_opened`].
    pub fn start(
        vm: V,
        conn: Box<dyn Connection>,
        opts: &PrimaryOptions,
        hooks: Arc<dyn EpochHooks>,
        stats: Arc<dyn StatsSink>,
    ) -> Result<FtPrimary<V>, Box<(V, CheckpointError)>> {
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        // A VM with replicated disks announces them: the initial sync copies them.
        let mut vm = vm;
        let mut identity = vm.identity();
        identity.disks = vm.disks().map(|d| d.list()).unwrap_or_default();
        let pair = PairSettings {
            disk_mode: if identity.disks.is_empty() {
                PairDiskMode::Shared
            } else {
                PairDiskMode::Replicated
            },
            failure_timeout_ms: ms(opts.ack_timeout),
            heartbeat_interval_ms: ms(opts.heartbeat_interval),
            checkpoint_interval_ms: ms(opts.checkpoint_interval),
            arbiter_id: None,
        };
        match open_ft_stream(conn, identity, pair.to_json(), opts.sync.io_timeout) {
            Ok(stream) => Self::start_opened(vm, stream, opts, hooks, stats),
            Err(e) => Err(Box::new((vm, CheckpointError::InitialSync(e)))),
        }
    }

    /// Runs the FT initial sync on a stream the backup accepted (blocking), then starts epochs.
    /// On error the VM is returned running and unprotected, with the cause.
    pub fn start_opened(
        mut vm: V,
        stream: OpenedStream,
        opts: &PrimaryOptions,
        hooks: Arc<dyn EpochHooks>,
        stats: Arc<dyn StatsSink>,
    ) -> Result<FtPrimary<V>, Box<(V, CheckpointError)>> {
        let control = match stream.control.try_clone_box() {
            Ok(c) => c,
            Err(e) => {
                stream.close();
                let e = CheckpointError::InitialSync(MigrationError::Connection(e));
                return Err(Box::new((vm, e)));
            }
        };
        let sent_pages = SentPages::new(opts.delta_cache_bytes, vm.page_count());
        let progress = ProgressHandle::new(Role::Source);
        let mut captured = || hooks.epoch_captured(0);
        let synced = match ft_initial_sync(&mut vm, stream, &opts.sync, &progress, &mut captured) {
            Ok(s) => s,
            Err(e) => return Err(Box::new((vm, CheckpointError::InitialSync(e)))),
        };
        hooks.epoch_committed(0);
        let shared = Arc::new(Shared {
            guest: Mutex::new(GuestRun::Running),
            vm_paused: AtomicBool::new(false),
            window: Mutex::new(Window::new(opts.max_in_flight, opts.max_backlog_bytes)),
            link: Mutex::new(LinkEstimate::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            error: Mutex::new(None),
            committed: Mutex::new(Some(0)),
            epoch_done: AtomicBool::new(false),
            end_confirmed: AtomicBool::new(false),
            end_deadline: Mutex::new(None),
            fenced: Mutex::new(None),
            scrub: Arc::new(PrimaryScrub::new(opts.scrub.clone(), stats.clone())),
        });
        let vm = Arc::new(Mutex::new(vm));
        let mut p = FtPrimary {
            shared: shared.clone(),
            vm: Some(vm.clone()),
            conn: control,
            sync: synced.report,
            end_confirm_timeout: opts.end_confirm_timeout,
            epoch_thread: None,
            sender_thread: None,
            ack_thread: None,
        };
        let (tx, rx) = mpsc::channel::<Captured>();
        let spawned = (|| -> std::io::Result<()> {
            let (s, o) = (shared.clone(), opts.clone());
            let (h, st) = (hooks.clone(), stats.clone());
            p.ack_thread = Some(
                std::thread::Builder::new()
                    .name("ft-ack".into())
                    .spawn(move || ack_loop(&s, synced.inbox, &o, &*h, &*st))?,
            );
            let (s, o) = (shared.clone(), opts.clone());
            let writer = synced.writer;
            let h = hooks.clone();
            p.sender_thread = Some(
                std::thread::Builder::new()
                    .name("ft-send".into())
                    .spawn(move || send_loop(&s, writer, rx, &o, &*h, sent_pages))?,
            );
            let (s, o) = (shared.clone(), opts.clone());
            p.epoch_thread = Some(
                std::thread::Builder::new()
                    .name("ft-epoch".into())
                    .spawn(move || epoch_loop(&s, &vm, tx, &o, &*hooks, &*stats))?,
            );
            Ok(())
        })();
        if let Err(e) = spawned {
            shared.fail(CheckpointError::Thread(format!("cannot start: {e}")));
        }
        Ok(p)
    }

    /// The initial sync's report.
    pub fn sync_report(&self) -> &SendReport {
        &self.sync
    }

    /// Whether checkpointing has stopped on an error (the caller's cue to arbitrate).
    pub fn has_failed(&self) -> bool {
        self.shared.failed()
    }

    /// The error that stopped checkpointing, with its causes, once one did.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.error).as_ref().map(|e| error_chain(e))
    }

    /// The backup's reason, once checkpointing stopped on the backup's Abort (a withdrawal,
    /// `super::is_withdrawal`, lets the pair end without arbitration).
    pub fn backup_abort(&self) -> Option<String> {
        match lock(&self.shared.error).as_ref() {
            Some(CheckpointError::Stream(MigrationError::PeerAborted { reason })) => {
                Some(reason.clone())
            }
            _ => None,
        }
    }

    /// The last checkpoint the backup acked (0 is the initial sync).
    pub fn committed(&self) -> Option<u64> {
        *lock(&self.shared.committed)
    }

    /// Checkpoints in flight now.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.window).len()
    }

    /// `ft.verify`: starts a full replica scrub pass (or joins the one under way); the ticket
    /// waits for its report ([`crate::scrub`]).
    pub fn verify(&self) -> VerifyTicket {
        self.shared.scrub.verify()
    }

    /// The replica scrub's figures.
    pub fn scrub_status(&self) -> ScrubStatus {
        self.shared.scrub.status()
    }

    /// Pauses the guest with a checkpoint that records it paused (the backup then knows), and
    /// keeps it paused, epochs stopped, until [`FtPrimary::resume_guest`]. Waits until the guest
    /// is paused and that checkpoint captured (not acked), at most `timeout`.
    pub fn pause_guest(&self, timeout: Duration) -> Result<(), CheckpointError> {
        self.ask_guest(GuestRun::PauseAsked, GuestRun::Paused, timeout)
    }

    /// Resumes a guest paused by [`FtPrimary::pause_guest`]; epochs go on. Waits until it runs,
    /// at most `timeout`.
    pub fn resume_guest(&self, timeout: Duration) -> Result<(), CheckpointError> {
        self.ask_guest(GuestRun::ResumeAsked, GuestRun::Running, timeout)
    }

    /// Whether the epoch thread has left the guest paused (`pause_guest`).
    pub fn guest_paused(&self) -> bool {
        self.shared.vm_paused.load(Ordering::SeqCst)
    }

    fn ask_guest(
        &self,
        ask: GuestRun,
        done: GuestRun,
        timeout: Duration,
    ) -> Result<(), CheckpointError> {
        let s = &self.shared;
        let mut g = lock(&s.guest);
        if *g == done {
            return Ok(());
        }
        *g = ask;
        drop(g);
        s.changed.notify_all();
        let deadline = Instant::now() + timeout;
        let mut g = lock(&s.guest);
        loop {
            if *g == done {
                return Ok(());
            }
            if s.failed() || s.epoch_done.load(Ordering::SeqCst) {
                return Err(CheckpointError::Thread(format!(
                    "checkpointing stopped before the guest was {done:?}"
                )));
            }
            let now = Instant::now();
            // Once the epoch thread took a pause, it finishes (or the engine fails, which its
            // own timeouts bound): waiting on is the only answer that tells the truth.
            if now >= deadline && *g != GuestRun::Pausing {
                // Withdrawn, so that the guest does not pause (or resume) later while the
                // caller was told it did not.
                if *g == ask {
                    *g = match ask {
                        GuestRun::PauseAsked => GuestRun::Running,
                        _ => GuestRun::Paused,
                    };
                }
                return Err(CheckpointError::Thread(format!(
                    "the guest was not {done:?} within {timeout:?}; the request is withdrawn"
                )));
            }
            let wait = deadline
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(10));
            g = s
                .changed
                .wait_timeout(g, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Ends epochs, waits (up to the ack timeout) for in-flight checkpoints to be acked, closes
    /// the stream and hands back the VM, running (paused if `pause_guest` paused it) and no
    /// longer protected. The backup sees the
    /// stream close, which looks the same as this process dying; use [`FtPrimary::end`] when the
    /// pair ends on purpose.
    pub fn stop(self) -> Result<PrimaryExit<V>, CheckpointError> {
        self.finish(None)
    }

    /// As [`FtPrimary::stop`], but first tells the backup, with an Abort naming `reason`, that
    /// the pair is ending on purpose (FT disabled, guest powered off), so that it discards its
    /// copy rather than going live: a crash closes the stream without one. Waits (at most
    /// `end_confirm_timeout`) for the backup's EndConfirmed: [`PrimaryExit::end_confirmed`]
    /// says whether it came. Without it the Abort may never have arrived, and the guest must
    /// not run alone before this member wins the next generation at the arbiter.
    pub fn end(self, reason: &str) -> Result<PrimaryExit<V>, CheckpointError> {
        self.finish(Some(reason))
    }

    fn finish(mut self, reason: Option<&str>) -> Result<PrimaryExit<V>, CheckpointError> {
        // Ending on purpose is bounded: the backup either confirms within the timeout or the
        // caller must win the arbiter, and a backup that lost the link claims after its failure
        // timeout, so the primary must not spend longer than that on a blocked stream.
        let deadline = reason.map(|_| Instant::now() + self.end_confirm_timeout);
        *lock(&self.shared.end_deadline) = deadline;
        self.shared.scrub.end("the pair is ending");
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let join_err = |what: &str| CheckpointError::Thread(format!("{what} panicked"));
        let (captured, total_stall) = match self.epoch_thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => {
                self.shared.fail(join_err("ft-epoch"));
                (0, Duration::ZERO)
            }
            None => (0, Duration::ZERO),
        };
        // Once the backup has our Abort it closes the stream; the ack thread seeing that is
        // the pair ending as asked, not an error.
        let mut told = false;
        if let (Some(deadline), Some(t)) = (deadline, &self.sender_thread) {
            // A write stuck on a dead link would hold the join up to the I/O timeout.
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if !t.is_finished() {
                log::warn!("ft primary: the stream is blocked; ending without telling the backup");
                let _ = self.conn.shutdown(std::net::Shutdown::Both);
            }
        }
        match self.sender_thread.take().map(JoinHandle::join) {
            Some(Ok(mut writer)) => {
                if let Some(deadline) = deadline {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = self
                        .conn
                        .set_write_timeout(Some(left.max(Duration::from_millis(1))));
                }
                if let Some(reason) = reason.filter(|_| !self.shared.failed()) {
                    let abort = Frame::Abort {
                        reason: reason.to_string(),
                    };
                    match writer.send(&abort, 0, 0) {
                        Ok(_) => told = true,
                        Err(e) => {
                            log::warn!("ft primary: cannot tell the backup: {}", error_chain(&e))
                        }
                    }
                }
            }
            Some(Err(_)) => self.shared.fail(join_err("ft-send")),
            None => {}
        }
        let inbox = self.ack_thread.take().map(JoinHandle::join);
        if let (Some(Ok(inbox)), Some(deadline)) = (&inbox, deadline) {
            if told {
                wait_end_confirmed(&self.shared, inbox, deadline);
            }
        }
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        match inbox {
            Some(Ok(mut inbox)) => inbox.join(),
            Some(Err(_)) => self.shared.fail(join_err("ft-ack")),
            None => {}
        }
        let vm = self
            .vm
            .take()
            .and_then(|vm| Arc::try_unwrap(vm).ok())
            .ok_or_else(|| CheckpointError::Thread("VM still shared after join".into()))?
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        let w = lock(&self.shared.window);
        let report = PrimaryReport {
            sync: self.sync.clone(),
            captured,
            committed: *lock(&self.shared.committed),
            peak_in_flight: w.peak_count,
            peak_in_flight_bytes: w.peak_bytes,
            total_stall,
        };
        drop(w);
        let guest_paused = self.shared.vm_paused.load(Ordering::SeqCst);
        Ok(PrimaryExit {
            vm,
            guest_paused,
            report,
            error: lock(&self.shared.error).take().filter(|_| !told),
            end_confirmed: told && self.shared.end_confirmed.load(Ordering::SeqCst),
        })
    }
}

/// After our Abort: reads what the backup still sends until its EndConfirmed, the stream's end,
/// or `deadline`.
fn wait_end_confirmed(s: &Shared, inbox: &Inbox, deadline: Instant) {
    while !s.end_confirmed.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::warn!("ft primary: the backup did not confirm the end of the pair in time");
            return;
        }
        match inbox.wait(left) {
            Ok(Waited::Frame(f)) if f.frame == Frame::EndConfirmed => {
                s.end_confirmed.store(true, Ordering::SeqCst);
            }
            Ok(Waited::Frame(_) | Waited::TimedOut) => {}
            Err(e) => {
                log::warn!(
                    "ft primary: the stream ended before the backup confirmed the end: {}",
                    error_chain(&e)
                );
                return;
            }
        }
    }
}

/// Frames captured checkpoints onto the stream; heartbeats when idle.
fn send_loop(
    s: &Shared,
    mut writer: FrameWriter,
    rx: mpsc::Receiver<Captured>,
    o: &PrimaryOptions,
    hooks: &dyn EpochHooks,
    mut sent_pages: SentPages,
) -> FrameWriter {
    let mut last_sent = Instant::now();
    let mut last_epoch = 0;
    loop {
        if let Some(generation) = lock(&s.fenced).take() {
            // ft.promote: the lease is given up and no write is in flight; say so, and stop.
            // Recorded before the Fence goes out: the backup answers it with an Abort, which
            // the ack thread could otherwise record first as why the pair ended.
            s.fail(CheckpointError::Fenced { generation });
            let _ = writer.send(&Frame::Fence { generation }, last_epoch, 0);
            return writer;
        }
        if s.failed() {
            return writer;
        }
        let wait = o
            .heartbeat_interval
            .saturating_sub(last_sent.elapsed())
            .max(Duration::from_millis(1));
        let r = match rx.recv_timeout(wait) {
            Ok(cap) => {
                last_epoch = cap.epoch;
                send_checkpoint(s, &mut writer, &cap, o, &mut sent_pages)
                    .and_then(|()| scrub::send_digests(&s.scrub, &mut writer, cap.epoch))
            }
            // A guest left paused: digests of its checkpoint go out as they are hashed.
            Err(RecvTimeoutError::Timeout) if s.scrub.has_ready(last_epoch) => {
                scrub::send_digests(&s.scrub, &mut writer, last_epoch)
            }
            Err(RecvTimeoutError::Timeout) if last_sent.elapsed() >= o.heartbeat_interval => {
                let hb = Frame::Heartbeat {
                    timestamp_ms: now_ms(),
                };
                let sent = writer.send(&hb, last_epoch, 0).map(|_| ());
                if sent.is_ok() {
                    hooks.heartbeat_sent();
                }
                sent
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return writer,
        };
        if let Err(e) = r {
            s.fail(CheckpointError::Stream(e));
            return writer;
        }
        last_sent = Instant::now();
    }
}

fn send_checkpoint(
    s: &Shared,
    w: &mut FrameWriter,
    cap: &Captured,
    o: &PrimaryOptions,
    sent_pages: &mut SentPages,
) -> Result<(), MigrationError> {
    let before = w.bytes();
    let started = Instant::now();
    let counted = sent_pages.counts;
    let pages = cap.send_body(w, o.sync.batch_pages, sent_pages)?;
    let (commit, flags) = cap.commit_frame(pages);
    // Recorded before the write: the ack may be read before this thread runs again.
    if let Some(e) = lock(&s.window).get_mut(cap.epoch) {
        e.commit_seq = Some(w.next_seq());
        e.wire_bytes = w.bytes() - before + COMMIT_WIRE_LEN;
        e.encodings = sent_pages.counts.since(&counted);
        e.sent_at = Some(Instant::now());
        e.send_started = Some(started);
    }
    w.queue(&commit, cap.epoch, flags)?;
    w.flush()
}

/// Header plus an FT Commit's payload (u32 vCPUs, u64 pages, CommitInfo: u64 pause, u8 flags).
const COMMIT_WIRE_LEN: u64 = crate::frame::HEADER_LEN as u64 + 21;

/// Matches Acks to checkpoints in order; returns the inbox so that `stop` can join its thread.
fn ack_loop(
    s: &Shared,
    inbox: Inbox,
    o: &PrimaryOptions,
    hooks: &dyn EpochHooks,
    stats: &dyn StatsSink,
) -> Inbox {
    let tick = Duration::from_millis(10);
    loop {
        if s.failed() {
            return inbox;
        }
        let ending_past = lock(&s.end_deadline).is_some_and(|d| Instant::now() >= d);
        if s.epoch_done.load(Ordering::SeqCst) && (ending_past || lock(&s.window).is_empty()) {
            return inbox;
        }
        match inbox.wait(tick) {
            Ok(Waited::Frame(f)) => {
                hooks.on_peer_frame(f.frame.frame_type());
                let r = match f.frame {
                    Frame::Ack { seq } => on_ack(s, f.epoch, seq, hooks, stats),
                    Frame::Heartbeat { .. } => Ok(()),
                    Frame::Fence { generation } => {
                        hooks.fence(generation);
                        *lock(&s.fenced) = Some(generation);
                        Ok(())
                    }
                    Frame::ScrubResult(r) => scrub::on_result(&s.scrub, f.epoch, &r),
                    // Only ever after our Abort: everything before it was acked already.
                    Frame::EndConfirmed => {
                        s.end_confirmed.store(true, Ordering::SeqCst);
                        return inbox;
                    }
                    Frame::Abort { reason } => Err(MigrationError::PeerAborted { reason }.into()),
                    other => Err(crate::migration::unexpected(
                        "Ack or Heartbeat",
                        other.frame_type(),
                    )
                    .into()),
                };
                if let Err(e) = r {
                    s.fail(e);
                    return inbox;
                }
            }
            Ok(Waited::TimedOut) => {}
            Err(e) => {
                s.fail(e.into());
                return inbox;
            }
        }
        let w = lock(&s.window);
        if let Some((epoch, Some(sent))) = w.front().map(|e| (e.epoch, e.sent_at)) {
            if sent.elapsed() > o.ack_timeout {
                drop(w);
                s.fail(CheckpointError::AckTimeout {
                    epoch,
                    waited: sent.elapsed(),
                });
                return inbox;
            }
        }
    }
}

fn on_ack(
    s: &Shared,
    epoch: u64,
    seq: u64,
    hooks: &dyn EpochHooks,
    stats: &dyn StatsSink,
) -> Result<(), CheckpointError> {
    let acked_at = Instant::now();
    let mut w = lock(&s.window);
    let e = match w.front() {
        Some(e) if e.epoch == epoch && e.commit_seq == Some(seq) => w.pop_front(),
        front => {
            return Err(CheckpointError::Protocol(format!(
                "ack of frame {seq} in epoch {epoch}, oldest unacked checkpoint is {:?}",
                front.map(|e| (e.epoch, e.commit_seq))
            )))
        }
    };
    let (epochs, bytes) = (w.len(), w.bytes());
    drop(w);
    let Some(e) = e else {
        s.changed.notify_all();
        return Ok(());
    };
    // Output held behind this checkpoint is what a client waits for: commit first (under the
    // renewed lease), the bookkeeping after.
    *lock(&s.committed) = Some(e.epoch);
    if let Some(sent) = e.sent_at {
        hooks.lease_renewed(sent);
    }
    hooks.epoch_committed(e.epoch);
    s.changed.notify_all();
    stats.in_flight(epochs, bytes);
    if let Some(send_started) = e.send_started {
        lock(&s.link).acked(&Acked {
            wire_bytes: e.wire_bytes,
            pages: e.pages,
            send_started,
            acked_at,
        });
    }
    stats.checkpoint_committed(&CheckpointStats {
        encodings: e.encodings,
        epoch: e.epoch,
        trigger: e.trigger,
        pause: e.pause,
        steps: e.steps,
        throttle_permille: e.throttle_permille,
        epoch_run: e.epoch_run,
        stall: e.stall,
        pages: e.pages,
        bytes: e.wire_bytes,
        send: e.sent_at.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(e.resumed_at)
        }),
        ack_latency: acked_at.saturating_duration_since(e.resumed_at),
        in_flight_before: e.in_flight_before,
    });
    Ok(())
}
