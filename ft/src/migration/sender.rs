//! The source side of a pre-copy migration.

use super::channel::{FrameReader, FrameWriter, Inbox, Waited};
use super::handover::{self, Claimed, HandoverArbiter, Terms, Unsettled};
use super::policy::{transfer_time, Convergence, ConvergencePolicy, StopReason};
use super::progress::{MigrationPhase, ProgressHandle};
use super::{error_chain, unexpected, vm_err, MigrationError};
use crate::bitmap::DirtyBitmap;
use crate::disk::{DiskCopy, DiskInfo, DiskProgress, BLOCK_SIZE};
use crate::frame::{
    is_zero_page, Frame, Hello, PageBatch, StreamPurpose, FLAG_ACK_REQUESTED, PAGE_SIZE,
};
use crate::transport::Connection;
use crate::vm::MigratableVm;
use crate::vm::VmIdentity;
use std::time::{Duration, Instant};

/// Wire bytes one data page costs (tag, page number, data), for downtime estimates.
const WIRE_PAGE: u64 = (PAGE_SIZE + 9) as u64;
/// Wire bytes one disk block costs (tag, block number, length, data).
const WIRE_BLOCK: u64 = (BLOCK_SIZE + 11) as u64;
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
    /// Pages per MemoryPages frame (and disk blocks per DiskBlocks frame).
    pub batch_pages: usize,
    /// Where an FT initial sync shows how far its copy of replicated disks has come.
    pub disk_progress: DiskProgress,
    /// Hand over through this arbiter (`handover`); the destination must be given the same.
    pub arbiter: Option<HandoverArbiter>,
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
            disk_progress: DiskProgress::new(),
            arbiter: None,
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
    /// What proved that the destination runs the VM.
    pub confirmed_by: Confirmation,
}

/// What proved that the destination runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confirmation {
    /// Its ack of the final state.
    Ack,
    /// The ack was lost, but the destination holds the hand-over's generation at the arbiter.
    Arbiter {
        /// The generation it holds.
        generation: u64,
    },
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

/// An FT stream whose Hello the backup has accepted: it built its replica and agreed to the
/// pair's settings. The initial sync continues on it.
pub struct OpenedStream {
    pub(crate) control: Box<dyn Connection>,
    pub(crate) writer: FrameWriter,
    pub(crate) inbox: Inbox,
    /// The disks the Hello announced: the initial sync copies exactly these.
    pub(crate) disks: Vec<DiskInfo>,
}

impl OpenedStream {
    /// Closes it without syncing (the caller changed its mind).
    pub fn close(mut self) {
        self.writer.shutdown();
        let _ = self.control.shutdown(std::net::Shutdown::Both);
        self.inbox.join();
    }
}

impl std::fmt::Debug for OpenedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenedStream")
    }
}

/// Opens an FT stream: sends the Hello (the VM's identity and the pair's settings, JSON) and
/// waits up to `timeout` for the backup's ack, which it gives once its replica is built and the
/// settings agree. A refusal is the peer's Abort, with its reason; nothing of the VM was sent.
pub fn open_ft_stream(
    conn: Box<dyn Connection>,
    identity: VmIdentity,
    pair: String,
    timeout: Duration,
) -> Result<OpenedStream, MigrationError> {
    conn.set_write_timeout(Some(timeout))
        .and_then(|()| conn.set_read_timeout(None))
        .map_err(MigrationError::Connection)?;
    let control = conn.try_clone_box().map_err(MigrationError::Connection)?;
    let reader = FrameReader::new(conn.try_clone_box().map_err(MigrationError::Connection)?);
    let mut inbox = Inbox::spawn(reader)?;
    let mut writer = FrameWriter::new(conn);
    let disks = identity.disks.clone();
    let hello = Frame::Hello(Hello::fault_tolerance(identity, pair));
    let acked = writer
        .send(&hello, 0, FLAG_ACK_REQUESTED)
        .and_then(|seq| await_ack(&inbox, seq, timeout, "the backup's Hello ack"));
    match acked {
        Ok(()) => Ok(OpenedStream {
            control,
            writer,
            inbox,
            disks,
        }),
        Err(e) => {
            writer.shutdown();
            let _ = control.shutdown(std::net::Shutdown::Both);
            inbox.join();
            Err(e)
        }
    }
}

