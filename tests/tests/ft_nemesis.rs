//! The nemesis soak (issue 11): a seeded schedule of faults against a protected pair under a
//! recording client, the survivor protected again after each; never two live VMs, no
//! acknowledged value lost, the disk in step, and `ft.verify` clean after every step. The seed is
//! printed first; `TANDEM_NEMESIS_SEED=<seed>` replays a run, `TANDEM_NEMESIS_FAULTS=<n>` and
//! `TANDEM_NEMESIS_MINUTES=<m>` make it longer. Both disk modes together inject at least 100
//! faults per run.

use std::time::Duration;
use tandem_tests::nemesis::soak;

fn run(tag: &str, disk_mode: &'static str, faults: usize) {
    let r = soak(tag, disk_mode, faults, Duration::from_secs(11 * 60));
    eprintln!(
        "[{tag}] seed {}: {} faults, {} INCs ({} acknowledged), both hosts polled {} times, \
         {} clean ft.verify passes",
        r.seed,
        r.faults.len(),
        r.ops,
        r.acked,
        r.watcher_polls,
        r.verified
    );
    for (f, took) in &r.faults {
        eprintln!("[{tag}]   {f:?} {took:?}");
    }
    assert!(
        r.faults.len() >= r.target,
        "only {} of {} faults within the time budget (seed {})",
        r.faults.len(),
        r.target,
        r.seed
    );
    assert!(
        r.verified > 0,
        "ft.verify never compared a pair (seed {}): {r:?}",
        r.seed
    );
    assert!(
        r.acked > 10 * r.target,
        "the client made too little progress: {r:?}"
    );
}

#[test]
fn nemesis_shared_disk() {
    let name = "nemesis_shared_disk";
    let _ = name;
    tandem_tests::require!(kvm, netns, tcpdump);
    run("nms", "shared", 55);
}

#[test]
fn nemesis_replicated_disks() {
    let name = "nemesis_replicated_disks";
    let _ = name;
    tandem_tests::require!(kvm, netns, tcpdump);
    run("nmr", "replicated", 50);
}
