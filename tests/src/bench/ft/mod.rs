//! FT beside standalone, the same guest in the same run: added TCP latency on `echo`, compute and
//! dirty-page throughput ratios, checkpoint pause/rate/size, replication bandwidth, and failover
//! time as a client on one TCP connection sees it. Prints figures; asserts nothing about speed
//! (it does stop on a wrong answer, e.g. an INC lost across a failover).

pub mod crypto;
mod failover;
mod load;
mod pair;

use super::{median, percentile, us};
use crate::guest::{parse_compute, parse_dirty};
use load::Window;
use pair::{DiskMode, Guest, Mark, Site, FAILURE_TIMEOUT_MS};
use std::time::Duration;

/// How much of each figure to take: full, or a quick pass that only shows the bench still works.
struct Sizes {
    round_trips: usize,
    idle: Duration,
    samples: usize,
    rounds: usize,
    failover_modes: &'static [DiskMode],
    failover_runs: usize,
    warm: Duration,
    incs: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                round_trips: 200,
                idle: Duration::from_secs(1),
                samples: 2,
                rounds: 1,
                failover_modes: &[DiskMode::Replicated],
                failover_runs: 1,
                warm: Duration::from_millis(1000),
                incs: 100,
            }
        } else {
            Sizes {
                round_trips: 2000,
                idle: Duration::from_secs(3),
                samples: 3,
                rounds: 3,
                failover_modes: &[DiskMode::Shared, DiskMode::Replicated],
                failover_runs: 5,
                warm: Duration::from_millis(1500),
                incs: 1000,
            }
        }
    }
}

/// Runs the FT figures; `quick` takes fewer samples and one failover.
pub fn run(quick: bool) {
    let z = Sizes::new(quick);
    println!(
        "ft: built-in guest, 1 vCPU, 128 MiB, primary on host P, backup on host B, stream on the \
         host-to-host veth; default checkpoint interval; failure timeout {FAILURE_TIMEOUT_MS} ms{}",
        if quick { " (quick: fewer samples)" } else { "" }
    );
    let site = Site::up("fbe");
    latency(&site, &z);
    throughput(&site, &z, "compute", parse_compute, "M iter/s", 1e6);
    throughput(&site, &z, "dirty:64:20000", parse_dirty, "k pages/s", 1e3);
    incs_and_failover(&site, &z);
}

/// Echo round trips standalone, then protected (after the idle guest's checkpoint figures).
fn latency(site: &Site, z: &Sizes) {
    let echo = Guest {
        workload: "echo",
        mem_mib: 128,
        nic: true,
        disk: None,
    };
    let standalone = {
        let _vm = site.boot(&echo);
        load::echo_round_trips(&site.net, z.round_trips)
    };
    let mut vm = site.boot(&echo);
    let synced = vm.protect(site);
    std::thread::sleep(Duration::from_millis(500));
    let mark = Mark::now(&vm, &site.net);
    std::thread::sleep(z.idle);
    let idle = mark.since(&vm, &site.net);
    let mark = Mark::now(&vm, &site.net);
    let ft = load::echo_round_trips(&site.net, z.round_trips);
    let busy = mark.since(&vm, &site.net);
    drop(vm);
    println!(
        "ft: protected {:.0} ms after ft.enable (idle echo guest)",
        synced.as_secs_f64() * 1e3
    );
    for (what, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (s, f) = (percentile(&standalone, p), percentile(&ft, p));
        println!(
            "ft: echo TCP round trip {what} (64 B x {}, one connection): standalone {:.0} us, FT {:.0} us, added {:+.0} us, FT/standalone {:.1}",
            z.round_trips,
            us(s),
            us(f),
            us(f) - us(s),
            f.as_secs_f64() / s.as_secs_f64()
        );
    }
    println!("ft: checkpoints, idle guest: {idle}");
    println!("ft: checkpoints, echo round trips: {busy}");
}