/// FT-enable: the same pre-copy rounds as a migration, on a stream whose Hello the backup
/// accepted ([`open_ft_stream`]), but it never hands over: once the backup has acked the full
/// state the VM is resumed and dirty logging stays on, so that the first checkpoint sends
/// exactly what changed since. A VM with replicated disks (`MigratableVm::disks`, announced in
/// the Hello) has them copied in the same rounds (`crate::disk`). `captured` runs while the VM
/// is paused, after its state was saved (gates start epoch 1 there). On failure the VM runs as before, dirty logging off,
/// unless the error is `SourceNotResumed`.
pub(crate) fn ft_initial_sync<V: MigratableVm + ?Sized>(
    vm: &mut V,
    stream: OpenedStream,
    opts: &SendOptions,
    progress: &ProgressHandle,
    captured: &mut dyn FnMut(),
) -> Result<SyncedChannel, MigrationError> {
    let mut s = Sender::opened(vm, stream, opts, progress, captured)?;
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

/// How many pages the full pass scans between looks at the keep-alive clock.
const KEEPALIVE_CHECK_PAGES: u64 = 256;

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
    /// The replicated disks' copy, once started.
    disks: Option<DiskCopy>,
    round: u32,
    pages_sent: u64,
    /// Time spent copying pages, for the bandwidth estimate.
    send_time: Duration,
    /// The Hello was sent and acked already ([`open_ft_stream`]).
    hello_done: bool,
    /// The disks the Hello announced (the FT stream's opener sent it).
    announced: Vec<DiskInfo>,
    /// The final Commit was handed to the stream: from here on a failure leaves the peer
    /// possibly holding the whole state.
    commit_sent: bool,
    /// When the last frame went out, for keep-alives during long silent stretches.
    last_sent: Instant,
    started: Instant,
    /// The hand-over's terms, when it goes through an arbiter.
    terms: Option<Terms>,
    /// Migration: the Commit has started to leave, so the destination may run the VM; from
    /// here on the source never resumes without knowing it does not (`handover`).
    committed: Option<Committing>,
}

