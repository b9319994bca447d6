//! FT beside standalone, the same guests in the same run, printed as one table (and JSON lines):
//! guest work per wall-clock second under unpaced memory loads (a 2 GiB guest rewriting 1 GiB,
//! 512 MiB rewriting 256 MiB, 2 and 4 vCPUs) and a paced one, compute, idle pauses at 1/2/4
//! vCPUs, echo round trips, counter INC (disk write + flush) on a shared and a replicated disk,
//! the initial sync of the memory-heavy guest, and failover as a client sees it. Standalone and
//! FT run in alternating rounds, so that a shared host's load falls on both alike; checkpoint
//! figures cover the measured window only (the difference of two metric scrapes). Prints
//! figures; asserts nothing about speed (it does stop on a wrong answer, e.g. an INC lost across
//! a failover).

pub mod crypto;
mod failover;
mod load;
mod pair;
mod table;
mod window;

use super::{median, percentile, us};
use crate::guest::{parse_compute, parse_dirty};
use pair::{DiskMode, Guest, Site, FAILURE_TIMEOUT_MS};
use std::time::Duration;
use table::{Ckpt, Compare, Row, Stat};
use window::{Delta, Mark, Poll};

/// How much of each figure to take: full, or a quick pass that only shows the bench still works.
struct Sizes {
    /// Alternating standalone/FT rounds of each throughput load.
    rounds: usize,
    /// One-second samples per round and side.
    samples: usize,
    idle: Duration,
    round_trips: usize,
    failover_modes: &'static [DiskMode],
    failover_runs: usize,
    incs: usize,
    warm: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                rounds: 1,
                samples: 2,
                idle: Duration::from_secs(2),
                round_trips: 200,
                failover_modes: &[DiskMode::Replicated],
                failover_runs: 1,
                incs: 100,
                warm: Duration::from_millis(1000),
            }
        } else {
            Sizes {
                rounds: 3,
                samples: 5,
                idle: Duration::from_secs(5),
                round_trips: 1000,
                failover_modes: &[DiskMode::Shared, DiskMode::Replicated],
                failover_runs: 5,
                incs: 300,
                warm: Duration::from_millis(2000),
            }
        }
    }
}

/// A throughput load: a guest whose console prints its work once a second.
struct Load {
    name: &'static str,
    workload: &'static str,
    mem_mib: u64,
    vcpus: u8,
    unit: &'static str,
    scale: f64,
    parse: fn(&str) -> Option<(u32, u64)>,
    note: &'static str,
    /// Left out of `--quick`.
    big: bool,
    /// `ft.enable`'s `target_pause_ms` (and then `max_backlog_bytes` 256 MiB), when not the
    /// defaults.
    target_pause_ms: Option<u64>,
}

const LOADS: &[Load] = &[
    Load {
        name: "heavy",
        workload: "dirty:1024:0",
        mem_mib: 2048,
        vcpus: 1,
        unit: "k pages/s",
        scale: 1e3,
        parse: parse_dirty,
        note: "unpaced: 1 GiB working set rewritten as fast as the guest can",
        big: true,
        target_pause_ms: None,
    },
    Load {
        name: "dirty256",
        workload: "dirty:256:0",
        mem_mib: 512,
        vcpus: 1,
        unit: "k pages/s",
        scale: 1e3,
        parse: parse_dirty,
        note: "unpaced",
        big: true,
        target_pause_ms: None,
    },
    Load {
        name: "smp2",
        workload: "dirty:64:0",
        mem_mib: 256,
        vcpus: 2,
        unit: "k pages/s",
        scale: 1e3,
        parse: parse_dirty,
        note: "unpaced, all vCPUs summed",
        big: false,
        target_pause_ms: None,
    },
    Load {
        name: "smp4",
        workload: "dirty:64:0",
        mem_mib: 256,
        vcpus: 4,
        unit: "k pages/s",
        scale: 1e3,
        parse: parse_dirty,
        note: "unpaced, all vCPUs summed (4 vCPUs on 2 host cores)",
        big: true,
        target_pause_ms: None,
    },
    Load {
        name: "paced2",
        workload: "dirty:64:200000",
        mem_mib: 256,
        vcpus: 2,
        unit: "k pages/s",
        scale: 1e3,
        parse: parse_dirty,
        note: "PACED at 200k pages/s with 100 ms of catch-up: the ratio is ~1 by construction \
               while FT keeps within it; read the pause",
        big: true,
        target_pause_ms: None,
    },
    Load {
        name: "smp2-long",
        workload: "dirty:64:0",
        mem_mib: 256,
        vcpus: 2,
        unit: "k pages/s",
        scale: 1e3,
        parse: parse_dirty,
        note: "as smp2 with ft.enable target_pause_ms=100, max_backlog_bytes=256 MiB: longer \
               pauses bought for epochs long enough to amortise the write faults",
        big: true,
        target_pause_ms: Some(100),
    },
    Load {
        name: "hot1",
        workload: "dirty:1:0",
        mem_mib: 128,
        vcpus: 1,
        unit: "k pages/s",
        scale: 1e3,
        parse: parse_dirty,
        note: "unpaced: a 1 MiB working set (256 pages) rewritten as fast as the guest can; \
               every page is written every epoch, so FT keeps them writable (hot pages)",
        big: true,
        target_pause_ms: None,
    },
    Load {
        name: "compute",
        workload: "compute",
        mem_mib: 128,
        vcpus: 1,
        unit: "M iter/s",
        scale: 1e6,
        parse: parse_compute,
        note: "ring-3 integer loop",
        big: false,
        target_pause_ms: None,
    },
];

