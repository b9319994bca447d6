//! The source side of a pre-copy migration.

use super::channel::{FrameReader, FrameWriter, Inbox, Waited};
use super::converge::AutoConverge;
use super::policy::{transfer_time, Convergence, ConvergencePolicy, StopReason};
use super::progress::{MigrationPhase, ProgressHandle};
use super::{error_chain, unexpected, vm_err, MigrationError};
use crate::bitmap::DirtyBitmap;
use crate::frame::{
    is_zero_page, Frame, Hello, PageBatch, StreamPurpose, FLAG_ACK_REQUESTED, PAGE_SIZE,
};
use crate::transport::Connection;
use crate::vm::MigratableVm;
use std::time::{Duration, Instant};

/// Wire bytes one data page costs (tag, page number, data), for downtime estimates.
const WIRE_PAGE: u64 = (PAGE_SIZE + 9) as u64;
/// How long to look for the peer's Abort after a write failed, to report its reason.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// Source-side settings.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Longest acceptable guest pause (the `downtime_ms` of the API).
    pub max_downtime: Duration,
    /// Most dirty-page rounds after the full pass before pausing anyway.
    pub max_rounds: u32,
    /// Rounds without a smaller dirty set before pausing anyway.
    pub stall_rounds: u32,
    /// Bound on each write and on the Hello handshake.
    pub io_timeout: Duration,
    /// Bound on the wait for the destination to restore the state and ack.
    pub commit_timeout: Duration,
    /// Pages per MemoryPages frame.
    pub batch_pages: usize,
    /// Auto-converge: slow a guest whose dirty set does not shrink, rather than pause it for
    /// longer at the end.
    pub auto_converge: bool,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            max_downtime: Duration::from_millis(300),
            max_rounds: 30,
            stall_rounds: 5,
            io_timeout: Duration::from_secs(30),
            commit_timeout: Duration::from_secs(60),
            batch_pages: 256,
            auto_converge: true,
        }
    }
}

/// What a successful migration did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SendReport {
    /// Dirty-page rounds after the full pass.
    pub rounds: u32,
    /// Why pre-copy ended.
    pub stop_reason: StopReason,
    /// Stream bytes sent.
    pub bytes_sent: u64,
    /// Pages sent (zero runs counted page by page; zero pages skipped in the full pass are not).
    pub pages_sent: u64,
    /// Pages sent while the guest was paused.
    pub final_dirty_pages: u64,
    /// Estimated downtime when pre-copy ended.
    pub estimated_downtime: Duration,
    /// Measured guest pause on the source, from pause until the destination's ack.
    pub downtime: Duration,
    /// Whole migration.
    pub total_time: Duration,
    /// Auto-converge's throttle when pre-copy ended, per mille of the vCPUs' time.
    pub throttle_permille: u16,
}

/// Migrates `vm` over `conn`. On success the VM is left paused: it now lives on the destination,
/// and the caller must mark it migrated and never resume it. On failure the VM runs as before
/// (resumed if it had been paused) unless the error is `SourceNotResumed`.
pub fn send_migration<V: MigratableVm + ?Sized>(
    vm: &mut V,
    conn: Box<dyn Connection>,
    opts: &SendOptions,
    progress: &ProgressHandle,
) -> Result<SendReport, MigrationError> {
    let mut s = Sender::new(vm, conn, opts, progress, Mode::Migrate)?;
    let result = s.finish_run();
    s.writer.shutdown();
    s.inbox.join();
    result
}

/// The channel an FT initial sync leaves open for the checkpoints that follow it.
pub(crate) struct SyncedChannel {
    pub(crate) writer: FrameWriter,
    pub(crate) inbox: Inbox,
    pub(crate) report: SendReport,
}

/// FT-enable: the same pre-copy rounds as a migration, announced as a fault-tolerance stream,
/// but it never hands over: once the backup has acked the full state the VM is resumed and dirty
/// logging stays on, so that the first checkpoint sends exactly what changed since.
/// `captured` runs while the VM is paused, after its state was saved (gates start epoch 1 there).
/// On failure the VM runs as before, dirty logging off, unless the error is `SourceNotResumed`.
pub(crate) fn ft_initial_sync<V: MigratableVm + ?Sized>(
    vm: &mut V,
    conn: Box<dyn Connection>,
    opts: &SendOptions,
    progress: &ProgressHandle,
    captured: &mut dyn FnMut(),
) -> Result<SyncedChannel, MigrationError> {
    let mut s = Sender::new(vm, conn, opts, progress, Mode::KeepRunning(captured))?;
    match s.finish_run() {
        Ok(report) => Ok(SyncedChannel {
            writer: s.writer,
            inbox: s.inbox,
            report,
        }),
        Err(e) => {
            s.writer.shutdown();
            s.inbox.join();
            Err(e)
        }
    }
}

