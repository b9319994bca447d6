//! Tandem's benchmark: prints figures, asserts nothing about speed. Run it with
//! `cargo build --release -p tandem-tests -p vmm && target/release/tandem-bench [PART]`
//! (needs /dev/kvm; devices, migration and ft need root for the test network).
//!
//! * foundation: time from `vm.boot` to `tandem-guest: ready`, median of 10 boots; API round-trip
//!   latency (`GET vmm.ping`), p50/p99 over 1000 calls; the guest's ring-3 compute rate beside the
//!   same loop run as a host process, in one run; CPU used by an idle guest's vCPU thread;
//! * devices (test network): TCP round trip p50/p99 and TCP throughput client <-> guest echo, and
//!   disk write+flush rate through the guest's counter, each beside a host-only baseline (a host
//!   process on host P's LAN bridge; the same disk file written from the host) in one run;
//! * migration (test network): for 256 MiB and 1 GiB guests, idle and under `dirty:64:20000`,
//!   live migration over the host-to-host link: downtime, total time, rounds and bytes sent;
//! * ft (test network): FT beside standalone in one run, one table plus JSON lines: guest work
//!   per wall-clock second under unpaced memory loads (2 GiB rewriting 1 GiB, 512 MiB rewriting
//!   256 MiB, 2 and 4 vCPUs), a paced one and compute; idle pauses at 1/2/4 vCPUs with their
//!   steps; echo and counter INC round trips (shared and replicated disk); the memory-heavy
//!   guest's initial sync; failover (SIGKILL of the primary -> the client's next reply).
//!   `ft --quick` takes fewer samples and leaves the big loads out (the smoke test runs it);
//!   `ft --only PART[,PART]` runs some parts (heavy, dirty256, smp2, smp4, paced2, smp2-long,
//!   compute, idle1, idle2, idle4, echo, inc).
//! * ft-crypto (test network): each figure without and with a key: AEAD record throughput, link
//!   throughput, live migration, FT initial sync and checkpoint pause (`bench::ft::crypto`).
//!
//! `tandem-bench [foundation|devices|migration|ft [--quick] [--only PARTS]|ft-crypto [--quick]]`
//! runs one part; no
//! argument runs all.

use tandem_tests::bench;
use tandem_tests::net::netns_available;

fn main() {
    if !tandem_tests::kvm_available("tandem-bench") {
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let part = args.first().map(String::as_str).unwrap_or_default();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|l| l.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let bad_part = only
        .iter()
        .find(|p| !bench::ft::PARTS.contains(&p.as_str()));
    let parts = ["", "foundation", "devices", "migration", "ft", "ft-crypto"];
    if !parts.contains(&part) || bad_part.is_some() {
        eprintln!(
            "usage: tandem-bench [foundation|devices|migration|ft [--quick] [--only PART[,PART]]\
             |ft-crypto [--quick]]; ft parts: {}",
            bench::ft::PARTS.join(", ")
        );
        std::process::exit(2);
    }
    println!(
        "tandem-bench, tandem at {}",
        tandem_tests::tandem_bin().display()
    );
    let all = part.is_empty();
    if all || part == "foundation" {
        bench::foundation::run();
    }
    for name in ["devices", "migration", "ft", "ft-crypto"] {
        if (all || part == name) && netns_available(&format!("tandem-bench {name}")) {
            match name {
                "devices" => bench::devices::run(),
                "migration" => bench::migration::run(),
                "ft" => bench::ft::run(quick, &only),
                _ => bench::ft::crypto::run(quick),
            }
        }
    }
}
