//! The encryption benchmark must not rot: `tandem-bench ft-crypto --quick` runs end to end (real
//! link, real migrations and pairs, with and without a key) and prints every figure, each a
//! finite number.

use std::process::Command;
use std::time::Instant;
use tandem_tests::require_kvm_and_netns;

#[test]
fn ft_crypto_bench_quick_prints_every_figure() {
    let name = "ft_crypto_bench_quick_prints_every_figure";
    require_kvm_and_netns!(name);
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-bench"))
        .args(["ft-crypto", "--quick"])
        .output()
        .expect("run tandem-bench");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}(took {:?})", start.elapsed());
    assert!(
        out.status.success(),
        "tandem-bench ft-crypto --quick failed:\n{text}\n{err}"
    );
    for want in [
        "ft-crypto: records of 64 KiB: seal ",
        "ft-crypto: link throughput",
        "ft-crypto: migration 64 MiB idle, no key: downtime",
        "ft-crypto: migration 64 MiB idle, key: downtime",
        "ft-crypto: FT 64 MiB idle, no key: protected after",
        "ft-crypto: FT 64 MiB idle, key: protected after",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    for bad in ["NaN", "inf "] {
        assert!(!text.contains(bad), "{bad} in:\n{text}");
    }
}
