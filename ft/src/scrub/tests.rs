//! The scrub's parts without a stream: the walk covers everything once, the background budget
//! paces it, the backup's check finds and repairs differences, and the planner turns answers
//! into repairs, healed or unhealed regions and finished `ft.verify` passes.

use super::backup::check;
use super::cursor::Cursor;
use super::hash::{Sources, StateHashes};
use super::planner::{Job, Planner};
use super::*;
use crate::bitmap::DirtyBitmap;
use crate::frame::{
    ScrubDigest, ScrubEntry, ScrubOutcome, ScrubRegion, ScrubRepair, ScrubResult, PAGE_SIZE,
};
use crate::vm::{MigratableVm, VmOpError, VmState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Memory in a Vec; nothing runs.
struct Mem(Vec<u8>);

impl MigratableVm for Mem {
    fn memory_size(&self) -> u64 {
        self.0.len() as u64
    }
    fn vcpu_count(&self) -> u32 {
        2
    }
    fn config_json(&self) -> String {
        "{}".into()
    }
    fn read_page(&self, pfn: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        let at = pfn as usize * PAGE_SIZE;
        buf.copy_from_slice(
            self.0
                .get(at..at + PAGE_SIZE)
                .ok_or(VmOpError::PageOutOfRange {
                    pfn,
                    pages: self.page_count(),
                })?,
        );
        Ok(())
    }
    fn write_page(&mut self, pfn: u64, data: &[u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        let at = pfn as usize * PAGE_SIZE;
        self.0[at..at + PAGE_SIZE].copy_from_slice(data);
        Ok(())
    }
    fn start_dirty_log(&mut self) -> Result<(), VmOpError> {
        Ok(())
    }
    fn take_dirty_pages(&mut self) -> Result<DirtyBitmap, VmOpError> {
        Ok(DirtyBitmap::new(self.page_count()))
    }
    fn stop_dirty_log(&mut self) -> Result<(), VmOpError> {
        Ok(())
    }
    fn pause(&mut self) -> Result<(), VmOpError> {
        Ok(())
    }
    fn resume(&mut self) -> Result<(), VmOpError> {
        Ok(())
    }
    fn save_state(&mut self) -> Result<VmState, VmOpError> {
        Ok(state())
    }
    fn restore_state(&mut self, _s: &VmState) -> Result<(), VmOpError> {
        Ok(())
    }
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        // Two banks, the second above a hole, as a real VM's are.
        let half = self.page_count() / 2;
        vec![(0, half), (1 << 32, self.page_count() - half)]
    }
}

/// One replicated disk in a Vec.
struct Disk(Mutex<Vec<u8>>);

impl ScrubDisks for Disk {
    fn list(&self) -> Vec<ScrubDisk> {
        vec![ScrubDisk {
            index: 0,
            size: self.0.lock().unwrap().len() as u64,
            name: "disk0".into(),
        }]
    }
    fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), VmOpError> {
        assert_eq!(index, 0);
        let d = self.0.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), VmOpError> {
        assert_eq!(index, 0);
        self.0.lock().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
}

fn state() -> VmState {
    VmState {
        vcpus: vec![b"vcpu 0".to_vec(), b"vcpu 1".to_vec()],
        devices: b"devices".to_vec(),
    }
}

fn memory(pages: usize) -> Vec<u8> {
    (0..pages * PAGE_SIZE)
        .map(|i| (i * 7 % 251) as u8)
        .collect()
}

fn opts() -> ScrubOptions {
    ScrubOptions {
        region_bytes: 16 * PAGE_SIZE as u32,
        ..ScrubOptions::default()
    }
}

/// A digest of everything `vm` and `disks` hold, region by region, as the primary hashes it.
fn full_digest(vm: &Mem, disks: Option<&dyn ScrubDisks>) -> (ScrubDigest, Vec<Job>) {
    let layout = Layout::of(vm, disks);
    let hashes = StateHashes::of(&state());
    let src = Sources {
        vm,
        disks,
        state: Some(&hashes),
    };
    let mut c = Cursor::new();
    let mut d = ScrubDigest::default();
    let mut jobs = Vec::new();
    while let Some(region) = c.next(&layout, opts().region_bytes) {
        let hash = src.hash(&region, None).unwrap();
        d.entries.push(ScrubEntry { region, hash });
        jobs.push(Job {
            region,
            pass: 0,
            attempt: 0,
        });
    }
    (d, jobs)
}

#[test]
fn a_walk_covers_memory_disks_and_state_once() {
    let layout = Layout {
        pages: 40,
        ram: vec![(0, 40)],
        disks: vec![
            ScrubDisk {
                index: 0,
                size: 70_000,
                name: "a".into(),
            },
            ScrubDisk {
                index: 2,
                size: 0,
                name: "empty".into(),
            },
        ],
        vcpus: 2,
    };
    let mut c = Cursor::new();
    let mut all = Vec::new();
    while let Some(r) = c.next(&layout, 16 * PAGE_SIZE as u32) {
        all.push(r);
    }
    assert!(c.at_end(&layout, 16 * PAGE_SIZE as u32));
    let mem: Vec<_> = all.iter().filter(|r| r.kind() == "memory").collect();
    assert_eq!(mem.len(), 3, "{all:?}");
    assert_eq!(
        all.iter().map(ScrubRegion::bytes).sum::<u64>(),
        40 * PAGE_SIZE as u64 + 70_000
    );
    assert_eq!(
        all[3],
        ScrubRegion::Disk {
            index: 0,
            offset: 0,
            len: 65536
        }
    );
    assert_eq!(
        all[all.len() - 3..],
        [
            ScrubRegion::Devices,
            ScrubRegion::Vcpu { index: 0 },
            ScrubRegion::Vcpu { index: 1 }
        ]
    );
}

#[test]
fn regions_are_named_by_guest_physical_address_and_sector() {
    let vm = Mem(memory(64));
    let l = Layout::of(&vm, Some(&Disk(Mutex::new(vec![0; 8192]))));
    let m = ScrubRegion::Memory {
        first_pfn: 32,
        pages: 16,
    };
    assert_eq!(
        l.name(&m),
        "memory gpa 0x100000000-0x100010000 (pages 32..48)"
    );
    let d = ScrubRegion::Disk {
        index: 0,
        offset: 1024,
        len: 1000,
    };
    assert_eq!(
        l.name(&d),
        "disk 0 (\"disk0\") bytes 1024..2024 (sectors 2..4)"
    );
    assert_eq!(l.name(&ScrubRegion::Vcpu { index: 1 }), "vCPU 1 state");
}

#[test]
fn backup_check_finds_differences_and_takes_repairs() {
    let primary = Mem(memory(64));
    let pdisk = Disk(Mutex::new(memory(4)));
    let (digest, _) = full_digest(&primary, Some(&pdisk));

    let mut backup = Mem(memory(64));
    backup.0[40 * PAGE_SIZE + 5] ^= 1;
    let bdisk = Disk(Mutex::new(memory(4)));
    bdisk.0.lock().unwrap()[100] ^= 0xff;
    let mut bstate = state();
    bstate.vcpus[1].push(0);

    // A copy at another checkpoint compares nothing.
    let r = check(&mut backup, Some((4, &bstate)), 5, &digest, Some(&bdisk)).unwrap();
    assert_eq!(r.outcome, ScrubOutcome::Stale);
    assert_eq!((r.checked, r.backup_epoch), (0, 4));

    let r = check(&mut backup, Some((5, &bstate)), 5, &digest, Some(&bdisk)).unwrap();
    assert_eq!(r.outcome, ScrubOutcome::Compared);
    assert_eq!(r.checked as usize, digest.entries.len());
    assert_eq!(
        r.mismatches,
        vec![
            ScrubRegion::Memory {
                first_pfn: 32,
                pages: 16
            },
            ScrubRegion::Disk {
                index: 0,
                offset: 0,
                len: 4 * PAGE_SIZE as u32
            },
            ScrubRegion::Vcpu { index: 1 },
        ]
    );
    // The repairs make memory and disk equal; the same digest then finds only the vCPU.
    let mut again = digest.clone();
    for region in &r.mismatches[..2] {
        let mut data = Vec::new();
        let src = Sources {
            vm: &primary,
            disks: Some(&pdisk as &dyn ScrubDisks),
            state: None,
        };
        src.hash(region, Some(&mut data)).unwrap();
        again.repairs.push(ScrubRepair {
            region: *region,
            data,
        });
    }
    let r = check(&mut backup, Some((5, &bstate)), 5, &again, Some(&bdisk)).unwrap();
    assert_eq!(r.repaired, 2);
    assert_eq!(r.mismatches, vec![ScrubRegion::Vcpu { index: 1 }]);
    assert_eq!(backup.0, primary.0);
    assert_eq!(*bdisk.0.lock().unwrap(), *pdisk.0.lock().unwrap());

    // A backup without the disk, or with less memory, differs there rather than failing.
    let mut small = Mem(memory(32));
    let r = check(&mut small, Some((5, &state())), 5, &digest, None).unwrap();
    assert!(r.mismatches.contains(&ScrubRegion::Memory {
        first_pfn: 32,
        pages: 16
    }));
    assert!(r.mismatches.iter().any(|m| m.kind() == "disk"));
    // A repair past its end is refused.
    let mut rep = ScrubDigest::default();
    rep.repairs.push(ScrubRepair {
        region: ScrubRegion::Memory {
            first_pfn: 40,
            pages: 1,
        },
        data: vec![0; PAGE_SIZE],
    });
    assert!(matches!(
        check(&mut small, Some((5, &state())), 5, &rep, None),
        Err(ScrubError::Repair { .. })
    ));
}

fn answer(epoch: u64, pass: u64, checked: usize, mismatches: Vec<ScrubRegion>) -> ScrubResult {
    ScrubResult {
        pass,
        outcome: ScrubOutcome::Compared,
        backup_epoch: epoch,
        checked: checked as u32,
        bytes: 0,
        repaired: 0,
        mismatches,
    }
}

/// The primary's side of a pass over a 64-page guest, answered by a backup whose copy differs
/// in one region until it is repaired (`heals_after` repairs; never with `u32::MAX`).
fn run_pass(heals_after: u32) -> (Planner, VerifyReport, u32) {
    let vm = Mem(memory(64));
    let mut p = Planner::new(ScrubOptions {
        period: None,
        verify_bytes_per_checkpoint: 32 * PAGE_SIZE as u64,
        ..opts()
    });
    p.set_layout(Layout::of(&vm, None));
    let (tx, rx) = std::sync::mpsc::channel();
    let pass = p.verify(tx, Instant::now());
    let bad = ScrubRegion::Memory {
        first_pfn: 16,
        pages: 16,
    };
    let mut repairs = 0;
    for epoch in 1..50u64 {
        let jobs = p.plan(Instant::now(), true);
        let frame = ScrubDigest {
            pass,
            entries: jobs
                .iter()
                .map(|j| ScrubEntry {
                    region: j.region,
                    hash: 0,
                })
                .collect(),
            repairs: Vec::new(),
        };
        repairs += jobs
            .iter()
            .filter(|j| j.repairs() && j.region == bad)
            .count() as u32;
        let n = jobs.len();
        p.hashed(epoch, frame, jobs.clone(), Vec::new());
        let sent = p.take_ready(epoch);
        if sent.is_empty() {
            assert!(rx.try_recv().is_ok() || p.status().last_verify.is_some());
            break;
        }
        let differs = jobs.iter().any(|j| j.region == bad) && repairs < heals_after;
        let m = if differs { vec![bad] } else { Vec::new() };
        p.answer(epoch, &answer(epoch, pass, n, m), 1).unwrap();
        if let Ok(r) = rx.try_recv() {
            return (p, r.unwrap(), repairs);
        }
    }
    panic!("the pass never finished: {:?}", p.status());
}

#[test]
fn a_verify_pass_repairs_what_differs_and_reports_it_healed() {
    let (p, report, repairs) = run_pass(1);
    assert_eq!(repairs, 1);
    assert!(!report.clean);
    assert!(report.healed);
    assert_eq!(report.mismatches.len(), 1);
    let m = &report.mismatches[0];
    assert_eq!(m.region, "memory gpa 0x10000-0x20000 (pages 16..32)");
    assert_eq!((m.kind, m.healed), ("memory", Some(true)));
    // Every region once, plus the re-check after the repair.
    assert_eq!(report.regions, 4 + 3 + 1);
    assert_eq!(report.memory_bytes, 64 * PAGE_SIZE as u64);
    let s = p.status();
    assert_eq!((s.mismatches, s.healed, s.unhealed), (1, 1, 0));
    assert!(!s.verify_running);
    assert_eq!(s.last_verify, Some(report));
}

#[test]
fn a_region_that_stays_different_is_given_up_after_the_last_repair() {
    let (p, report, repairs) = run_pass(u32::MAX);
    assert_eq!(repairs, MAX_REPAIR_ATTEMPTS);
    assert!(!report.healed);
    assert_eq!(report.mismatches[0].healed, Some(false));
    assert_eq!(p.status().unhealed, 1);
}

#[test]
fn a_clean_pass_is_clean() {
    let (_, report, repairs) = run_pass(0);
    assert_eq!(repairs, 0);
    assert!(report.clean && report.healed && report.mismatches.is_empty());
    assert_eq!(report.first_epoch, Some(1));
}

#[test]
fn the_background_walk_spends_its_budget_and_covers_everything_each_period() {
    let vm = Mem(memory(256)); // 1 MiB: 16 regions of 64 KiB, then 3 state regions
    let mut p = Planner::new(ScrubOptions {
        period: Some(Duration::from_secs(16)),
        region_bytes: 64 << 10,
        max_bytes_per_checkpoint: 128 << 10,
        ..ScrubOptions::default()
    });
    p.set_layout(Layout::of(&vm, None));
    let t0 = Instant::now();
    assert!(p.plan(t0, true).is_empty(), "nothing banked at the start");
    // One region's worth per simulated second: 16 seconds cover memory once.
    let mut regions = 0;
    for s in 1..=16u64 {
        let jobs = p.plan(t0 + Duration::from_secs(s), true);
        assert!(jobs.iter().all(|j| j.pass == 0 && j.attempt == 0));
        regions += jobs.iter().filter(|j| j.region.kind() == "memory").count();
    }
    assert_eq!(regions, 16);
    // A long pause banks no more than one pause's cap.
    let jobs = p.plan(t0 + Duration::from_secs(1000), true);
    let mem = jobs.iter().filter(|j| j.region.kind() == "memory").count();
    assert_eq!(mem, 2, "{jobs:?}");
    assert!(p.status().background_passes >= 1);
    // While the guest stays paused the walk waits.
    assert!(p.plan(t0 + Duration::from_secs(2000), false).is_empty());
    // Off: nothing.
    let mut off = Planner::new(ScrubOptions {
        period: None,
        ..ScrubOptions::default()
    });
    off.set_layout(Layout::of(&vm, None));
    assert!(off.plan(t0 + Duration::from_secs(100), true).is_empty());
}

#[test]
fn stale_answers_check_again_and_unknown_ones_break_the_protocol() {
    let vm = Mem(memory(32));
    let mut p = Planner::new(ScrubOptions {
        period: None,
        ..opts()
    });
    p.set_layout(Layout::of(&vm, None));
    let (tx, _rx) = std::sync::mpsc::channel();
    p.verify(tx, Instant::now());
    let jobs = p.plan(Instant::now(), true);
    p.hashed(3, ScrubDigest::default(), jobs.clone(), Vec::new());
    assert!(
        p.take_ready(2).is_empty(),
        "not before checkpoint 3's Commit"
    );
    assert_eq!(p.take_ready(3).len(), 1);
    let stale = ScrubResult {
        outcome: ScrubOutcome::Stale,
        ..answer(2, 1, 0, Vec::new())
    };
    p.answer(3, &stale, 1).unwrap();
    assert_eq!(p.plan(Instant::now(), true), jobs, "the same regions again");
    // An answer nobody asked for, and a region the digest did not carry.
    assert!(p.answer(4, &answer(4, 1, 0, Vec::new()), 1).is_err());
    p.hashed(4, ScrubDigest::default(), jobs.clone(), Vec::new());
    p.take_ready(4);
    let stranger = ScrubRegion::Disk {
        index: 9,
        offset: 0,
        len: 1,
    };
    assert!(p.answer(4, &answer(4, 1, 1, vec![stranger]), 1).is_err());
}

#[test]
fn a_verify_after_the_end_fails_at_once() {
    let mut p = Planner::new(opts());
    let (tx, rx) = std::sync::mpsc::channel();
    p.verify(tx, Instant::now());
    p.end("the pair ended");
    assert!(matches!(rx.recv().unwrap(), Err(ScrubError::Ended(_))));
    let (tx, rx) = std::sync::mpsc::channel();
    assert_eq!(p.verify(tx, Instant::now()), 0);
    assert!(matches!(rx.recv().unwrap(), Err(ScrubError::Ended(_))));
}

#[test]
fn jobs_given_back_come_first_and_keep_the_pass_open() {
    let vm = Mem(memory(64));
    let mut p = Planner::new(ScrubOptions {
        period: None,
        verify_bytes_per_checkpoint: 64 * PAGE_SIZE as u64,
        ..opts()
    });
    p.set_layout(Layout::of(&vm, None));
    let (tx, rx) = std::sync::mpsc::channel();
    p.verify(tx, Instant::now());
    let jobs = p.plan(Instant::now(), false);
    assert_eq!(
        jobs.len(),
        4 + 1 + 2,
        "4 memory regions, devices, 2 vCPUs: {jobs:?}"
    );
    // Only the first was hashed in time.
    let (first, rest) = jobs.split_at(1);
    p.give_back(rest.to_vec());
    p.hashed(1, ScrubDigest::default(), first.to_vec(), Vec::new());
    assert!(rx.try_recv().is_err(), "the pass is not over");
    assert_eq!(
        p.plan(Instant::now(), false),
        rest.to_vec(),
        "the rest, in order"
    );
}