/// Every part `--only` can name.
pub const PARTS: &[&str] = &[
    "heavy",
    "dirty256",
    "smp2",
    "smp4",
    "paced2",
    "smp2-long",
    "hot1",
    "compute",
    "idle1",
    "idle2",
    "idle4",
    "echo",
    "inc",
];

/// Runs the FT figures; `quick` takes fewer samples and leaves out the big loads; `only`, when
/// not empty, names the parts to run.
pub fn run(quick: bool, only: &[String]) {
    let z = Sizes::new(quick);
    let wanted = |name: &str, big: bool| {
        if only.is_empty() {
            !(quick && big)
        } else {
            only.iter().any(|o| o == name)
        }
    };
    println!(
        "ft: built-in guest, primary on host P, backup on host B, stream on the host-to-host veth; \
         ft.enable defaults; failure timeout {FAILURE_TIMEOUT_MS} ms; standalone and FT in {} \
         alternating round(s) of {} one-second samples; work = guest work per wall-clock second \
         (its TSC runs on through pauses and throttling); pause percentiles from the pause \
         histogram's difference over the measured window, interpolated within buckets; n = \
         samples behind each figure",
        z.rounds, z.samples
    );
    if quick {
        println!(
            "ft: QUICK pass: fewer samples, no 2 GiB / 512 MiB / 4-vCPU / paced loads, idle at 1 \
             vCPU only, one failover on a replicated disk; shows the bench works, figures are not \
             for quoting"
        );
    }
    let site = Site::up("fbe");
    let mut rows = Vec::new();
    for l in LOADS {
        if wanted(l.name, l.big) {
            rows.extend(throughput(&site, &z, l));
        }
    }
    for vcpus in [1u8, 2, 4] {
        if wanted(&format!("idle{vcpus}"), vcpus > 1) {
            rows.push(idle(&site, &z, vcpus));
        }
    }
    if wanted("echo", false) {
        rows.extend(echo(&site, &z));
    }
    if wanted("inc", false) {
        rows.extend(incs_and_failover(&site, &z));
    }
    table::print(&rows);
}

/// Median of a series as a [`Stat`], scaled.
fn stat(v: &[u64], scale: f64) -> Stat {
    Stat::new(median(v) as f64 / scale, v.len())
}

