//! The destination side of a pre-copy migration.

use super::channel::{FrameReader, FrameWriter};
use super::handover::{self, Claimed, HandoverArbiter, Terms, Unsettled};
use super::progress::{MigrationPhase, ProgressHandle};
use super::{error_chain, unexpected, vm_err, MigrationError};
use crate::disk::{apply_batch, check_disks, DiskProgress};
use crate::frame::{DecodedFrame, Frame, Hello, PageBatch, PageRef, StreamPurpose, PAGE_SIZE};
use crate::transport::Connection;
use crate::vm::{MigratableVm, VmIdentity, VmState};
use crate::PROTOCOL_VERSION;
use std::time::{Duration, Instant};

/// How long an aborting receiver keeps reading so that the source gets to read the Abort.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// Destination-side settings.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// Longest wait for any one frame from the source.
    pub io_timeout: Duration,
    /// Where an FT backup shows how far the copy of its replicated disks has come.
    pub disk_progress: DiskProgress,
    /// Take the VM over only by winning the source's generation at this arbiter
    /// (`handover`); the source must be given the same.
    pub arbiter: Option<HandoverArbiter>,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            io_timeout: Duration::from_secs(30),
            disk_progress: DiskProgress::new(),
            arbiter: None,
        }
    }
}

/// What a successful receive did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReceiveReport {
    /// The VM received, as the source announced it.
    pub identity: VmIdentity,
    /// Rounds received, the full pass and the final one included.
    pub rounds: u32,
    /// Stream bytes received.
    pub bytes_received: u64,
    /// Pages written, zero pages included.
    pub pages_received: u64,
    /// From the first stop-and-copy frame to resuming the guest: the part of the downtime the
    /// destination sees.
    pub final_phase: Duration,
    /// Whole receive.
    pub total_time: Duration,
}

/// A migration whose Hello has arrived: its identity can be looked at (to build a matching VM)
/// before it is accepted with `receive_into` or refused with `reject`.
pub struct IncomingMigration {
    /// What this receiver was set up for; a Hello for anything else is refused.
    purpose: StreamPurpose,
    reader: FrameReader,
    writer: FrameWriter,
    hello: Hello,
    hello_seq: u64,
    progress: ProgressHandle,
    disk_progress: DiskProgress,
    started: Instant,
    arbiter: Option<HandoverArbiter>,
}

/// Reads the Hello, then receives into `vm`; see `IncomingMigration`.
pub fn receive_migration<V: MigratableVm + ?Sized>(
    conn: Box<dyn Connection>,
    vm: &mut V,
    opts: &ReceiveOptions,
    progress: &ProgressHandle,
) -> Result<ReceiveReport, MigrationError> {
    IncomingMigration::accept(conn, opts, progress)?.receive_into(vm)
}

impl IncomingMigration {
    /// Reads the source's Hello from a fresh connection.
    pub fn accept(
        conn: Box<dyn Connection>,
        opts: &ReceiveOptions,
        progress: &ProgressHandle,
    ) -> Result<IncomingMigration, MigrationError> {
        Self::accept_for(StreamPurpose::Migration, conn, opts, progress)
    }

    /// Reads the Hello of a stream that must be for `purpose`.
    pub(crate) fn accept_for(
        purpose: StreamPurpose,
        conn: Box<dyn Connection>,
        opts: &ReceiveOptions,
        progress: &ProgressHandle,
    ) -> Result<IncomingMigration, MigrationError> {
        let started = Instant::now();
        conn.set_read_timeout(Some(opts.io_timeout))
            .and_then(|()| conn.set_write_timeout(Some(opts.io_timeout)))
            .map_err(MigrationError::Connection)?;
        let mut reader =
            FrameReader::new(conn.try_clone_box().map_err(MigrationError::Connection)?);
        let mut writer = FrameWriter::new(conn);
        let first = reader.recv().and_then(|f| match f.frame {
            Frame::Hello(h) => Ok((h, f.seq)),
            other => Err(unexpected("Hello", other.frame_type())),
        });
        match first {
            Ok((hello, hello_seq)) => Ok(IncomingMigration {
                purpose,
                reader,
                writer,
                hello,
                hello_seq,
                progress: progress.clone(),
                disk_progress: opts.disk_progress.clone(),
                started,
                arbiter: opts.arbiter.clone(),
            }),
            Err(e) => Err(fail(&mut reader, &mut writer, progress, e)),
        }
    }

    /// The VM the source wants to send.
    pub fn identity(&self) -> &VmIdentity {
        &self.hello.identity
    }

    /// The source's Hello: its versions, the VM and (FT) the pair's settings.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Refuses the migration, telling the source why; returns the error to report locally.
    pub fn reject(mut self, reason: &str) -> MigrationError {
        let e = MigrationError::Incompatible(reason.to_owned());
        fail(&mut self.reader, &mut self.writer, &self.progress, e)
    }