/// Whether the source hands over at the end (migration) or resumes and goes on (FT).
enum Mode<'a> {
    Migrate,
    KeepRunning(&'a mut dyn FnMut()),
}

struct Sender<'a, V: MigratableVm + ?Sized> {
    vm: &'a mut V,
    mode: Mode<'a>,
    writer: FrameWriter,
    inbox: Inbox,
    opts: &'a SendOptions,
    progress: &'a ProgressHandle,
    paused: bool,
    dirty_log: bool,
    round: u32,
    pages_sent: u64,
    /// Time spent copying pages, for the bandwidth estimate.
    send_time: Duration,
    started: Instant,
    converge: AutoConverge,
}

impl<'a, V: MigratableVm + ?Sized> Sender<'a, V> {
    fn new(
        vm: &'a mut V,
        conn: Box<dyn Connection>,
        opts: &'a SendOptions,
        progress: &'a ProgressHandle,
        mode: Mode<'a>,
    ) -> Result<Self, MigrationError> {
        conn.set_write_timeout(Some(opts.io_timeout))
            .and_then(|()| conn.set_read_timeout(None))
            .map_err(MigrationError::Connection)?;
        let reader = FrameReader::new(conn.try_clone_box().map_err(MigrationError::Connection)?);
        let inbox = Inbox::spawn(reader)?;
        Ok(Sender {
            vm,
            mode,
            writer: FrameWriter::new(conn),
            inbox,
            opts,
            progress,
            paused: false,
            dirty_log: false,
            round: 0,
            pages_sent: 0,
            send_time: Duration::ZERO,
            started: Instant::now(),
            converge: AutoConverge::new(opts.auto_converge),
        })
    }

    /// Runs, then records the outcome in the progress view (unwinding on failure).
    fn finish_run(&mut self) -> Result<SendReport, MigrationError> {
        match self.run() {
            Ok(report) => {
                self.progress.complete(Some(report.downtime));
                Ok(report)
            }
            Err(e) => {
                let e = self.unwind(e);
                self.progress.fail(error_chain(&e));
                Err(e)
            }
        }
    }

    fn purpose(&self) -> StreamPurpose {
        match self.mode {
            Mode::Migrate => StreamPurpose::Migration,
            Mode::KeepRunning(_) => StreamPurpose::FaultTolerance,
        }
    }