/// A load's work standalone and protected in alternating rounds (fresh VMs each), and the
/// checkpoints while protected; for the memory-heavy load also its initial sync.
fn throughput(site: &Site, z: &Sizes, l: &Load) -> Vec<Row> {
    let g = Guest {
        workload: l.workload,
        mem_mib: l.mem_mib,
        vcpus: l.vcpus,
        nic: false,
        disk: None,
    };
    let (mut standalone, mut ft, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ckpt, mut syncs, mut steps) = (Delta::default(), Vec::new(), String::new());
    for _ in 0..z.rounds {
        let s = {
            let vm = site.boot(&g);
            // The first sample covers a partial second.
            load::console_rates(&vm.p, l.parse, l.vcpus, 1, z.samples, None)
        };
        let mut vm = site.boot(&g);
        // Protect a guest that is already at work (its working set touched).
        load::console_rates(&vm.p, l.parse, l.vcpus, 0, 1, None);
        let extra = match l.target_pause_ms {
            Some(ms) => {
                serde_json::json!({ "target_pause_ms": ms, "max_backlog_bytes": 256u64 << 20 })
            }
            None => serde_json::json!({}),
        };
        syncs.push(vm.protect_with(site, &extra));
        // Skip the sample that straddles ft.enable and one more while flow control settles.
        let from = load::console_count(&vm.p, l.parse, l.vcpus) + 2;
        load::console_rates(&vm.p, l.parse, l.vcpus, from - 1, 1, None);
        let mark = Mark::now(&vm, &site.net);
        let mut poll = Poll::new();
        let f = load::console_rates(&vm.p, l.parse, l.vcpus, from, z.samples, Some(&mut poll));
        ckpt.merge(&mark.since(&vm, &site.net, &poll));
        steps = step_percentiles(&vm.p);
        ratios.push(median(&f) as f64 / median(&s).max(1) as f64);
        standalone.extend(s);
        ft.extend(f);
    }
    let load = format!(
        "`{}`, {} MiB, {} vCPU{}{}",
        l.workload,
        l.mem_mib,
        l.vcpus,
        if l.vcpus > 1 { "s" } else { "" },
        l.target_pause_ms
            .map(|ms| format!(", target_pause_ms={ms}, max_backlog_bytes=256 MiB"))
            .unwrap_or_default()
    );
    let mut row = Row::new(load.clone(), "work", l.unit);
    row.standalone = Some(stat(&standalone, l.scale));
    row.ft = Some(stat(&ft, l.scale));
    row.compare = Compare::Ratio;
    row.per_round = ratios;
    let c = ckpt.ckpt();
    row.note = format!(
        "{}; mean per step: {}; last round's {steps}",
        l.note,
        step_means(&c)
    );
    row.ckpt = Some(c);
    let mut rows = vec![row];
    if l.name == "heavy" {
        let mut t: Vec<u64> = syncs.iter().map(|s| s.time.as_millis() as u64).collect();
        let b: Vec<u64> = syncs.iter().map(|s| s.link_bytes).collect();
        let down: Vec<u64> = syncs
            .iter()
            .filter_map(|s| s.downtime.map(|d| d.as_micros() as u64))
            .collect();
        t.sort_unstable();
        let mut sync = Row::new(load, "initial sync", "ms");
        sync.ft = Some(Stat::new(median(&t) as f64, t.len()));
        sync.note = format!(
            "ft.enable -> both protected, the guest at work; {:.0} MiB on the link (median), \
             {}..{} ms; the pause it ended with: {}",
            median(&b) as f64 / (1u64 << 20) as f64,
            t[0],
            t[t.len() - 1],
            if down.is_empty() {
                "not reported".to_string()
            } else {
                format!(
                    "median {:.1} ms (n={})",
                    median(&down) as f64 / 1e3,
                    down.len()
                )
            }
        );
        rows.push(sync);
    }
    rows
}

