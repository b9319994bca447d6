//! The README's main job, `resources/quickstart-ft.sh`, run as an operator would (on this build's
//! binaries): it must end with the backup live and the client's every reply the previous + 1, and
//! exit non-zero when any of that fails.

use std::path::PathBuf;
use std::process::Command;
use tandem_tests::{require, tandem_bin, tandem_remote_bin};

#[test]
fn quickstart_ft_protects_kills_the_primary_and_the_client_carries_on() {
    require!(kvm, netns);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = tandem_bin().parent().map(PathBuf::from).expect("bin dir");
    assert_eq!(tandem_remote_bin().parent(), Some(bin_dir.as_path()));
    let out = Command::new("bash")
        .arg(root.join("resources/quickstart-ft.sh"))
        .env("TANDEM_BIN_DIR", &bin_dir)
        .output()
        .expect("run quickstart-ft.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quickstart-ft.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in [
        "\"state\":\"protected\"",
        "\"authenticated\":true",
        "backup took over after",
        "every reply was the previous + 1",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}\n{stderr}");
    }
    // The new primary's ft.status, read as JSON (its fields may come in any order).
    let new_primary = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("new primary:"))
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j.trim()).ok())
        .unwrap_or_else(|| panic!("no new primary's ft.status in:\n{stdout}\n{stderr}"));
    assert_eq!(
        (&new_primary["role"], &new_primary["state"]),
        (&"primary".into(), &"unprotected".into()),
        "{new_primary}"
    );
}
