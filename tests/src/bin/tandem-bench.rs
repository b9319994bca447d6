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
//! * ft (test network): FT beside standalone in one run: added TCP round trip on `echo`, compute
//!   and `dirty:64:20000` throughput ratios, checkpoint pause/rate/size, replication bandwidth,
//!   INC latency and failover time (SIGKILL of the primary -> the client's next reply) per disk
//!   mode. `ft --quick` takes fewer samples and one failover (the smoke test runs it).
//! * ft-crypto (test network): each figure without and with a key: AEAD record throughput, link
//!   throughput, live migration, FT initial sync and checkpoint pause (`bench::ft::crypto`).
//!
//! `tandem-bench [foundation|devices|migration|ft|ft-crypto [--quick]]` runs one part; no
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
    if !["", "foundation", "devices", "migration", "ft", "ft-crypto"].contains(&part) {
        eprintln!("usage: tandem-bench [foundation|devices|migration|ft|ft-crypto [--quick]]");
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
    for (name, run) in [
        ("devices", bench::devices::run as fn()),
        ("migration", bench::migration::run),
        (
            "ft",
            if quick {
                || bench::ft::run(true)
            } else {
                || bench::ft::run(false)
            },
        ),
        (
            "ft-crypto",
            if quick {
                || bench::ft::crypto::run(true)
            } else {
                || bench::ft::crypto::run(false)
            },
        ),
    ] {
        if (all || part == name) && netns_available(&format!("tandem-bench {name}")) {
            run();
        }
    }
}