    /// Receives the VM into `vm`, which must not be running and whose memory must be zero (a fresh
    /// VM): zero pages are skipped in the full pass. On success `vm` has been restored and resumed
    /// (with an arbiter, after winning the source's generation), whether or not the final ack
    /// reached the source. On error it was not resumed, the source has been told why if it can
    /// be reached, and the caller should discard it.
    pub fn receive_into<V: MigratableVm + ?Sized>(
        mut self,
        vm: &mut V,
    ) -> Result<ReceiveReport, MigrationError> {
        let r = self.run(vm, true);
        match r {
            Ok((report, _)) => {
                self.progress.complete(Some(report.final_phase));
                Ok(report)
            }
            Err(e) => Err(fail(&mut self.reader, &mut self.writer, &self.progress, e)),
        }
    }

    /// FT backup: receives the initial sync into `vm` and acks it, but neither restores the state
    /// nor resumes: the backup keeps the state blob as its first committed checkpoint and leaves
    /// the stream open for the checkpoints that follow.
    pub(crate) fn receive_initial_sync<V: MigratableVm + ?Sized>(
        mut self,
        vm: &mut V,
    ) -> Result<Synced, MigrationError> {
        match self.run(vm, false) {
            Ok((report, state)) => {
                self.progress.complete(Some(report.final_phase));
                Ok(Synced {
                    report,
                    state,
                    reader: self.reader,
                    writer: self.writer,
                })
            }
            Err(e) => Err(fail(&mut self.reader, &mut self.writer, &self.progress, e)),
        }
    }

    fn run<V: MigratableVm + ?Sized>(
        &mut self,
        vm: &mut V,
        handover: bool,
    ) -> Result<(ReceiveReport, VmState), MigrationError> {
        check_hello(&self.hello, vm, self.purpose)?;
        let disks = self.hello.identity.disks.clone();
        check_disks(&disks, vm.disks())?;
        if !disks.is_empty() {
            self.disk_progress.start(disks.iter().map(|d| d.size).sum());
        }
        self.writer.send(
            &Frame::Ack {
                seq: self.hello_seq,
            },
            0,
            0,
        )?;
        let terms = if handover {
            self.handover_terms()?
        } else {
            None
        };
        self.progress.update(|p| p.phase = MigrationPhase::Precopy);

        let vcpus = vm.vcpu_count() as usize;
        let mut state = StagedState {
            vcpus: vec![None; vcpus],
            devices: None,
        };
        let mut round: u64 = 0;
        let mut in_round: u64 = 0;
        let mut total: u64 = 0;
        let mut final_since: Option<Instant> = None;
        loop {
            let f = self.reader.recv()?;
            // Abort and Heartbeat may come from any round.
            let any_round = matches!(f.frame, Frame::Abort { .. } | Frame::Heartbeat { .. });
            if f.epoch != round && !any_round {
                return Err(MigrationError::Protocol(format!(
                    "frame {} of round {} arrived in round {round}",
                    f.seq, f.epoch
                )));
            }
            let bytes = self.reader.bytes();
            self.progress.update(|p| p.bytes = bytes);
            let DecodedFrame { seq, frame, .. } = f;
            match frame {
                Frame::MemoryPages(batch) => {
                    if final_since.is_some() {
                        return Err(MigrationError::Protocol("pages after VM state".into()));
                    }
                    let n = apply_pages(vm, &batch)?;
                    in_round += n;
                    total += n;
                    self.progress.update(|p| {
                        p.pages = total;
                        p.pages_this_round = in_round;
                    });
                }
                Frame::DiskBlocks(batch) => {
                    if final_since.is_some() {
                        return Err(MigrationError::Protocol(
                            "disk blocks after VM state".into(),
                        ));
                    }
                    apply_batch(vm.disks(), &disks, &batch, &self.disk_progress, round == 0)?;
                }
                Frame::EndOfRound { pages } => {
                    check_count(round, pages, in_round)?;
                    round += 1;
                    in_round = 0;
                    self.progress.update(|p| {
                        p.round = round as u32;
                        p.pages_this_round = 0;
                    });
                }
                Frame::VcpuState { index, data } => {
                    final_since.get_or_insert_with(Instant::now);
                    self.progress
                        .update(|p| p.phase = MigrationPhase::StopAndCopy);
                    let slot = state.vcpus.get_mut(index as usize).ok_or_else(|| {
                        MigrationError::Protocol(format!("state of vCPU {index}, VM has {vcpus}"))
                    })?;
                    if slot.replace(data).is_some() {
                        return Err(MigrationError::Protocol(format!(
                            "vCPU {index} state sent twice"
                        )));
                    }
                }
                Frame::DeviceState(data) => {
                    final_since.get_or_insert_with(Instant::now);
                    if state.devices.replace(data).is_some() {
                        return Err(MigrationError::Protocol("device state sent twice".into()));
                    }
                }
                Frame::Commit {
                    vcpus: n, pages, ..
                } => {
                    check_count(round, pages, in_round)?;
                    let final_since = final_since.unwrap_or_else(Instant::now);
                    self.progress
                        .update(|p| p.phase = MigrationPhase::Completing);
                    let state = state.complete(n)?;
                    // The copy is whole now: durable before the source hears so.
                    if let Some(d) = vm.disks().filter(|_| !disks.is_empty()) {
                        d.flush().map_err(vm_err("flush_disks"))?;
                    }
                    if handover {
                        vm.restore_state(&state).map_err(vm_err("restore_state"))?;
                        if let Some(t) = &terms {
                            self.claim(t)?;
                        }
                        // Ours now: a source that gets no ack stays paused unless it wins the
                        // generation we hold, so the ack below may be lost without harm.
                        vm.resume().map_err(vm_err("resume"))?;
                        if let Err(e) = self.writer.send(&Frame::Ack { seq }, round, 0) {
                            log::warn!(
                                "incoming migration: the VM runs here, but the final ack did \
                                 not reach the source: {}",
                                error_chain(&e)
                            );
                        }
                    } else {
                        self.writer.send(&Frame::Ack { seq }, round, 0)?;
                    }
                    let report = ReceiveReport {
                        identity: self.hello.identity.clone(),
                        rounds: round as u32 + 1,
                        bytes_received: self.reader.bytes(),
                        pages_received: total,
                        final_phase: final_since.elapsed(),
                        total_time: self.started.elapsed(),
                    };
                    return Ok((report, state));
                }
                Frame::Heartbeat { .. } => {}
                Frame::Abort { reason } => return Err(MigrationError::PeerAborted { reason }),
                other @ (Frame::Hello(_)
                | Frame::Ack { .. }
                | Frame::Extras { .. }
                | Frame::EndConfirmed
                | Frame::ScrubDigest(_)
                | Frame::ScrubResult(_)
                | Frame::Handover { .. }
                | Frame::Fence { .. }) => {
                    return Err(unexpected("pages, state or Commit", other.frame_type()))
                }
            }
        }
    }
}

