//! The operator's curl scripts under resources/curl/, run against real `tandem` processes.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;
use tandem_tests::{require_kvm, Tandem};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../resources/curl")
        .join(name)
}

fn run(name: &str, socket: &std::path::Path, env: &[(&str, String)]) -> Output {
    let mut c = Command::new("bash");
    c.arg(script(name)).env("TANDEM_SOCKET", socket);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap_or_else(|e| panic!("run {name}: {e}"))
}

fn tools_available() -> bool {
    let ok = ["curl", "jq"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok());
    if !ok {
        eprintln!("\n*** SKIPPED: curl scripts need curl and jq (.ci/run installs them) ***\n");
    }
    ok
}

#[test]
fn operator_scripts_create_watch_migrate_and_shut_down() {
    require_kvm!("operator_scripts_create_watch_migrate_and_shut_down");
    if !tools_available() {
        return;
    }
    let p = Tandem::start("curl-p");
    let b = Tandem::start("curl-b");

    // A refused config is a failing script with the API's reason.
    let bad = run("create-and-boot.sh", &p.socket, &[("CPUS", "0".into())]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("HTTP 400") && err.contains("boot_vcpus"),
        "{err}"
    );

    let out = run(
        "create-and-boot.sh",
        &p.socket,
        &[
            ("CPUS", "2".into()),
            ("MEMORY_MIB", "64".into()),
            ("CMDLINE", "workload=compute".into()),
            ("SERIAL_FILE", p.serial_path.display().to_string()),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("state: Running"));
    p.serial()
        .wait_for("tandem-guest: ready", Duration::from_secs(30));

    let watch = run(
        "watch-status.sh",
        &p.socket,
        &[("COUNT", "2".into()), ("INTERVAL", "0.1".into())],
    );
    let text = String::from_utf8_lossy(&watch.stdout);
    assert!(watch.status.success(), "{watch:?}");
    assert_eq!(text.matches("\"state\":\"Running\"").count(), 2, "{text}");

    let url = format!("unix:{}", p.dir.path("mig.sock").display());
    let mig = run(
        "migrate.sh",
        &p.socket,
        &[
            ("DEST_SOCKET", b.socket.display().to_string()),
            ("DEST_URL", url),
            ("DEST_SERIAL_FILE", b.serial_path.display().to_string()),
        ],
    );
    assert!(mig.status.success(), "{mig:?}");
    assert!(String::from_utf8_lossy(&mig.stdout).contains("downtime"));
    assert_eq!(b.state(), "Running");
    b.serial()
        .wait_for("tandem-guest: compute", Duration::from_secs(30));

    let mut p = p;
    let down = run("shutdown.sh", &p.socket, &[]);
    assert!(down.status.success(), "{down:?}");
    assert!(p.wait_exit(Duration::from_secs(10)).success());
}