    fn run(&mut self) -> Result<SendReport, MigrationError> {
        let hello = Frame::Hello(Hello::new(self.purpose(), self.vm.identity()));
        let seq = self.send(&hello, FLAG_ACK_REQUESTED)?;
        self.wait_ack(seq, self.opts.io_timeout, "the destination's Hello ack")?;

        // Before the first read, so that a page written during the full pass is sent again.
        self.vm
            .start_dirty_log()
            .map_err(vm_err("start_dirty_log"))?;
        self.dirty_log = true;
        self.set_phase(MigrationPhase::Precopy);
        let mut last_take = Instant::now();
        self.full_pass()?;

        let mut conv = Convergence::new(ConvergencePolicy {
            max_downtime: self.opts.max_downtime,
            max_rounds: self.opts.max_rounds,
            stall_rounds: self.opts.stall_rounds,
        });
        let (stop_reason, estimate, mut dirty) = loop {
            let dirty = self
                .vm
                .take_dirty_pages()
                .map_err(vm_err("take_dirty_pages"))?;
            let since = last_take.elapsed();
            last_take = Instant::now();
            let bandwidth = self.bandwidth();
            let estimate = transfer_time(dirty.count() * WIRE_PAGE, bandwidth);
            self.progress.update(|p| {
                p.dirty_pages = dirty.count();
                p.dirty_rate_pages_per_s =
                    (dirty.count() as f64 / since.as_secs_f64().max(1e-6)) as u64;
                p.bandwidth_bytes_per_s = bandwidth;
                p.estimated_downtime_ms = estimate.as_millis().min(u64::MAX.into()) as u64;
            });
            if let Some(reason) = conv.decide(self.round, dirty.count(), estimate) {
                log::info!(
                    "migration: pausing after {} dirty rounds ({reason:?}), {} pages left, estimate {estimate:?}",
                    self.round,
                    dirty.count()
                );
                break (reason, estimate, dirty);
            }
            self.converge.round(dirty.count());
            self.round += 1;
            self.progress.update(|p| {
                p.round = self.round;
                p.pages_this_round = 0;
            });
            self.dirty_pass(&dirty)?;
        };

        self.vm.pause().map_err(vm_err("pause"))?;
        // Paused whole now (never restart vCPUs here: a migrated source must stay stopped);
        // `resume` (FT) restarts the ones the throttle stopped with the rest.
        self.converge.forget();
        self.paused = true;
        let paused_at = Instant::now();
        self.round += 1;
        self.progress.update(|p| {
            p.phase = MigrationPhase::StopAndCopy;
            p.round = self.round;
            p.pages_this_round = 0;
        });
        // The set that made us stop has not been sent yet; add what was written since.
        let since = self
            .vm
            .take_dirty_pages()
            .map_err(vm_err("take_dirty_pages"))?;
        dirty.merge(&since);
        let final_pages = self.send_pages(&dirty)?;
        let state = self.vm.save_state().map_err(vm_err("save_state"))?;
        if let Mode::KeepRunning(captured) = &mut self.mode {
            captured();
        }
        for (index, data) in state.vcpus.iter().enumerate() {
            let index = u32::try_from(index)
                .map_err(|_| MigrationError::Protocol("too many vCPUs".into()))?;
            self.send(
                &Frame::VcpuState {
                    index,
                    data: data.clone(),
                },
                0,
            )?;
        }
        self.send(&Frame::DeviceState(state.devices.clone()), 0)?;
        let commit = Frame::Commit {
            vcpus: state.vcpus.len() as u32,
            pages: final_pages,
            info: None,
        };
        let seq = self.send(&commit, FLAG_ACK_REQUESTED)?;
        self.set_phase(MigrationPhase::Completing);
        self.wait_ack(
            seq,
            self.opts.commit_timeout,
            "the destination's restore ack",
        )?;
        let downtime = paused_at.elapsed();

        if let Mode::KeepRunning(_) = self.mode {
            // FT: the backup holds the state now; the guest runs on, and the dirty log (still on)
            // becomes the first checkpoint's page set.
            self.vm.resume().map_err(vm_err("resume"))?;
            self.paused = false;
            return Ok(self.report(stop_reason, final_pages, estimate, downtime));
        }
        if let Err(e) = self.vm.stop_dirty_log() {
            log::warn!(
                "migration: stop_dirty_log after success: {}",
                error_chain(&e)
            );
        }
        self.dirty_log = false;
        Ok(self.report(stop_reason, final_pages, estimate, downtime))
    }

    fn report(
        &self,
        stop_reason: StopReason,
        final_pages: u64,
        estimate: Duration,
        downtime: Duration,
    ) -> SendReport {
        SendReport {
            rounds: self.round - 1,
            stop_reason,
            bytes_sent: self.writer.bytes(),
            pages_sent: self.pages_sent,
            final_dirty_pages: final_pages,
            estimated_downtime: estimate,
            downtime,
            total_time: self.started.elapsed(),
            throttle_permille: self.converge.permille(),
        }
    }

    /// Round 0: every page that is not zero (the destination's fresh memory is zero already).
    fn full_pass(&mut self) -> Result<(), MigrationError> {
        let start = Instant::now();
        let mut batch = PageBatch::new();
        let mut page = [0u8; PAGE_SIZE];
        let mut sent = 0;
        for pfn in 0..self.vm.page_count() {
            self.vm
                .read_page(pfn, &mut page)
                .map_err(vm_err("read_page"))?;
            if !is_zero_page(&page) {
                batch.push_data(pfn, &page);
                if batch.page_count() as usize >= self.opts.batch_pages {
                    sent += self.flush(&mut batch)?;
                }
            }
        }
        sent += self.flush(&mut batch)?;
        self.send(&Frame::EndOfRound { pages: sent }, 0)?;
        self.send_time += start.elapsed();
        Ok(())
    }

    /// A dirty round, zero pages included (the destination holds an older copy of them).
    fn dirty_pass(&mut self, dirty: &DirtyBitmap) -> Result<(), MigrationError> {
        let start = Instant::now();
        let sent = self.send_pages(dirty)?;
        self.send(&Frame::EndOfRound { pages: sent }, 0)?;
        self.send_time += start.elapsed();
        Ok(())
    }

    fn send_pages(&mut self, dirty: &DirtyBitmap) -> Result<u64, MigrationError> {
        let mut batch = PageBatch::new();
        let mut page = [0u8; PAGE_SIZE];
        let mut sent = 0;
        for pfn in dirty.iter() {
            self.vm
                .read_page(pfn, &mut page)
                .map_err(vm_err("read_page"))?;
            batch.push_page(pfn, &page);
            if batch.page_count() as usize >= self.opts.batch_pages {
                sent += self.flush(&mut batch)?;
            }
        }
        sent += self.flush(&mut batch)?;
        Ok(sent)
    }

