//! The benchmark must not rot: `tandem-bench ft --quick` runs end to end (real pair, real
//! failover) and prints every figure it promises, each a finite number.

use std::process::Command;
use std::time::Instant;
use tandem_tests::require;

#[test]
fn ft_bench_quick_prints_every_figure() {
    require!(kvm, netns);
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-bench"))
        .args(["ft", "--quick"])
        .output()
        .expect("run tandem-bench");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}(took {:?})", start.elapsed());
    assert!(
        out.status.success(),
        "tandem-bench ft --quick failed:\n{text}\n{err}"
    );
    for want in [
        "ft: echo TCP round trip p50",
        "ft: echo TCP round trip p99",
        "ft: checkpoints, idle guest:",
        "ft: checkpoints, echo round trips:",
        "ft: compute throughput",
        "ft: compute per vCPU-thread CPU second",
        "ft: checkpoints, compute",
        "ft: dirty:64:20000 throughput",
        "ft: checkpoints, dirty:64:20000",
        "ft: counter INC round trip (disk write + flush), standalone",
        "ft: counter INC round trip, FT replicated disk",
        "ft: failover, replicated disk",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    for bad in ["NaN", "inf "] {
        assert!(!text.contains(bad), "{bad} in:\n{text}");
    }
    // Checkpoints were taken and the stream moved bytes while the guest idled.
    let idle = text
        .lines()
        .find(|l| l.starts_with("ft: checkpoints, idle guest:"))
        .unwrap_or_default();
    let per_s: f64 = idle
        .split_whitespace()
        .nth(4)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(per_s > 0.0, "no checkpoints while idle: {idle}");
}
