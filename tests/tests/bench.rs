//! The benchmark must not rot: `tandem-bench ft --quick` runs end to end (real pair, real
//! failover), prints its one table with every row it promises, and each row's JSON line holds
//! finite numbers with their sample counts.

use serde_json::Value;
use std::process::Command;
use std::time::Instant;
use tandem_tests::require;

/// Every number-like word of `text` that is not finite (`inf`, `NaN`, wherever it stands in a
/// line, the end included).
fn non_finite(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || "|(),;:=/".contains(c))
        .map(|w| w.trim_end_matches(['%', 'x']))
        .filter(|w| {
            let l = w.to_ascii_lowercase();
            let l = l.trim_start_matches(['+', '-']);
            l == "inf" || l == "infinity" || l == "nan"
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn non_finite_words_are_found_anywhere() {
    assert_eq!(non_finite("ratio 1.00, ok"), Vec::<String>::new());
    assert_eq!(non_finite("FT/standalone inf"), vec!["inf"]);
    assert_eq!(non_finite("| NaN µs |"), vec!["NaN"]);
    assert_eq!(non_finite("added -inf\n"), vec!["-inf"]);
    assert_eq!(non_finite("information infinite"), Vec::<String>::new());
}

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
    assert!(
        text.contains("QUICK pass"),
        "the quick pass says so:\n{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("| load |")).count(),
        1,
        "one table:\n{text}"
    );
    let rows: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("json: "))
        .map(|j| serde_json::from_str(j).unwrap_or_else(|e| panic!("{e}: {j}")))
        .collect();
    let row = |load: &str, figure: &str| {
        rows.iter()
            .find(|r| r["load"].as_str().is_some_and(|l| l.contains(load)) && r["figure"] == figure)
            .unwrap_or_else(|| panic!("no row {load:?}/{figure:?} in:\n{text}"))
    };
    for (load, figure) in [
        ("dirty:64:0", "work"),
        ("compute", "work"),
        ("idle, 1 vCPU", "pause"),
        ("echo", "round trip p50"),
        ("echo", "round trip p99"),
        ("counter INC", "round trip p50"),
        ("failover, replicated disk", "SIGKILL -> next reply"),
    ] {
        let r = row(load, figure);
        // n beside every figure: each side that has a value has its sample count.
        for side in ["standalone", "ft"] {
            if !r[side].is_null() {
                assert!(r[side]["n"].as_u64().unwrap_or(0) > 0, "no n: {r}");
                assert!(r[side]["value"].as_f64().is_some(), "no value: {r}");
            }
        }
    }
    // Throughput rows compare FT with standalone; checkpoints were taken in the window.
    let work = row("dirty:64:0", "work");
    assert!(work["ratio"].as_f64().is_some_and(|r| r > 0.0), "{work}");
    let idle = row("idle, 1 vCPU", "pause");
    assert!(
        idle["checkpoints"]["n"].as_u64().unwrap_or(0) > 0,
        "no checkpoints while idle: {idle}"
    );
    let bad = non_finite(&text);
    assert!(bad.is_empty(), "{bad:?} in:\n{text}");
}