    fn flush(&mut self, batch: &mut PageBatch) -> Result<u64, MigrationError> {
        if batch.is_empty() {
            return Ok(0);
        }
        // Between batches the throttle follows its cycle (while the guest runs)...
        if !self.paused {
            self.converge
                .tick(&mut *self.vm)
                .map_err(vm_err("set_vcpus_running"))?;
        }
        // ...and an Abort from the destination is noticed.
        while let Some(f) = self.inbox.poll()? {
            match f.frame {
                Frame::Heartbeat { .. } => {}
                Frame::Abort { reason } => return Err(MigrationError::PeerAborted { reason }),
                other => return Err(unexpected("nothing during pre-copy", other.frame_type())),
            }
        }
        let frame = Frame::MemoryPages(std::mem::take(batch));
        self.send(&frame, 0)?;
        let n = match &frame {
            Frame::MemoryPages(b) => b.page_count(),
            _ => 0,
        };
        self.pages_sent += n;
        self.progress.update(|p| {
            p.pages += n;
            p.pages_this_round += n;
        });
        Ok(n)
    }

    /// Sends one frame in the current round; a write failure is explained by the peer's Abort
    /// when one is waiting.
    fn send(&mut self, frame: &Frame, flags: u8) -> Result<u64, MigrationError> {
        match self.writer.send(frame, u64::from(self.round), flags) {
            Ok(seq) => {
                let bytes = self.writer.bytes();
                self.progress.update(|p| p.bytes = bytes);
                Ok(seq)
            }
            Err(e @ MigrationError::Send(_)) => match self.inbox.wait(ABORT_GRACE) {
                Ok(Waited::Frame(f)) => match f.frame {
                    Frame::Abort { reason } => Err(MigrationError::PeerAborted { reason }),
                    _ => Err(e),
                },
                Ok(Waited::TimedOut) => Err(e),
                Err(MigrationError::PeerClosed) => Err(e),
                Err(other) => Err(other),
            },
            Err(e) => Err(e),
        }
    }

    fn wait_ack(
        &mut self,
        seq: u64,
        timeout: Duration,
        what: &'static str,
    ) -> Result<(), MigrationError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inbox.wait(left)? {
                Waited::TimedOut => return Err(MigrationError::Timeout { waiting_for: what }),
                Waited::Frame(f) => match f.frame {
                    Frame::Ack { seq: s } if s == seq => return Ok(()),
                    Frame::Ack { seq: s } => {
                        return Err(MigrationError::Protocol(format!(
                            "ack of frame {s} while waiting for {seq}"
                        )))
                    }
                    Frame::Abort { reason } => return Err(MigrationError::PeerAborted { reason }),
                    Frame::Heartbeat { .. } => {}
                    other => return Err(unexpected("Ack", other.frame_type())),
                },
            }
        }
    }

    /// Bytes per second measured over all page copying so far.
    fn bandwidth(&self) -> u64 {
        let secs = self.send_time.as_secs_f64();
        if secs <= 0.0 {
            return 0;
        }
        (self.writer.bytes() as f64 / secs) as u64
    }

    fn set_phase(&self, phase: MigrationPhase) {
        self.progress.update(|p| p.phase = phase);
    }

    /// After a failure: tell the destination (unless it already knows), resume the guest if we
    /// paused it, stop dirty logging. Returns the error to report.
    fn unwind(&mut self, e: MigrationError) -> MigrationError {
        let cause = error_chain(&e);
        log::warn!("migration failed: {cause}");
        if !e.peer_knows() {
            let reason = format!("source: {cause}");
            if let Err(a) = self
                .writer
                .send(&Frame::Abort { reason }, u64::from(self.round), 0)
            {
                log::debug!("migration: could not send Abort: {}", error_chain(&a));
            }
        }
        if self.dirty_log {
            if let Err(d) = self.vm.stop_dirty_log() {
                log::warn!(
                    "migration: stop_dirty_log after failure: {}",
                    error_chain(&d)
                );
            }
            self.dirty_log = false;
        }
        if !self.paused {
            if let Err(t) = self.converge.release(&mut *self.vm) {
                log::warn!("migration: cannot lift the throttle: {}", error_chain(&t));
            }
        }
        if self.paused {
            if let Err(source) = self.vm.resume() {
                log::error!(
                    "migration: source VM could not be resumed: {}",
                    error_chain(&source)
                );
                return MigrationError::SourceNotResumed { cause, source };
            }
            self.paused = false;
        }
        e
    }
}