/// A workload's console rate standalone and protected, in alternating rounds (fresh VMs each)
/// so that the load of a shared host falls on both alike; and the checkpoints while protected.
fn throughput(
    site: &Site,
    z: &Sizes,
    workload: &str,
    parse: fn(&str) -> Option<(u32, u64)>,
    unit: &str,
    scale: f64,
) {
    let g = Guest {
        workload,
        mem_mib: 128,
        nic: false,
        disk: None,
    };
    let (mut standalone, mut ft, mut ck) = (Vec::new(), Vec::new(), None);
    for _ in 0..z.rounds {
        {
            let vm = site.boot(&g);
            // The first sample covers a partial second.
            load::console_rates(&vm.p, parse, 0, 1);
            standalone.push(Window::take(&vm.p, parse, 1, z.samples));
        }
        let mut vm = site.boot(&g);
        vm.protect(site);
        // Skip the sample that straddles ft.enable.
        let straddles = load::console_count(&vm.p, parse);
        load::console_rates(&vm.p, parse, straddles, 1);
        let mark = Mark::now(&vm, &site.net);
        ft.push(Window::take(&vm.p, parse, straddles + 1, z.samples));
        ck = Some(mark.since(&vm, &site.net));
    }
    let all = |w: &[Window]| median(&w.iter().flat_map(|w| w.samples.clone()).collect::<Vec<_>>());
    let mut ratios: Vec<f64> = standalone
        .iter()
        .zip(&ft)
        .map(|(s, f)| median(&f.samples) as f64 / median(&s.samples).max(1) as f64)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let (s, f) = (all(&standalone), all(&ft));
    let mid = |w: &[Window], f: fn(&Window) -> f64| {
        let mut v: Vec<f64> = w.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "ft: {workload} throughput (median of {} one-second samples each, {} alternating rounds): standalone {:.2} {unit}, FT {:.2} {unit}, FT/standalone {:.3} (per round {:.3}..{:.3})",
        z.samples * z.rounds,
        z.rounds,
        s as f64 / scale,
        f as f64 / scale,
        f as f64 / s.max(1) as f64,
        ratios[0],
        ratios[ratios.len() - 1]
    );
    let (sc, fc) = (
        mid(&standalone, Window::per_cpu_second),
        mid(&ft, Window::per_cpu_second),
    );
    println!(
        "ft: {workload} per vCPU-thread CPU second: standalone {:.2} {unit}, FT {:.2} {unit}, FT/standalone {:.3}; vCPU thread had {:.0}% of a core standalone, {:.0}% under FT",
        sc / scale,
        fc / scale,
        fc / sc.max(1e-9),
        mid(&standalone, Window::cpu_share) * 100.0,
        mid(&ft, Window::cpu_share) * 100.0
    );
    if let Some(ck) = ck {
        println!("ft: checkpoints, {workload} (last round): {ck}");
    }
}

/// INC round trips (disk write + flush) standalone and protected in each disk mode, and the
/// failover runs that follow each protected stretch.
fn incs_and_failover(site: &Site, z: &Sizes) {
    let standalone = failover::standalone_incs(site, z.incs);
    println!(
        "ft: counter INC round trip (disk write + flush), standalone: p50 {:.0} us, p99 {:.0} us",
        us(percentile(&standalone, 0.5)),
        us(percentile(&standalone, 0.99))
    );
    for &mode in z.failover_modes {
        let runs: Vec<failover::Run> = (0..z.failover_runs)
            .map(|_| failover::run_once(mode, z.warm))
            .collect();
        let mut incs: Vec<Duration> = runs.iter().flat_map(|r| r.incs.clone()).collect();
        incs.sort();
        let pause = |i: usize| median(&runs.iter().map(|r| r.pause_us[i]).collect::<Vec<_>>());
        println!(
            "ft: counter INC round trip, FT {} disk ({} INCs over {} runs): p50 {:.0} us, p99 {:.0} us (standalone x{:.1} / x{:.1}); checkpoint pause p50 {} us p99 {} us",
            mode.name(),
            incs.len(),
            runs.len(),
            us(percentile(&incs, 0.5)),
            us(percentile(&incs, 0.99)),
            percentile(&incs, 0.5).as_secs_f64() / percentile(&standalone, 0.5).as_secs_f64(),
            percentile(&incs, 0.99).as_secs_f64() / percentile(&standalone, 0.99).as_secs_f64(),
            pause(0),
            pause(1)
        );
        let mut outage: Vec<Duration> = runs.iter().map(|r| r.outage).collect();
        let mut live: Vec<Duration> = runs.iter().map(|r| r.live).collect();
        outage.sort();
        live.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "ft: failover, {} disk, SIGKILL of the primary -> first reply from the backup on the client's connection ({} runs): min {:.0} ms, median {:.0} ms, max {:.0} ms (backup live per ft.status: median {:.0} ms)",
            mode.name(),
            runs.len(),
            ms(outage[0]),
            ms(percentile(&outage, 0.5)),
            ms(outage[outage.len() - 1]),
            ms(percentile(&live, 0.5))
        );
    }
}
