//! The primary's schedule: which regions to hash at each pause (repairs first, then an
//! `ft.verify` pass or the rate-limited background walk), the digests waiting for the sender and
//! for the backup's answer, and what each answer means (a new difference, a repair that worked
//! or failed, a pass finished). Pure bookkeeping: no VM, no clock of its own, no I/O.

use super::cursor::Cursor;
use super::hash::StateHashes;
use super::region::Layout;
use super::report::{Mismatch, ScrubChecked, ScrubStatus, VerifyReport};
use super::{ScrubError, ScrubOptions, MAX_REPAIR_ATTEMPTS};
use crate::frame::{ScrubDigest, ScrubOutcome, ScrubRegion, ScrubResult, MAX_SCRUB_ENTRIES};
use std::collections::{HashSet, VecDeque};
use std::sync::mpsc::Sender;
use std::time::Instant;

/// Where `ft.verify`'s answer goes.
pub(crate) type Waiter = Sender<Result<VerifyReport, ScrubError>>;

/// One region to hash at the next pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Job {
    pub(crate) region: ScrubRegion,
    /// The `ft.verify` pass it belongs to (0: background).
    pub(crate) pass: u64,
    /// 0: a first check; n > 0: the check that follows the n-th repair (which the digest
    /// carries for memory and disk regions).
    pub(crate) attempt: u32,
}

impl Job {
    /// Whether the digest carries a copy of the region (a repair of memory or disk).
    pub(crate) fn repairs(&self) -> bool {
        self.attempt > 0 && self.region.repair_len().is_some()
    }
}

/// A difference not yet healed or given up on.
struct Open {
    region: ScrubRegion,
    pass: u64,
    found: Mismatch,
}

/// An `ft.verify` pass under way.
struct Demand {
    pass: u64,
    cursor: Cursor,
    started: Instant,
    first_epoch: Option<u64>,
    last_epoch: Option<u64>,
    regions: u64,
    bytes: u64,
    mismatches: Vec<Mismatch>,
    errors: Vec<String>,
    waiters: Vec<Waiter>,
}

/// A digest and what each of its entries was, in entry order.
struct Digest {
    epoch: u64,
    frame: ScrubDigest,
    jobs: Vec<Job>,
}

/// The primary's scrub state.
pub(crate) struct Planner {
    opts: ScrubOptions,
    layout: Option<Layout>,
    background: Cursor,
    /// Bytes the background scrub may hash now.
    budget: f64,
    last_refill: Option<Instant>,
    demand: Option<Demand>,
    next_pass: u64,
    /// Repairs and re-checks for the next pause, oldest first.
    jobs: VecDeque<Job>,
    /// Passes of the jobs `plan` handed out and `hashed` has not taken back yet.
    hashing: Vec<u64>,
    /// Digests hashed, waiting for their checkpoint's Commit to go out.
    queued: VecDeque<Digest>,
    /// Digests sent, waiting for the backup's answer, in sending order.
    sent: VecDeque<(u64, Vec<Job>)>,
    open: Vec<Open>,
    /// The state blobs' hashes at the last capture (a paused guest's state does not change).
    pub(crate) state: Option<StateHashes>,
    status: ScrubStatus,
    /// Checkpointing stopped: why, for `ft.verify` calls that come later.
    ended: Option<String>,
}

/// What [`Planner::answer`] found, for the log and the metrics.
#[derive(Debug, Default)]
pub(crate) struct Answered {
    pub(crate) checked: ScrubChecked,
    /// Log lines: (is an error, text).
    pub(crate) lines: Vec<(log::Level, String)>,
    /// Whether `ft.status` changed in a way worth a note (a new difference or an unhealed one).
    pub(crate) reason: Option<String>,
}

impl Planner {
    pub(crate) fn new(opts: ScrubOptions) -> Planner {
        let status = ScrubStatus {
            period_s: opts.period.map(|p| p.as_secs()),
            ..ScrubStatus::default()
        };
        Planner {
            opts,
            layout: None,
            background: Cursor::new(),
            budget: 0.0,
            last_refill: None,
            demand: None,
            next_pass: 1,
            jobs: VecDeque::new(),
            hashing: Vec::new(),
            queued: VecDeque::new(),
            sent: VecDeque::new(),
            open: Vec::new(),
            state: None,
            status,
            ended: None,
        }
    }