/// The pause's mean per step, in µs, as the notes print it.
fn step_means(c: &Ckpt) -> String {
    c.steps_us
        .iter()
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// ft.status's pause p50 / p99 per step (its recent window): where the median pause and its
/// tail go, which the means (pulled up by a few long pauses) do not say.
fn step_percentiles(p: &crate::Tandem) -> String {
    let s = &crate::ft::ft_status(p)["pause_steps"];
    let steps = [
        "stop",
        "dirty_log",
        "copy",
        "vcpu_state",
        "devices",
        "gates",
        "resume",
    ];
    let each: Vec<String> = steps
        .iter()
        .map(|k| format!("{k} {}/{}", s[k]["p50_us"], s[k]["p99_us"]))
        .collect();
    format!("p50/p99 per step (ft.status window): {}", each.join(", "))
}

/// ft.status's commit latency (its recent window): what output waits beyond the pause.
fn commit_latency(p: &crate::Tandem) -> String {
    let c = &crate::ft::ft_status(p)["commit_latency"];
    format!(
        "after the pause (ft.status window): send p50 {} µs, ack p50 {} / p99 {} µs",
        c["send"]["p50_us"], c["ack"]["p50_us"], c["ack"]["p99_us"]
    )
}

/// An idle guest's checkpoints at `vcpus` vCPUs.
fn idle(site: &Site, z: &Sizes, vcpus: u8) -> Row {
    let g = Guest {
        workload: "idle",
        mem_mib: 128,
        vcpus,
        nic: false,
        disk: None,
    };
    let mut vm = site.boot(&g);
    vm.protect(site);
    std::thread::sleep(Duration::from_millis(1000));
    let mark = Mark::now(&vm, &site.net);
    let mut poll = Poll::new();
    poll.sleep(&vm.p, z.idle);
    let c = mark.since(&vm, &site.net, &poll).ckpt();
    let mut row = Row::new(
        format!("idle, {vcpus} vCPU{}", if vcpus > 1 { "s" } else { "" }),
        "pause",
        "µs",
    );
    row.note = format!(
        "mean per step: {}; {}; {}",
        step_means(&c),
        step_percentiles(&vm.p),
        commit_latency(&vm.p)
    );
    row.ckpt = Some(c);
    row
}

/// Echo round trips standalone and protected, alternating.
fn echo(site: &Site, z: &Sizes) -> Vec<Row> {
    let g = Guest {
        workload: "echo",
        mem_mib: 128,
        vcpus: 1,
        nic: true,
        disk: None,
    };
    let per = z.round_trips / z.rounds;
    let (mut standalone, mut ft, mut ckpt) = (Vec::new(), Vec::new(), Delta::default());
    let mut commit = String::new();
    for _ in 0..z.rounds {
        {
            let _vm = site.boot(&g);
            standalone.extend(load::echo_round_trips(&site.net, per));
        }
        let mut vm = site.boot(&g);
        vm.protect(site);
        std::thread::sleep(Duration::from_millis(500));
        let mark = Mark::now(&vm, &site.net);
        let client = load::echo_client(&site.net, per);
        let mut poll = Poll::new();
        while !client.is_finished() {
            poll.sleep(&vm.p, Duration::from_millis(50));
        }
        ckpt.merge(&mark.since(&vm, &site.net, &poll));
        commit = commit_latency(&vm.p);
        ft.extend(client.join().expect("echo client"));
    }
    standalone.sort();
    ft.sort();
    let mut rows = Vec::new();
    for (figure, p) in [("round trip p50", 0.5), ("round trip p99", 0.99)] {
        let mut row = Row::new("echo, 64 B, one TCP connection", figure, "µs");
        row.standalone = Some(Stat::new(us(percentile(&standalone, p)), standalone.len()));
        row.ft = Some(Stat::new(us(percentile(&ft, p)), ft.len()));
        row.compare = Compare::Added;
        if p == 0.5 {
            row.ckpt = Some(ckpt.ckpt());
            row.note = format!("output-triggered checkpoints; {commit}");
        }
        rows.push(row);
    }
    rows
}

/// INC round trips (disk write + flush) standalone and protected in each disk mode, the
/// protected ones from the stretch before each failover run; then the failovers.
fn incs_and_failover(site: &Site, z: &Sizes) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut standalone = Vec::new();
    let mut added_p50 = Vec::new();
    for &mode in z.failover_modes {
        let mut runs = Vec::new();
        for _ in 0..z.failover_runs {
            // Alternating: a standalone stretch before each protected one.
            standalone.extend(failover::standalone_incs(site, z.incs));
            runs.push(failover::run_once(mode, z.warm));
        }
        standalone.sort();
        let mut incs: Vec<Duration> = runs.iter().flat_map(|r| r.incs.clone()).collect();
        incs.sort();
        let mut ckpt = Delta::default();
        for r in &runs {
            ckpt.merge(&r.ckpt);
        }
        let load = format!("counter INC (write + flush), {} disk", mode.name());
        let s50 = us(percentile(&standalone, 0.5));
        let f50 = us(percentile(&incs, 0.5));
        added_p50.push((mode, f50 - s50));
        for (figure, p) in [("round trip p50", 0.5), ("round trip p99", 0.99)] {
            let mut row = Row::new(load.clone(), figure, "µs");
            row.standalone = Some(Stat::new(us(percentile(&standalone, p)), standalone.len()));
            row.ft = Some(Stat::new(us(percentile(&incs, p)), incs.len()));
            row.compare = Compare::Added;
            if p == 0.5 {
                row.ckpt = Some(ckpt.ckpt());
                row.note = format!("{} protected runs", runs.len());
                if let [(DiskMode::Shared, shared), (DiskMode::Replicated, repl)] = added_p50[..] {
                    row.note.push_str(&format!(
                        "; added p50 replicated/shared {:.2}",
                        repl / shared
                    ));
                }
            }
            rows.push(row);
        }
        let mut outage: Vec<u64> = runs.iter().map(|r| r.outage.as_millis() as u64).collect();
        let live: Vec<u64> = runs.iter().map(|r| r.live.as_millis() as u64).collect();
        outage.sort_unstable();
        let mut row = Row::new(
            format!("failover, {} disk", mode.name()),
            "SIGKILL -> next reply",
            "ms",
        );
        row.ft = Some(Stat::new(median(&outage) as f64, outage.len()));
        row.note = format!(
            "min {} / max {} ms over {} runs; backup live per ft.status: median {} ms",
            outage[0],
            outage[outage.len() - 1],
            outage.len(),
            median(&live)
        );
        rows.push(row);
    }
    rows
}