/// What the report needs once the final state has gone out.
#[derive(Clone, Copy)]
struct Committing {
    stop_reason: StopReason,
    final_pages: u64,
    estimate: Duration,
    paused_at: Instant,
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
            disks: None,
            round: 0,
            pages_sent: 0,
            send_time: Duration::ZERO,
            hello_done: false,
            announced: Vec::new(),
            commit_sent: false,
            last_sent: Instant::now(),
            started: Instant::now(),
            terms: None,
            committed: None,
        })
    }

    /// An FT sender on an opened stream.
    fn opened(
        vm: &'a mut V,
        stream: OpenedStream,
        opts: &'a SendOptions,
        progress: &'a ProgressHandle,
        captured: &'a mut dyn FnMut(),
    ) -> Result<Self, MigrationError> {
        stream
            .control
            .set_write_timeout(Some(opts.io_timeout))
            .map_err(MigrationError::Connection)?;
        Ok(Sender {
            vm,
            mode: Mode::KeepRunning(captured),
            writer: stream.writer,
            inbox: stream.inbox,
            opts,
            progress,
            paused: false,
            dirty_log: false,
            disks: None,
            round: 0,
            pages_sent: 0,
            send_time: Duration::ZERO,
            hello_done: true,
            announced: stream.disks,
            commit_sent: false,
            last_sent: Instant::now(),
            started: Instant::now(),
            terms: None,
            committed: None,
        })
    }

    /// Runs, then records the outcome in the progress view (unwinding on failure).
    fn finish_run(&mut self) -> Result<SendReport, MigrationError> {
        match self.run() {
            Ok(report) => {
                self.progress.complete(Some(report.downtime));
                Ok(report)
            }
            Err(e) => match (self.committed, &self.mode) {
                (Some(c), Mode::Migrate) => self.settle(e, c),
                _ => {
                    let mut e = self.unwind(e);
                    // FT initial sync: a peer that aborted said it did not take the state; any
                    // other failure after the Commit leaves that open.
                    if self.commit_sent && !matches!(e, MigrationError::PeerAborted { .. }) {
                        e = MigrationError::CommitUnconfirmed {
                            source: Box::new(e),
                        };
                    }
                    self.progress.fail(error_chain(&e));
                    Err(e)
                }
            },
        }
    }

    /// The final state left and no ack came (`e` says why): who runs the VM? See `handover`.
    fn settle(&mut self, e: MigrationError, c: Committing) -> Result<SendReport, MigrationError> {
        let cause = error_chain(&e);
        log::warn!("migration: the final state was sent, but {cause}");
        let (Some(terms), Some(arbiter)) = (self.terms.clone(), self.opts.arbiter.clone()) else {
            // The destination's Abort: it will not run the VM (it never does after aborting).
            if matches!(e, MigrationError::PeerAborted { .. }) {
                let e = self.unwind(e);
                self.progress.fail(error_chain(&e));
                return Err(e);
            }
            return Err(self.in_doubt(e, None));
        };
        self.set_phase(MigrationPhase::Settling);
        let generation = terms.generation;
        match handover::claim(&*arbiter.0, generation, &terms.source_claim(&cause)) {
            Claimed::Won => {
                log::warn!("migration: won generation {generation}: the VM runs here again");
                let e = match self.unwind(e) {
                    e @ MigrationError::SourceNotResumed { .. } => e,
                    e => MigrationError::TookBack {
                        generation,
                        cause: Box::new(e),
                    },
                };
                self.progress.fail(error_chain(&e));
                Err(e)
            }
            Claimed::Lost(h) if terms.is_destination(&h) => {
                log::info!("migration: the ack was lost, but the destination holds {h}");
                self.stop_dirty_log_after_success();
                let report = self.report(c, Confirmation::Arbiter { generation });
                self.progress.complete(Some(report.downtime));
                Ok(report)
            }
            Claimed::Lost(holder) => {
                Err(self.in_doubt(e, Some(Box::new(Unsettled::Other { generation, holder }))))
            }
            Claimed::Unreachable(source) => {
                let u = Unsettled::Unreachable { generation, source };
                Err(self.in_doubt(e, Some(Box::new(u))))
            }
        }
    }

    /// Leaves the VM paused (the destination may run it) and says so.
    fn in_doubt(
        &mut self,
        cause: MigrationError,
        unsettled: Option<Box<Unsettled>>,
    ) -> MigrationError {
        if self.dirty_log {
            if let Err(d) = self.vm.stop_dirty_log() {
                log::warn!("migration: stop_dirty_log: {}", error_chain(&d));
            }
            self.dirty_log = false;
        }
        let e = MigrationError::OutcomeUnknown {
            cause: Box::new(cause),
            unsettled,
        };
        log::error!("migration: {}", error_chain(&e));
        self.progress.unknown(error_chain(&e));
        e
    }

    fn stop_dirty_log_after_success(&mut self) {
        if let Err(e) = self.vm.stop_dirty_log() {
            log::warn!(
                "migration: stop_dirty_log after success: {}",
                error_chain(&e)
            );
        }
        self.dirty_log = false;
    }

    fn purpose(&self) -> StreamPurpose {
        match self.mode {
            Mode::Migrate => StreamPurpose::Migration,
            Mode::KeepRunning(_) => StreamPurpose::FaultTolerance,
        }
    }

    fn run(&mut self) -> Result<SendReport, MigrationError> {
        if !self.hello_done {
            let mut identity = self.vm.identity();
            identity.disks = self.vm.disks().map(|d| d.list()).unwrap_or_default();
            self.announced = identity.disks.clone();
            let hello = Frame::Hello(Hello::new(self.purpose(), identity));
            let seq = self.send(&hello, FLAG_ACK_REQUESTED)?;
            self.wait_ack(seq, self.opts.io_timeout, "the destination's Hello ack")?;
        }
        if let (Mode::Migrate, Some(a)) = (&self.mode, &self.opts.arbiter) {
            // Fixed before anything is copied, so that both sides claim the same generation.
            let terms = Terms::new(&*a.0).map_err(|e| MigrationError::Arbiter(Box::new(e)))?;
            let frame = Frame::Handover {
                generation: terms.generation,
                token: terms.token,
                identity: terms.identity.clone(),
            };
            let seq = self.send(&frame, FLAG_ACK_REQUESTED)?;
            self.wait_ack(
                seq,
                self.opts.io_timeout,
                "the destination's acceptance of the hand-over",
            )?;
            log::info!(
                "migration: hands over through the arbiter in generation {}",
                terms.generation
            );
            self.terms = Some(terms);
        }
        // Exactly the disks the Hello announced (`open_ft_stream` sent it for FT): the backup
        // checked its images against them.
        let ours = self.vm.disks().map(|d| d.list()).unwrap_or_default();
        if ours != self.announced {
            return Err(MigrationError::Protocol(format!(
                "the Hello announced disks {:?}, the VM has {ours:?}",
                self.announced
            )));
        }
        let copy_disks = !ours.is_empty();

        // Before the first read, so that a page written during the full pass is sent again.
        self.vm
            .start_dirty_log()
            .map_err(vm_err("start_dirty_log"))?;
        self.dirty_log = true;
        self.set_phase(MigrationPhase::Precopy);
        if copy_disks {
            // Tracked from before the first read, like memory; the disks go first, being the
            // longer copy, so that memory's dirty rounds follow it.
            self.start_disks()?;
            self.disk_pass(true)?;
        }
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
            let dirty_blocks = self.take_dirty_blocks()?;
            let since = last_take.elapsed();
            last_take = Instant::now();
            let bandwidth = self.bandwidth();
            let estimate = transfer_time(
                dirty.count() * WIRE_PAGE + dirty_blocks * WIRE_BLOCK,
                bandwidth,
            );
            self.progress.update(|p| {
                p.dirty_pages = dirty.count();
                p.dirty_rate_pages_per_s =
                    (dirty.count() as f64 / since.as_secs_f64().max(1e-6)) as u64;
                p.bandwidth_bytes_per_s = bandwidth;
                p.estimated_downtime_ms = estimate.as_millis().min(u64::MAX.into()) as u64;
            });
            if let Some(reason) = conv.decide(self.round, dirty.count() + dirty_blocks, estimate) {
                log::info!(
                    "migration: pausing after {} dirty rounds ({reason:?}), {} pages left, estimate {estimate:?}",
                    self.round,
                    dirty.count()
                );
                break (reason, estimate, dirty);
            }
            self.round += 1;
            self.progress.update(|p| {
                p.round = self.round;
                p.pages_this_round = 0;
            });
            // In the round, before its EndOfRound.
            self.disk_pass(false)?;
            self.dirty_pass(&dirty)?;
        };

        self.vm.pause().map_err(vm_err("pause"))?;
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
        // The guest is stopped: these are the disks' last dirty blocks. Its writes from now on
        // belong to epoch 1 and travel in checkpoints, so tracking ends here.
        self.take_dirty_blocks()?;
        self.disk_pass(false)?;
        self.stop_disks();
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
        let committing = Committing {
            stop_reason,
            final_pages,
            estimate,
            paused_at,
        };
        // Before the write: a write that fails part-way may still have delivered the frame.
        self.commit_sent = true;
        if let Mode::Migrate = self.mode {
            self.committed = Some(committing);
        }
        let seq = self.send(&commit, FLAG_ACK_REQUESTED)?;
        self.set_phase(MigrationPhase::Completing);
        self.wait_ack(
            seq,
            self.opts.commit_timeout,
            "the destination's restore ack",
        )?;
        if let Mode::KeepRunning(_) = self.mode {
            // FT: the backup holds the state now; the guest runs on, and the dirty log (still on)
            // becomes the first checkpoint's page set.
            self.vm.resume().map_err(vm_err("resume"))?;
            self.paused = false;
            return Ok(self.report(committing, Confirmation::Ack));
        }
        self.stop_dirty_log_after_success();
        Ok(self.report(committing, Confirmation::Ack))
    }

    fn report(&self, c: Committing, confirmed_by: Confirmation) -> SendReport {
        SendReport {
            rounds: self.round - 1,
            stop_reason: c.stop_reason,
            bytes_sent: self.writer.bytes(),
            pages_sent: self.pages_sent,
            final_dirty_pages: c.final_pages,
            estimated_downtime: c.estimate,
            downtime: c.paused_at.elapsed(),
            total_time: self.started.elapsed(),
            confirmed_by,
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
            } else if pfn % KEEPALIVE_CHECK_PAGES == 0 {
                self.keep_alive()?;
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
        // Between batches is where an Abort from the destination is noticed.
        poll_abort(&self.inbox)?;
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

    /// A heartbeat if nothing went out for a quarter of the peer's read timeout: a long stretch
    /// of zero pages (a large, mostly empty guest on a slow or loaded host) sends nothing, and
    /// the receiver would take the silence for a dead source.
    fn keep_alive(&mut self) -> Result<(), MigrationError> {
        if self.last_sent.elapsed() < self.opts.io_timeout / 4 {
            return Ok(());
        }
        let hb = Frame::Heartbeat {
            timestamp_ms: crate::status::unix_ms(),
        };
        self.send(&hb, 0).map(|_| ())
    }

    /// Sends one frame in the current round; a write failure is explained by the peer's Abort
    /// when one is waiting.
    fn send(&mut self, frame: &Frame, flags: u8) -> Result<u64, MigrationError> {
        let round = u64::from(self.round);
        send_frame(
            &mut self.writer,
            &self.inbox,
            self.progress,
            &mut self.last_sent,
            frame,
            round,
            flags,
        )
    }

    fn wait_ack(
        &mut self,
        seq: u64,
        timeout: Duration,
        what: &'static str,
    ) -> Result<(), MigrationError> {
        await_ack(&self.inbox, seq, timeout, what)
    }

    /// Starts the copy of the VM's replicated disks: tracking on, progress from zero.
    fn start_disks(&mut self) -> Result<(), MigrationError> {
        let batch = self.opts.batch_pages;
        let progress = self.opts.disk_progress.clone();
        let Some(disks) = self.vm.disks() else {
            return Ok(());
        };
        self.disks = Some(DiskCopy::start(disks, progress, batch)?);
        Ok(())
    }

    /// Blocks the guest wrote since the last take, added to those waiting; 0 without disks.
    fn take_dirty_blocks(&mut self) -> Result<u64, MigrationError> {
        match (self.disks.as_mut(), self.vm.disks()) {
            (Some(copy), Some(disks)) => copy.take_dirty(disks),
            _ => Ok(0),
        }
    }

    /// The disks' full pass (`full`) or the blocks waiting since the last take; an Abort from
    /// the destination is noticed between frames, as in the memory passes.
    fn disk_pass(&mut self, full: bool) -> Result<(), MigrationError> {
        let start = Instant::now();
        let Sender {
            vm,
            disks: copy,
            writer,
            inbox,
            round,
            progress,
            last_sent,
            ..
        } = self;
        let (Some(copy), Some(disks)) = (copy.as_mut(), vm.disks()) else {
            return Ok(());
        };
        let round = u64::from(*round);
        let mut out = |frame: Frame| -> Result<(), MigrationError> {
            poll_abort(inbox)?;
            send_frame(writer, inbox, progress, last_sent, &frame, round, 0).map(|_| ())
        };
        if full {
            copy.full_pass(disks, &mut out)?;
            let s = copy.progress();
            log::info!(
                "ft: disks' full pass: {} bytes, {} of them data, in {:?}",
                s.bytes_total,
                s.bytes_sent,
                start.elapsed()
            );
        } else {
            copy.dirty_pass(disks, &mut out)?;
        }
        self.send_time += start.elapsed();
        Ok(())
    }

    /// Ends disk tracking (once), after the last dirty blocks or on failure.
    fn stop_disks(&mut self) {
        if let (Some(copy), Some(disks)) = (self.disks.as_mut(), self.vm.disks()) {
            copy.stop(disks);
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
        self.stop_disks();
        if self.dirty_log {
            if let Err(d) = self.vm.stop_dirty_log() {
                log::warn!(
                    "migration: stop_dirty_log after failure: {}",
                    error_chain(&d)
                );
            }
            self.dirty_log = false;
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

/// Fails with the destination's Abort if one is waiting (heartbeats are skipped); anything else
/// is a protocol error during pre-copy.
fn poll_abort(inbox: &Inbox) -> Result<(), MigrationError> {
    while let Some(f) = inbox.poll()? {
        match f.frame {
            Frame::Heartbeat { .. } => {}
            Frame::Abort { reason } => return Err(MigrationError::PeerAborted { reason }),
            other => return Err(unexpected("nothing during pre-copy", other.frame_type())),
        }
    }
    Ok(())
}

/// Sends one frame of `round`; a write failure is explained by the peer's Abort when one is
/// waiting.
fn send_frame(
    writer: &mut FrameWriter,
    inbox: &Inbox,
    progress: &ProgressHandle,
    last_sent: &mut Instant,
    frame: &Frame,
    round: u64,
    flags: u8,
) -> Result<u64, MigrationError> {
    match writer.send(frame, round, flags) {
        Ok(seq) => {
            *last_sent = Instant::now();
            let bytes = writer.bytes();
            progress.update(|p| p.bytes = bytes);
            Ok(seq)
        }
        Err(e @ MigrationError::Send(_)) => match inbox.wait(ABORT_GRACE) {
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

/// Waits up to `timeout` for the peer's Ack of frame `seq`; its Abort is its reason.
fn await_ack(
    inbox: &Inbox,
    seq: u64,
    timeout: Duration,
    what: &'static str,
) -> Result<(), MigrationError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match inbox.wait(left)? {
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