    /// The layout, once known (the first pause learns it).
    pub(crate) fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }

    pub(crate) fn set_layout(&mut self, l: Layout) {
        self.layout = Some(l);
    }

    /// `ft.status`'s view.
    pub(crate) fn status(&self) -> ScrubStatus {
        ScrubStatus {
            verify_running: self.demand.is_some(),
            ..self.status.clone()
        }
    }

    /// Whether a paused guest's checkpoint should be scrubbed now: an `ft.verify` pass or
    /// repairs are waiting, and the last digest has gone out.
    pub(crate) fn has_urgent_work(&self) -> bool {
        self.queued.is_empty() && (self.demand.is_some() || !self.jobs.is_empty())
    }

    /// Starts an `ft.verify` pass, or joins the one under way; `waiter` gets the report.
    pub(crate) fn verify(&mut self, waiter: Waiter, now: Instant) -> u64 {
        if let Some(why) = &self.ended {
            let _ = waiter.send(Err(ScrubError::Ended(why.clone())));
            return 0;
        }
        if let Some(d) = &mut self.demand {
            d.waiters.push(waiter);
            return d.pass;
        }
        let pass = self.next_pass;
        self.next_pass += 1;
        self.demand = Some(Demand {
            pass,
            cursor: Cursor::new(),
            started: now,
            first_epoch: None,
            last_epoch: None,
            regions: 0,
            bytes: 0,
            mismatches: Vec::new(),
            errors: Vec::new(),
            waiters: vec![waiter],
        });
        pass
    }

    /// The regions to hash at this pause: repairs and re-checks first (bounded in bytes), then
    /// the `ft.verify` pass's next slice, or the background walk as far as its budget allows
    /// (`background`: false while the guest stays paused, whose state does not change).
    pub(crate) fn plan(&mut self, now: Instant, background: bool) -> Vec<Job> {
        // Taken for the walk and put back: no copy in the pause.
        let Some(layout) = self.layout.take() else {
            return Vec::new();
        };
        let rb = self.opts.region_bytes;
        let mut out = Vec::new();
        let mut repair_bytes = 0u64;
        while let Some(j) = self.jobs.front() {
            let cost = j.region.bytes();
            if out.len() >= MAX_SCRUB_ENTRIES / 2
                || (!out.is_empty()
                    && repair_bytes + cost > self.opts.max_repair_bytes_per_checkpoint)
            {
                break;
            }
            repair_bytes += cost;
            if let Some(j) = self.jobs.pop_front() {
                out.push(j);
            }
        }
        self.refill(now, &layout);
        if let Some(d) = &mut self.demand {
            let mut spent = 0u64;
            while let Some(r) = d.cursor.peek(&layout, rb) {
                let cost = r.bytes();
                if out.len() >= MAX_SCRUB_ENTRIES
                    || (spent > 0 && spent + cost > self.opts.verify_bytes_per_checkpoint)
                {
                    break;
                }
                spent += cost;
                d.cursor.next(&layout, rb);
                out.push(Job {
                    region: r,
                    pass: d.pass,
                    attempt: 0,
                });
            }
        } else if background && self.opts.period.is_some() {
            let mut wrapped = false;
            loop {
                let Some(r) = self.background.peek(&layout, rb) else {
                    // One walk done: count it and start the next, at most once per pause.
                    if wrapped {
                        break;
                    }
                    wrapped = true;
                    self.status.background_passes += 1;
                    self.background = Cursor::new();
                    continue;
                };
                let cost = r.bytes() as f64;
                if out.len() >= MAX_SCRUB_ENTRIES || cost > self.budget {
                    break;
                }
                self.budget -= cost;
                self.background.next(&layout, rb);
                out.push(Job {
                    region: r,
                    pass: 0,
                    attempt: 0,
                });
            }
        }
        self.hashing = out.iter().map(|j| j.pass).collect();
        self.layout = Some(layout);
        out
    }

    /// Background budget: everything once per period, never more than one pause's worth banked.
    fn refill(&mut self, now: Instant, layout: &Layout) {
        let Some(period) = self.opts.period.filter(|p| !p.is_zero()) else {
            return;
        };
        if let Some(last) = self.last_refill {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.budget += layout.total_bytes() as f64 * dt / period.as_secs_f64();
        }
        let cap = self
            .opts
            .max_bytes_per_checkpoint
            .max(u64::from(self.opts.region_bytes)) as f64;
        self.budget = self.budget.min(cap);
        self.last_refill = Some(now);
    }

    /// Jobs `plan` handed out that the pause had no time left to hash: first in line at the
    /// next pause, in their order.
    pub(crate) fn give_back(&mut self, jobs: Vec<Job>) {
        for job in jobs.into_iter().rev() {
            self.jobs.push_front(job);
        }
    }

    /// A digest of checkpoint `epoch`, hashed: it waits for the checkpoint's Commit to go out.
    /// `failed` are jobs whose region this side could not read (named in the pass's report).
    pub(crate) fn hashed(
        &mut self,
        epoch: u64,
        frame: ScrubDigest,
        jobs: Vec<Job>,
        failed: Vec<(Job, String)>,
    ) {
        self.hashing.clear();
        for (job, why) in failed {
            let name = self.name(&job.region);
            log::warn!("ft scrub: cannot hash {name} at checkpoint {epoch}: {why}");
            if let Some(d) = self.demand.as_mut().filter(|d| d.pass == job.pass) {
                d.errors.push(format!("{name}: {why}"));
            }
        }
        if !jobs.is_empty() {
            self.queued.push_back(Digest { epoch, frame, jobs });
        }
        self.maybe_finish();
    }

    /// Whether a digest of a checkpoint ≤ `through` waits to go out.
    pub(crate) fn has_ready(&self, through: u64) -> bool {
        self.queued.front().is_some_and(|d| d.epoch <= through)
    }

    /// The digests whose checkpoint's Commit went out (epoch ≤ `through`), in order; from now on
    /// they wait for the backup's answer.
    pub(crate) fn take_ready(&mut self, through: u64) -> Vec<(u64, ScrubDigest)> {
        let mut out = Vec::new();
        while self.queued.front().is_some_and(|d| d.epoch <= through) {
            if let Some(d) = self.queued.pop_front() {
                self.sent.push_back((d.epoch, d.jobs));
                out.push((d.epoch, d.frame));
            }
        }
        out
    }

    fn name(&self, r: &ScrubRegion) -> String {
        match &self.layout {
            Some(l) => l.name(r),
            None => format!("{r:?}"),
        }
    }

    /// The backup's answer to the oldest digest sent; an error is a protocol violation.
    pub(crate) fn answer(
        &mut self,
        epoch: u64,
        r: &ScrubResult,
        now_ms: u64,
    ) -> Result<Answered, String> {
        if self.ended.is_some() {
            // In flight when checkpointing stopped: nothing waits for it any more.
            return Ok(Answered::default());
        }
        let Some((sent_epoch, jobs)) = self.sent.pop_front() else {
            return Err(format!(
                "a scrub result for checkpoint {epoch}, none outstanding"
            ));
        };
        if sent_epoch != epoch {
            return Err(format!(
                "a scrub result for checkpoint {epoch}, the oldest digest is of {sent_epoch}"
            ));
        }
        let mut out = Answered::default();
        if r.outcome == ScrubOutcome::Stale {
            // Nothing was compared or written: the same jobs again at a later checkpoint.
            out.lines.push((
                log::Level::Info,
                format!(
                    "ft scrub: the backup held checkpoint {} for digest {epoch}; checking again",
                    r.backup_epoch
                ),
            ));
            self.jobs.extend(jobs);
            return Ok(out);
        }
        let carried: HashSet<ScrubRegion> = jobs.iter().map(|j| j.region).collect();
        if let Some(m) = r.mismatches.iter().find(|m| !carried.contains(m)) {
            return Err(format!(
                "the backup names {m:?}, which digest {epoch} did not carry"
            ));
        }
        let differs: HashSet<ScrubRegion> = r.mismatches.iter().copied().collect();
        for job in jobs {
            let bytes = job.region.bytes();
            self.status.regions_verified += 1;
            self.status.bytes_verified += bytes;
            out.checked.regions += 1;
            out.checked.bytes += bytes;
            if let Some(d) = self.demand.as_mut().filter(|d| d.pass == job.pass) {
                d.regions += 1;
                d.bytes += bytes;
                d.first_epoch.get_or_insert(epoch);
                d.last_epoch = Some(epoch);
            }
            let name = self.name(&job.region);
            match (differs.contains(&job.region), job.attempt) {
                (true, 0) => self.found(job, epoch, name, now_ms, &mut out),
                (true, n) if n < MAX_REPAIR_ATTEMPTS => {
                    out.lines.push((
                        log::Level::Warn,
                        format!(
                            "ft scrub: {name} still differs on the backup after repair {n} \
                             (checkpoint {epoch}); re-sending it"
                        ),
                    ));
                    self.jobs.push_back(Job {
                        attempt: n + 1,
                        ..job
                    });
                }
                (true, n) => {
                    let why = format!(
                        "replica scrub: {name} still differs on the backup after {n} repairs \
                         (checkpoint {epoch}); the backup's copy is wrong there"
                    );
                    out.lines
                        .push((log::Level::Error, format!("ft scrub: {why}")));
                    out.reason = Some(why);
                    self.settle(job, false);
                }
                (false, 0) => {}
                (false, n) => {
                    out.lines.push((
                        log::Level::Info,
                        format!(
                            "ft scrub: {name} healed: equal on the backup after repair {n} \
                             (checkpoint {epoch})"
                        ),
                    ));
                    self.settle(job, true);
                }
            }
        }
        self.maybe_finish();
        Ok(out)
    }

    /// A first difference: counted, named, and its repair queued.
    fn found(&mut self, job: Job, epoch: u64, name: String, now_ms: u64, out: &mut Answered) {
        let kind = job.region.kind();
        let m = Mismatch {
            region: name.clone(),
            kind,
            epoch,
            healed: None,
            at_unix_ms: now_ms,
        };
        self.status.mismatches += 1;
        self.status.last_mismatch = Some(m.clone());
        out.checked.mismatches.push(kind);
        let what = if job.region.repair_len().is_some() {
            "re-sending it whole at the next checkpoint"
        } else {
            "every checkpoint carries it whole; checking again"
        };
        let why = format!(
            "replica scrub: the backup's copy differs at checkpoint {epoch}: {name}; {what}"
        );
        out.lines
            .push((log::Level::Warn, format!("ft scrub: {why}")));
        out.reason = Some(why);
        if let Some(d) = self.demand.as_mut().filter(|d| d.pass == job.pass) {
            d.mismatches.push(m.clone());
        }
        self.open.push(Open {
            region: job.region,
            pass: job.pass,
            found: m,
        });
        self.jobs.push_back(Job { attempt: 1, ..job });
    }

    /// A repaired region is equal again (`healed`) or given up on.
    fn settle(&mut self, job: Job, healed: bool) {
        if healed {
            self.status.healed += 1;
        } else {
            self.status.unhealed += 1;
        }
        let Some(i) = self
            .open
            .iter()
            .position(|o| o.region == job.region && o.pass == job.pass)
        else {
            return;
        };
        let o = self.open.swap_remove(i);
        if let Some(m) = self
            .status
            .last_mismatch
            .as_mut()
            .filter(|m| *m == &o.found)
        {
            m.healed = Some(healed);
        }
        if let Some(d) = self.demand.as_mut().filter(|d| d.pass == o.pass) {
            if let Some(m) = d.mismatches.iter_mut().find(|m| **m == o.found) {
                m.healed = Some(healed);
            }
        }
    }

    /// Ends the `ft.verify` pass once every region was compared and every difference it found
    /// settled.
    fn maybe_finish(&mut self) {
        let Some(d) = &self.demand else { return };
        let pass = d.pass;
        let walked = match &self.layout {
            Some(l) => d.cursor.at_end(l, self.opts.region_bytes),
            None => false,
        };
        let busy = !walked
            || self.jobs.iter().any(|j| j.pass == pass)
            || self.hashing.contains(&pass)
            || self
                .queued
                .iter()
                .any(|q| q.jobs.iter().any(|j| j.pass == pass))
            || self
                .sent
                .iter()
                .any(|(_, js)| js.iter().any(|j| j.pass == pass));
        if busy {
            return;
        }
        let Some(d) = self.demand.take() else { return };
        let (memory_bytes, disk_bytes) = match &self.layout {
            Some(l) => (
                l.pages * crate::frame::PAGE_SIZE as u64,
                l.disks.iter().map(|d| d.size).sum(),
            ),
            None => (0, 0),
        };
        let report = VerifyReport {
            pass: d.pass,
            clean: d.mismatches.is_empty(),
            healed: d.mismatches.iter().all(|m| m.healed == Some(true)),
            first_epoch: d.first_epoch,
            last_epoch: d.last_epoch,
            regions: d.regions,
            bytes: d.bytes,
            memory_bytes,
            disk_bytes,
            mismatches: d.mismatches,
            errors: d.errors,
            duration_ms: d.started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64,
        };
        log::info!(
            "ft scrub: verify pass {} done: {} regions, {} bytes, {} differed ({}), {} ms",
            report.pass,
            report.regions,
            report.bytes,
            report.mismatches.len(),
            if report.healed {
                "all healed"
            } else {
                "NOT all healed"
            },
            report.duration_ms
        );
        for w in d.waiters {
            let _ = w.send(Ok(report.clone()));
        }
        self.status.last_verify = Some(report);
    }

    /// Checkpointing stopped: pending `ft.verify` calls fail with `why`, and so do later ones.
    pub(crate) fn end(&mut self, why: &str) {
        if self.ended.is_none() {
            self.ended = Some(why.to_string());
        }
        if let Some(d) = self.demand.take() {
            for w in d.waiters {
                let _ = w.send(Err(ScrubError::Ended(why.to_string())));
            }
        }
        self.jobs.clear();
        self.queued.clear();
        self.sent.clear();
    }
}
