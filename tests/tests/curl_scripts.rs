//! The operator's curl scripts under resources/curl/, run against real `tandem` processes (and,
//! for a refusal no real VMM gives on demand, against a stand-in API on a Unix socket).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;
use tandem_tests::metrics::free_port;
use tandem_tests::{require, Tandem, TempDir};

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

#[test]
fn operator_scripts_create_watch_migrate_and_shut_down() {
    require!(kvm, curl, jq);
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

#[test]
fn ft_scripts_set_up_watch_promote_and_disable_a_pair() {
    require!(kvm, curl, jq);
    let p = Tandem::start("curlft-p");
    let b = Tandem::start("curlft-b");
    p.boot_builtin(1, 64, "workload=idle");
    let store = TempDir::new("curlft-store");
    let arbiter = store.path("arbiter");
    std::fs::create_dir(&arbiter).unwrap();
    let arb = ("ARBITER", arbiter.display().to_string());
    let url = format!("tcp:127.0.0.1:{}", free_port());
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).to_string();

    // A refused call is a failing script with the API's reason.
    let bad = run("ft-promote.sh", &b.socket, &[]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("HTTP 409"), "{err}");
    let bad = run("ft-receive.sh", &b.socket, &[("LISTEN", url.clone())]);
    assert!(!bad.status.success(), "ARBITER is required");
    let bad = run(
        "ft-receive.sh",
        &b.socket,
        &[
            ("LISTEN", url.clone()),
            arb.clone(),
            ("DISKS", "disk0".into()),
        ],
    );
    assert!(!bad.status.success(), "DISKS wants ID=PATH");

    let recv = run(
        "ft-receive.sh",
        &b.socket,
        &[
            ("LISTEN", url.clone()),
            arb.clone(),
            ("SERIAL_FILE", b.serial_path.display().to_string()),
            ("FAILURE_TIMEOUT_MS", "1000".into()),
        ],
    );
    assert!(recv.status.success(), "{recv:?}");
    assert!(text(&recv).contains("\"role\":\"backup\""), "{recv:?}");
    let enable = run(
        "ft-enable.sh",
        &p.socket,
        &[
            ("PEER", url.clone()),
            arb.clone(),
            ("CHECKPOINT_INTERVAL_MS", "50".into()),
        ],
    );
    assert!(enable.status.success(), "{enable:?}\nlog:\n{}", p.log());
    assert!(
        text(&enable).contains("\"role\":\"primary\",\"state\":\"protected\""),
        "{enable:?}"
    );

    // The backup's copy checks out; on the backup the call is refused.
    let verify = run("ft-verify.sh", &p.socket, &[]);
    assert!(verify.status.success(), "{verify:?}\nlog:\n{}", p.log());
    assert!(text(&verify).contains("differences: 0"), "{verify:?}");
    let bad = run("ft-verify.sh", &b.socket, &[]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("HTTP 409") && err.contains("primary"), "{err}");

    // The watch shows the backup protected, one line per refresh.
    let watch = run(
        "ft-watch.sh",
        &b.socket,
        &[("COUNT", "2".into()), ("INTERVAL", "0.1".into())],
    );
    assert!(watch.status.success(), "{watch:?}");
    let lines = text(&watch);
    assert_eq!(
        lines
            .lines()
            .filter(|l| l.contains("\"role\":\"backup\",\"state\":\"protected\""))
            .count(),
        2,
        "{lines}"
    );

    // Promote on the backup: it runs the guest now; the old primary loses and halts.
    let promote = run("ft-promote.sh", &b.socket, &[]);
    assert!(promote.status.success(), "{promote:?}\nlog:\n{}", b.log());
    assert!(text(&promote).contains("state: Running"), "{promote:?}");
    assert_eq!(b.state(), "Running");
    let start = std::time::Instant::now();
    while p.get("ft.status").1["state"] != "halted" {
        assert!(start.elapsed() < Duration::from_secs(60), "{}", p.log());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Disable ends it on both: standalone, and the live one takes VM calls again.
    for t in [&b, &p] {
        let off = run("ft-disable.sh", &t.socket, &[]);
        assert!(off.status.success(), "{off:?}");
        assert!(text(&off).contains("\"role\":\"standalone\""), "{off:?}");
    }
    assert_eq!(b.put("vm.pause", None).0, 204);
    assert_eq!(b.state(), "Paused");
}

/// A stand-in API on a Unix socket for the failure paths no real VMM gives on demand: answers
/// `GET vm.info` with a running VM and `PUT vm.shutdown` with `shutdown_status`, anything else
/// with 204. Runs `script` against it; (the script's output, every request line served).
fn against_scripted_api(
    socket: &std::path::Path,
    shutdown_status: u16,
    script: &str,
) -> (Output, Vec<String>) {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let l = std::os::unix::net::UnixListener::bind(socket).expect("bind the stand-in API");
    l.set_nonblocking(true).expect("nonblocking");
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let api = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let Ok((conn, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            conn.set_nonblocking(false).expect("blocking");
            let mut r = BufReader::new(conn);
            let mut first = String::new();
            r.read_line(&mut first).expect("request line");
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).expect("header");
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().expect("content-length");
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).expect("body");
            let line = first.trim().to_string();
            let (status, body) = if line.starts_with("GET /api/v1/vm.info") {
                (200, r#"{"state":"Running"}"#)
            } else if line.starts_with("PUT /api/v1/vm.shutdown") {
                (
                    shutdown_status,
                    r#"{"error":["FT is still syncing the backup"]}"#,
                )
            } else {
                (204, "")
            };
            seen.push(line);
            let answer = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = r.get_mut().write_all(answer.as_bytes());
        }
        seen
    });
    let out = run(script, socket, &[]);
    done.store(true, Ordering::SeqCst);
    (out, api.join().expect("stand-in API"))
}

