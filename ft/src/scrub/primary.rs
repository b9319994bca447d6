//! The primary's scrub as the checkpoint engine uses it: the epoch thread hashes at each pause
//! ([`PrimaryScrub::while_paused`]), the sender sends digests after their checkpoint's Commit
//! (`take_ready`), the ack thread hands over the backup's answers (`on_result`), and `ft.verify`
//! starts a pass ([`PrimaryScrub::verify`]).

use super::hash::{Sources, StateHashes};
use super::planner::{Job, Planner};
use super::region::Layout;
use super::report::{ScrubStatus, VerifyReport};
use super::{ScrubDisks, ScrubError, ScrubOptions};
use crate::checkpoint::StatsSink;
use crate::frame::{ScrubDigest, ScrubEntry, ScrubRepair, ScrubResult};
use crate::status::unix_ms;
use crate::vm::{MigratableVm, VmState};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// `ft.verify`'s pending answer.
pub struct VerifyTicket {
    /// The pass's number (0 when the engine had already stopped).
    pub pass: u64,
    rx: Receiver<Result<VerifyReport, ScrubError>>,
}

impl VerifyTicket {
    /// Waits at most `timeout` for the pass to finish.
    pub fn wait(self, timeout: Duration) -> Result<VerifyReport, ScrubError> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(ScrubError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => {
                Err(ScrubError::Ended("checkpointing stopped".into()))
            }
        }
    }
}

/// The primary's scrub, shared by the engine's threads.
pub struct PrimaryScrub {
    planner: Mutex<Planner>,
    stats: Arc<dyn StatsSink>,
    max_hash_time: Duration,
}

impl PrimaryScrub {
    /// A scrub reporting to `stats`.
    pub fn new(opts: ScrubOptions, stats: Arc<dyn StatsSink>) -> PrimaryScrub {
        PrimaryScrub {
            max_hash_time: opts.max_hash_time_per_checkpoint,
            planner: Mutex::new(Planner::new(opts)),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Planner> {
        // Every update is whole before anything can panic; go on with the data.
        self.planner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Epoch thread, with the guest paused at checkpoint `epoch` (its capture, or a guest left
    /// paused since): hashes what is due, for at most `max_hash_time_per_checkpoint` (the rest
    /// goes back to the planner for the next pause). `state` is what was captured for `epoch` (`None`: the
    /// guest stayed paused, its state unchanged since the last capture). `background`: whether
    /// the rate-limited walk may run (not while the guest stays paused).
    pub fn while_paused<V: MigratableVm + ?Sized>(
        &self,
        vm: &V,
        epoch: u64,
        state: Option<&VmState>,
        disks: Option<&dyn ScrubDisks>,
        background: bool,
    ) {
        let now = Instant::now();
        let (jobs, state_hashes) = {
            let mut p = self.lock();
            if p.layout().is_none() {
                p.set_layout(Layout::of(vm, disks));
            }
            let jobs = p.plan(now, background);
            if let Some(s) = state {
                // Every capture (a few KiB, about a microsecond): a guest left paused after
                // this one is checked against it later.
                p.state = Some(StateHashes::of(s));
            }
            (jobs, p.state.clone())
        };
        if jobs.is_empty() {
            return;
        }
        let src = Sources {
            vm,
            disks,
            state: state_hashes.as_ref(),
        };
        let mut digest = ScrubDigest {
            pass: jobs.iter().map(|j| j.pass).max().unwrap_or(0),
            ..ScrubDigest::default()
        };
        let mut hashed: Vec<Job> = Vec::with_capacity(jobs.len());
        let mut failed = Vec::new();
        let mut jobs = jobs.into_iter();
        for job in jobs.by_ref() {
            let mut data = job.repairs().then(Vec::new);
            match src.hash(&job.region, data.as_mut()) {
                Ok(hash) => {
                    digest.entries.push(ScrubEntry {
                        region: job.region,
                        hash,
                    });
                    if let Some(data) = data {
                        digest.repairs.push(ScrubRepair {
                            region: job.region,
                            data,
                        });
                    }
                    hashed.push(job);
                }
                Err(e) => failed.push((job, crate::migration::error_chain(&e))),
            }
            if now.elapsed() >= self.max_hash_time {
                break;
            }
        }
        let mut p = self.lock();
        p.give_back(jobs.collect());
        p.hashed(epoch, digest, hashed, failed);
    }

    /// Whether a guest that stays paused should be scrubbed now (see `Planner`).
    pub(crate) fn has_urgent_work(&self) -> bool {
        self.lock().has_urgent_work()
    }

    /// Sender: whether a digest of a checkpoint ≤ `through` waits to go out.
    pub(crate) fn has_ready(&self, through: u64) -> bool {
        self.lock().has_ready(through)
    }

    /// Sender: the digests to send now that checkpoint `through`'s Commit went out.
    pub(crate) fn take_ready(&self, through: u64) -> Vec<(u64, ScrubDigest)> {
        self.lock().take_ready(through)
    }

    /// Ack thread: the backup's answer to the digest of checkpoint `epoch`; an error is a
    /// protocol violation that ends the stream.
    pub(crate) fn on_result(&self, epoch: u64, r: &ScrubResult) -> Result<(), String> {
        let (answered, status) = {
            let mut p = self.lock();
            let a = p.answer(epoch, r, unix_ms())?;
            (a, p.status())
        };
        for (level, line) in &answered.lines {
            log::log!(*level, "{line}");
        }
        self.stats
            .scrub_checked(&answered.checked, answered.reason.as_deref());
        self.stats.scrub_status(&status);
        Ok(())
    }

    /// `ft.verify`: starts a full pass (or joins the one under way); the ticket waits for its
    /// report.
    pub fn verify(&self) -> VerifyTicket {
        let (tx, rx) = mpsc::channel();
        let (pass, status) = {
            let mut p = self.lock();
            let pass = p.verify(tx, Instant::now());
            (pass, p.status())
        };
        self.stats.scrub_status(&status);
        VerifyTicket { pass, rx }
    }

    /// Checkpointing stopped: pending and later `ft.verify` calls fail with `why`.
    pub(crate) fn end(&self, why: &str) {
        let status = {
            let mut p = self.lock();
            p.end(why);
            p.status()
        };
        self.stats.scrub_status(&status);
    }

    /// `ft.status`'s view.
    pub fn status(&self) -> ScrubStatus {
        self.lock().status()
    }
}