impl IncomingMigration {
    /// A migration's first frame after the Hello: the source's hand-over terms if it hands over
    /// through an arbiter. Both sides must have one, or neither (else one of them could run
    /// the VM without the arbiter's word); a mismatch is refused before anything is copied.
    fn handover_terms(&mut self) -> Result<Option<Terms>, MigrationError> {
        let arbiter = self.arbiter.clone();
        let first = self.reader.peek()?;
        let terms = match (&first.frame, arbiter) {
            (
                Frame::Handover {
                    generation,
                    token,
                    identity,
                },
                Some(a),
            ) => {
                let t = Terms {
                    generation: *generation,
                    token: *token,
                    identity: identity.clone(),
                };
                handover::check_terms(&*a.0, &t)?;
                t
            }
            (Frame::Handover { .. }, None) => {
                return Err(MigrationError::Incompatible(
                    "the source hands over through an arbiter and this destination has none: \
                     give vm.receive-migration the same arbiter"
                        .into(),
                ))
            }
            (_, Some(_)) => {
                return Err(MigrationError::Incompatible(
                    "this destination takes a VM over only through its arbiter and the source \
                     has none: give vm.send-migration the same arbiter"
                        .into(),
                ))
            }
            (_, None) => return Ok(None),
        };
        let f = self.reader.recv()?;
        self.writer.send(&Frame::Ack { seq: f.seq }, 0, 0)?;
        log::info!(
            "incoming migration: hand-over through the arbiter in generation {}",
            terms.generation
        );
        Ok(Some(terms))
    }

    /// Wins the hand-over's generation before the VM runs here, or refuses to run it.
    fn claim(&mut self, t: &Terms) -> Result<(), MigrationError> {
        let Some(a) = self.arbiter.clone() else {
            return Ok(());
        };
        self.progress.update(|p| p.phase = MigrationPhase::Settling);
        match handover::claim(&*a.0, t.generation, &t.destination_claim()) {
            Claimed::Won => {
                log::info!("incoming migration: won generation {}", t.generation);
                Ok(())
            }
            Claimed::Lost(holder) => Err(MigrationError::SourceKeptVm {
                holder: Box::new(holder),
            }),
            Claimed::Unreachable(source) => Err(MigrationError::Unsettled(Box::new(
                Unsettled::Unreachable {
                    generation: t.generation,
                    source,
                },
            ))),
        }
    }
}

/// What an FT initial sync leaves: the committed state blob and the open stream.
pub(crate) struct Synced {
    pub(crate) report: ReceiveReport,
    pub(crate) state: VmState,
    pub(crate) reader: FrameReader,
    pub(crate) writer: FrameWriter,
}

