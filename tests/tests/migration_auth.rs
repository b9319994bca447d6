//! Live migration between real `tandem` processes takes the key and handshake of an FT pair:
//! another key, none, or a key on one side only is refused on both sides with a clear error
//! while the source's guest runs on untouched and the destination goes on waiting; the right key
//! migrates (through the operator's curl script too), encrypted. And safe by default: without a
//! key, `ft.receive` and `vm.receive-migration` refuse an address other hosts can reach unless
//! the request says `"insecure": true`.

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tandem_tests::ft_pair::write_key;
use tandem_tests::metrics::free_port;
use tandem_tests::{require_kvm, Tandem, TempDir};

const T: Duration = Duration::from_secs(60);

fn err_text(v: &Value) -> String {
    v.to_string()
}

/// `vm.send-migration` on `src` that must answer 400 naming `needle`; the guest keeps running
/// there (its console goes on counting).
fn send_refused(src: &Tandem, url: &str, key: Option<&Path>, needle: &str) {
    let before = src.serial().count("tandem-guest: compute");
    let mut body = json!({ "destination_url": url });
    if let Some(k) = key {
        body["key"] = json!({ "path": k });
    }
    let (code, err) = src.put("vm.send-migration", Some(&body));
    let err = err_text(&err);
    assert_eq!(code, 400, "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
    assert_eq!(src.state(), "Running");
    src.serial()
        .wait_count("tandem-guest: compute", before + 2, T);
}

/// Waits until `dst`'s receiving migration notes a refused connection naming `needle`; it is
/// still waiting, with no VM.
fn wait_refused(dst: &Tandem, needle: &str) {
    let start = Instant::now();
    loop {
        let info = dst.get("vm.info").1;
        let refused = info["migration"]["progress"]["refused"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if refused.contains(needle) {
            assert_eq!(info["state"], "Receiving", "{info}");
            assert_eq!(info["migration"]["active"], true, "{info}");
            return;
        }
        assert!(
            start.elapsed() < T,
            "the destination never noted {needle:?}: {info}\n{}",
            dst.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_migrated(src: &Tandem, dst: &Tandem) {
    let start = Instant::now();
    loop {
        let i = src.get("vm.info").1;
        if i["state"] == "Migrated" {
            break;
        }
        assert!(
            i["migration"]["error"].is_null() && start.elapsed() < T,
            "migration failed: {i}\nsource log:\n{}\ndestination log:\n{}",
            src.log(),
            dst.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    dst.wait_state("Running", T);
}

#[test]
fn migration_refuses_a_wrong_missing_or_one_sided_key_on_both_sides_and_the_right_key_migrates() {
    let name = "migration_refuses_a_wrong_missing_or_one_sided_key_on_both_sides_and_the_right_key_migrates";
    require_kvm!(name);
    let store = TempDir::new("mka");
    let (k1, k2) = (store.path("one.key"), store.path("two.key"));
    write_key(&k1, 32, 0o600);
    write_key(&k2, 48, 0o600);
    let open = store.path("open.key");
    write_key(&open, 32, 0o644);
    let p = Tandem::start("mka-p");
    let b = Tandem::start("mka-b");
    p.boot_builtin(1, 64, "workload=compute");
    p.serial().wait_for("tandem-guest: compute", T);

    // A key file others can read is the caller's 400 on either side; nothing starts.
    let url = format!("unix:{}", store.path("b.sock").display());
    let (code, err) = b.put(
        "vm.receive-migration",
        Some(&json!({"receiver_url": url, "key": {"path": open}})),
    );
    assert!(code == 400 && err_text(&err).contains("chmod 600"), "{err}");
    assert_eq!(b.get("vm.info").0, 404);
    send_refused(&p, &url, Some(&open), "chmod 600");

    b.put_ok(
        "vm.receive-migration",
        Some(&json!({
            "receiver_url": url,
            "key": {"path": k1},
            "serial": {"mode": "File", "file": b.serial_path},
        })),
    );
    // Another key: refused by both at the handshake.
    send_refused(&p, &url, Some(&k2), "authentication failed");
    wait_refused(
        &b,
        "authentication failed: the peer does not hold the same pair key",
    );
    // No key on the source: each side says which has none.
    send_refused(
        &p,
        &url,
        None,
        "the peer requires a pair key but this side has none",
    );
    wait_refused(&b, "this side has a pair key but the peer has none");

    // The right key: migrated, encrypted, both ends say so.
    p.put_ok(
        "vm.send-migration",
        Some(&json!({"destination_url": url, "key": {"path": k1}})),
    );
    wait_migrated(&p, &b);
    for t in [&p, &b] {
        let m = &t.get("vm.info").1["migration"];
        assert_eq!(m["progress"]["authenticated"], true, "{m}");
    }
    b.serial().wait_for("tandem-guest: compute", T);

    // One-sided the other way: a keyless destination (on a local path, so allowed), a keyed
    // source. B's guest runs on.
    let c = Tandem::start("mka-c");
    let url_c = format!("unix:{}", store.path("c.sock").display());
    c.put_ok(
        "vm.receive-migration",
        Some(&json!({"receiver_url": url_c})),
    );
    send_refused(
        &b,
        &url_c,
        Some(&k1),
        "this side has a pair key but the peer has none",
    );
    wait_refused(&c, "the peer requires a pair key but this side has none");

    // An FT primary pointed at a migration listener is refused too, naming both purposes.
    let arbiter = store.path("arbiter");
    std::fs::create_dir(&arbiter).unwrap();
    let d = Tandem::start("mka-d");
    let port = free_port();
    d.put_ok(
        "vm.receive-migration",
        Some(&json!({"receiver_url": format!("tcp:127.0.0.1:{port}")})),
    );
    let (code, err) = b.put(
        "ft.enable",
        Some(
            &json!({"peer": format!("tcp:127.0.0.1:{port}"), "disk_mode": "shared",
                     "arbiter": {"path": arbiter}}),
        ),
    );
    let err = err_text(&err);
    assert!(
        code == 400
            && err
                .contains("opens a live migration but this side expects an FT replication stream"),
        "{code} {err}"
    );
    wait_refused(
        &d,
        "opens an FT replication stream but this side expects a live migration",
    );
    assert_eq!(b.state(), "Running");
}

/// The operator's curl script migrates with a key too.
#[test]
fn migrate_script_takes_a_key() {
    require_kvm!("migrate_script_takes_a_key");
    let tools = ["curl", "jq"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok());
    if !tools {
        eprintln!("\n*** SKIPPED: migrate_script_takes_a_key: needs curl and jq ***\n");
        return;
    }
    let store = TempDir::new("mks");
    let key = store.path("m.key");
    write_key(&key, 32, 0o600);
    let p = Tandem::start("mks-p");
    let b = Tandem::start("mks-b");
    p.boot_builtin(1, 64, "workload=compute");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/curl/migrate.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("TANDEM_SOCKET", &p.socket)
        .env("DEST_SOCKET", &b.socket)
        .env("DEST_URL", format!("tcp:127.0.0.1:{}", free_port()))
        .env("KEY", &key)
        .output()
        .expect("run migrate.sh");
    assert!(out.status.success(), "{out:?}\n{}", b.log());
    assert_eq!(b.state(), "Running");
    let m = &b.get("vm.info").1["migration"];
    assert_eq!(m["progress"]["authenticated"], true, "{m}");
}

#[test]
fn keyless_listeners_other_hosts_can_reach_are_refused_unless_insecure() {
    let name = "keyless_listeners_other_hosts_can_reach_are_refused_unless_insecure";
    require_kvm!(name);
    let store = TempDir::new("lsn");
    let arbiter = store.path("arbiter");
    std::fs::create_dir(&arbiter).unwrap();
    let key = store.path("k");
    write_key(&key, 32, 0o600);
    let t = Tandem::start("lsn");
    // Every address of the host: any host that reaches the port could hand it a VM.
    let any = |port: u16| format!("tcp:0.0.0.0:{port}");
    let port = free_port();
    for (endpoint, body) in [
        (
            "ft.receive",
            json!({"listen": any(port), "arbiter": {"path": arbiter}}),
        ),
        ("vm.receive-migration", json!({"receiver_url": any(port)})),
    ] {
        let (code, err) = t.put(endpoint, Some(&body));
        let err = err_text(&err);
        assert_eq!(code, 400, "{endpoint}: {err}");
        for needle in [
            "refusing to listen on tcp:0.0.0.0",
            "without a key",
            "\\\"insecure\\\": true",
        ] {
            assert!(err.contains(needle), "{endpoint}: {needle:?} not in {err}");
        }
        // Nothing was started: the port is free, the VMM standalone.
        assert!(std::net::TcpListener::bind(("0.0.0.0", port)).is_ok());
        assert_eq!(t.get("ft.status").1["role"], "standalone");
        assert_eq!(t.get("vm.info").0, 404);
    }
    // Loopback, a key, or "insecure": accepted (a fresh VMM each, all waiting at once, on
    // ports picked before any of them listens).
    let mut ports = std::collections::BTreeSet::new();
    while ports.len() < 6 {
        ports.insert(free_port());
    }
    let mut ports = ports.into_iter();
    let mut next = || ports.next().expect("six ports");
    let cases = [
        ("lsn-l", "tcp:127.0.0.1", json!({})),
        ("lsn-i", "tcp:0.0.0.0", json!({"insecure": true})),
        ("lsn-k", "tcp:0.0.0.0", json!({"key": {"path": key}})),
    ];
    let mut running = Vec::new();
    for (tag, host, extra) in cases {
        let mut ft = json!({"listen": format!("{host}:{}", next()), "arbiter": {"path": arbiter}});
        let mut mig = json!({"receiver_url": format!("{host}:{}", next())});
        for (k, v) in extra.as_object().into_iter().flatten() {
            ft[k] = v.clone();
            mig[k] = v.clone();
        }
        let u = Tandem::start(tag);
        u.put_ok("ft.receive", Some(&ft));
        assert_eq!(u.get("ft.status").1["role"], "backup");
        let m = Tandem::start(&format!("{tag}m"));
        m.put_ok("vm.receive-migration", Some(&mig));
        assert_eq!(m.get("vm.info").1["state"], "Receiving");
        running.extend([u, m]);
    }
}