#[test]
fn shutdown_script_fails_when_vm_shutdown_is_refused_and_stops_nothing_else() {
    require!(curl, jq);
    let dir = TempDir::new("curl-refused");
    let (out, seen) = against_scripted_api(&dir.path("api.sock"), 409, "shutdown.sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a refused vm.shutdown passed: {out:?}"
    );
    assert!(
        err.contains("vm.shutdown: HTTP 409") && err.contains("still syncing"),
        "{err}"
    );
    assert_eq!(
        seen,
        [
            "GET /api/v1/vm.info HTTP/1.1",
            "PUT /api/v1/vm.shutdown HTTP/1.1"
        ],
        "nothing after the refused vm.shutdown"
    );

    // The same stand-in accepting it: shutdown, delete, VMM shutdown, in that order.
    let (out, seen) = against_scripted_api(&dir.path("api2.sock"), 204, "shutdown.sh");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        seen,
        [
            "GET /api/v1/vm.info HTTP/1.1",
            "PUT /api/v1/vm.shutdown HTTP/1.1",
            "PUT /api/v1/vm.delete HTTP/1.1",
            "PUT /api/v1/vmm.shutdown HTTP/1.1"
        ]
    );
}

#[test]
fn ft_receive_script_takes_an_etcd_arbiter() {
    require!(etcd, curl, jq);
    let etcd = tandem_tests::etcd::Etcd::start("curl");
    let b = Tandem::start("curletcd-b");
    let listen = ("LISTEN", format!("tcp:127.0.0.1:{}", free_port()));
    let etcd_env = |key: &str| {
        vec![
            listen.clone(),
            ("ARBITER_ETCD", format!("http://127.0.0.1:1,{}", etcd.url)),
            ("ARBITER_KEY", key.to_string()),
        ]
    };
    // Both kinds at once, or a URL list without a key: refused before any call.
    let mut both = etcd_env("/tandem/pairs/curl");
    both.push(("ARBITER", "/tmp".into()));
    let bad = run("ft-receive.sh", &b.socket, &both);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not both"),
        "{bad:?}"
    );
    let bad = run(
        "ft-receive.sh",
        &b.socket,
        &[listen.clone(), ("ARBITER_ETCD", etcd.url.clone())],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("ARBITER_KEY"),
        "{bad:?}"
    );
    // The API's 400 for a bad key comes through.
    let bad = run("ft-receive.sh", &b.socket, &etcd_env("/tandem/"));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("HTTP 400"),
        "{bad:?}"
    );

    let ok = run("ft-receive.sh", &b.socket, &etcd_env("/tandem/pairs/curl"));
    assert!(ok.status.success(), "{ok:?}\nlog:\n{}", b.log());
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("\"role\":\"backup\""),
        "{ok:?}"
    );
    assert!(etcd.get("/tandem/pairs/curl/identity").is_some());
    let off = run("ft-disable.sh", &b.socket, &[]);
    assert!(off.status.success(), "{off:?}");
}