/// vCPU and device blobs as they arrive, before Commit.
struct StagedState {
    vcpus: Vec<Option<Vec<u8>>>,
    devices: Option<Vec<u8>>,
}

impl StagedState {
    fn complete(&mut self, announced: u32) -> Result<VmState, MigrationError> {
        if announced as usize != self.vcpus.len() {
            return Err(MigrationError::Protocol(format!(
                "Commit announces {announced} vCPUs, VM has {}",
                self.vcpus.len()
            )));
        }
        let vcpus = self
            .vcpus
            .iter_mut()
            .enumerate()
            .map(|(i, v)| {
                v.take()
                    .ok_or_else(|| MigrationError::Protocol(format!("no state for vCPU {i}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let devices = self
            .devices
            .take()
            .ok_or_else(|| MigrationError::Protocol("no device state".into()))?;
        Ok(VmState { vcpus, devices })
    }
}

fn check_hello<V: MigratableVm + ?Sized>(
    h: &Hello,
    vm: &V,
    purpose: StreamPurpose,
) -> Result<(), MigrationError> {
    let bad = |s: String| Err(MigrationError::Incompatible(s));
    // The ranges must overlap, within what this purpose needs (FT needs the Extras frame).
    let ours = purpose.min_protocol_version()..=PROTOCOL_VERSION;
    if h.min_version > *ours.end() || h.max_version < *ours.start() {
        return bad(format!(
            "source speaks protocol versions {}..={}, this destination {}..={} for {purpose:?}",
            h.min_version,
            h.max_version,
            ours.start(),
            ours.end()
        ));
    }
    if h.purpose != purpose {
        return bad(format!("stream is for {:?}, not {purpose:?}", h.purpose));
    }
    if h.page_size as usize != PAGE_SIZE {
        return bad(format!("page size {} (expected {PAGE_SIZE})", h.page_size));
    }
    if h.identity.memory_size != vm.memory_size() {
        return bad(format!(
            "source has {} bytes of memory, destination {}",
            h.identity.memory_size,
            vm.memory_size()
        ));
    }
    if h.identity.vcpu_count != vm.vcpu_count() {
        return bad(format!(
            "source has {} vCPUs, destination {}",
            h.identity.vcpu_count,
            vm.vcpu_count()
        ));
    }
    Ok(())
}

fn check_count(round: u64, announced: u64, received: u64) -> Result<(), MigrationError> {
    if announced == received {
        return Ok(());
    }
    Err(MigrationError::Protocol(format!(
        "round {round}: source sent {announced} pages, {received} arrived"
    )))
}

/// Writes a batch into guest memory after checking every page number against its size.
fn apply_pages<V: MigratableVm + ?Sized>(
    vm: &mut V,
    batch: &PageBatch,
) -> Result<u64, MigrationError> {
    let pages = vm.page_count();
    let out_of_range = |pfn: u64| {
        MigrationError::Protocol(format!("page {pfn} beyond guest memory of {pages} pages"))
    };
    for entry in batch.iter() {
        match entry {
            PageRef::Data { pfn, data } => {
                if pfn >= pages {
                    return Err(out_of_range(pfn));
                }
                vm.write_page(pfn, data).map_err(vm_err("write_page"))?;
            }
            PageRef::Zero { pfn, count } => {
                let end = pfn.saturating_add(u64::from(count));
                if end > pages {
                    return Err(out_of_range(end - 1));
                }
                for p in pfn..end {
                    vm.write_page(p, &ZERO_PAGE).map_err(vm_err("write_page"))?;
                }
            }
            // Only FT checkpoints carry deltas; migration and the initial sync send whole pages.
            PageRef::Delta { pfn, .. } => {
                return Err(MigrationError::Protocol(format!(
                    "delta for page {pfn} in a migration stream"
                )))
            }
        }
    }
    Ok(batch.page_count())
}

/// Ends a failed receive: tells the source why (unless it already knows), keeps reading briefly so
/// that the Abort is not lost to a reset, and records the failure.
fn fail(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    progress: &ProgressHandle,
    e: MigrationError,
) -> MigrationError {
    let cause = error_chain(&e);
    log::warn!("incoming migration failed: {cause}");
    if !e.peer_knows() {
        let reason = format!("destination: {cause}");
        if writer.send(&Frame::Abort { reason }, 0, 0).is_ok() {
            writer.shutdown_write();
            reader.drain(DRAIN_LIMIT);
        }
    } else if matches!(e, MigrationError::PeerAborted { .. }) {
        // The sender ended the stream on purpose: say that nothing here will run from it.
        let _ = writer.send(&Frame::EndConfirmed, 0, 0);
    }
    writer.shutdown();
    progress.fail(cause);
    e
}
