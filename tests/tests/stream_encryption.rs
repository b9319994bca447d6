//! Confidentiality against the real link: `tcpdump` on host P's end of the host-to-host link
//! while a pair syncs and checkpoints (and while a VM migrates), once without a key and once with
//! one. The guest's memory holds known text (a random marker on its kernel command line, and the
//! console line `tandem-guest: ready` in its image): the capture of the keyless stream shows it,
//! the keyed stream's capture (as many bytes, starting with the handshake) shows none of it.

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tandem_tests::capture::{contains, tcp_streams_to, tcpdump_available, Capture};
use tandem_tests::ft::{ft_status, wait_ft, FT_PORT, T};
use tandem_tests::ft_pair::write_key;
use tandem_tests::net::{Node, TestNet, HOST_B_LINK_IP};
use tandem_tests::{require_kvm_and_netns, Tandem, TempDir};

const MIGRATION_PORT: u16 = 7500;
/// The console line the guest prints, a string in its image and so in its memory.
const CONSOLE: &[u8] = b"tandem-guest: ready";

/// A marker no other run shares.
fn marker() -> String {
    use std::io::Read;
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("random marker");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("tandem-secret-{hex}")
}

/// Adds the key, or `insecure` for a keyless listener on the link.
fn secure(body: &mut Value, key: Option<&Path>, listener: bool) {
    match key {
        Some(k) => body["key"] = json!({ "path": k }),
        None if listener => body["insecure"] = json!(true),
        None => {}
    }
}

/// The primary → backup bytes of one FT pair's initial sync and first checkpoints, captured on
/// host P's link, with `key` or without.
fn ft_stream(net: &TestNet, tag: &str, cmdline: &str, key: Option<&Path>) -> Vec<u8> {
    let p = Tandem::start_in_netns(&format!("{tag}-p"), &net.ns(Node::HostP));
    let b = Tandem::start_in_netns(&format!("{tag}-b"), &net.ns(Node::HostB));
    p.boot_builtin(1, 64, cmdline);
    let store = TempDir::new(&format!("{tag}-store"));
    let arbiter = store.path("arbiter");
    std::fs::create_dir(&arbiter).unwrap();
    let url = format!("tcp:{HOST_B_LINK_IP}:{FT_PORT}");
    let mut receive = json!({"listen": url, "arbiter": {"path": arbiter},
                             "serial": {"mode": "File", "file": b.serial_path}});
    secure(&mut receive, key, true);
    b.put_ok("ft.receive", Some(&receive));
    let cap = Capture::start(net, Node::HostP, "ft0", &format!("tcp port {FT_PORT}"));
    let mut enable = json!({"peer": url, "disk_mode": "shared", "arbiter": {"path": arbiter}});
    secure(&mut enable, key, false);
    p.put_ok("ft.enable", Some(&enable));
    wait_ft(&p, "primary", "protected", &b);
    wait_ft(&b, "backup", "protected", &p);
    // A few checkpoints after the sync.
    let n = ft_status(&p)["checkpoint_count"].as_u64().unwrap_or(0);
    let start = Instant::now();
    while ft_status(&p)["checkpoint_count"].as_u64().unwrap_or(0) < n + 10 {
        assert!(start.elapsed() < T, "no checkpoints:\n{}", p.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    for t in [&p, &b] {
        assert_eq!(ft_status(t)["authenticated"], key.is_some(), "{}", t.log());
    }
    let pcap = cap.stop();
    one_stream(&pcap, FT_PORT, tag)
}

/// The source → destination bytes of one live migration, captured on host P's link.
fn migration_stream(net: &TestNet, tag: &str, cmdline: &str, key: Option<&Path>) -> Vec<u8> {
    let p = Tandem::start_in_netns(&format!("{tag}-p"), &net.ns(Node::HostP));
    let b = Tandem::start_in_netns(&format!("{tag}-b"), &net.ns(Node::HostB));
    p.boot_builtin(1, 64, cmdline);
    let url = format!("tcp:{HOST_B_LINK_IP}:{MIGRATION_PORT}");
    let mut receive = json!({"receiver_url": url, "serial": {"mode": "Null"}});
    secure(&mut receive, key, true);
    b.put_ok("vm.receive-migration", Some(&receive));
    let cap = Capture::start(
        net,
        Node::HostP,
        "ft0",
        &format!("tcp port {MIGRATION_PORT}"),
    );
    let mut send = json!({"destination_url": url});
    secure(&mut send, key, false);
    p.put_ok("vm.send-migration", Some(&send));
    let start = Instant::now();
    loop {
        let i = p.get("vm.info").1;
        if i["state"] == "Migrated" {
            assert_eq!(
                i["migration"]["progress"]["authenticated"],
                key.is_some(),
                "{i}"
            );
            break;
        }
        assert!(
            i["migration"]["error"].is_null() && start.elapsed() < T,
            "migration: {i}\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    b.wait_state("Running", T);
    let pcap = cap.stop();
    one_stream(&pcap, MIGRATION_PORT, tag)
}

/// The one connection's bytes towards `port` in the capture, which must have missed none.
fn one_stream(pcap: &[u8], port: u16, tag: &str) -> Vec<u8> {
    let streams = tcp_streams_to(pcap, port);
    assert_eq!(
        streams.len(),
        1,
        "[{tag}] expected one connection to port {port}, got {:?}",
        streams.keys().collect::<Vec<_>>()
    );
    let s = streams.into_values().next().unwrap_or_default();
    assert_eq!(
        s.missing, 0,
        "[{tag}] the capture missed bytes of the stream"
    );
    s.bytes
}

/// The keyless stream shows the guest's text; the keyed one, as large and starting with the
/// handshake, shows none of it.
fn check(what: &str, plain: &[u8], keyed: &[u8], secret: &str) {
    eprintln!(
        "[{what}] captured {} bytes without a key, {} with one",
        plain.len(),
        keyed.len()
    );
    let needles: [(&str, &[u8]); 2] = [("the marker", secret.as_bytes()), ("console", CONSOLE)];
    for (name, n) in needles {
        assert!(
            contains(plain, n),
            "[{what}] {name} is not in the keyless capture: the capture or the needle is wrong"
        );
        assert!(
            !contains(keyed, n),
            "[{what}] {name} is readable in the keyed stream's capture"
        );
    }
    assert!(
        keyed.starts_with(b"TNAU"),
        "[{what}] the keyed capture does not start with the handshake"
    );
    // Whole from the handshake on (no gap), past the initial transfer: the pages that carry
    // the text in the keyless stream crossed in this capture too.
    assert!(
        keyed.len() >= 64 << 10,
        "[{what}] the keyed capture is too small to mean anything: {} bytes",
        keyed.len()
    );
}

#[test]
fn guest_text_is_readable_on_the_link_without_a_key_and_not_with_one() {
    let name = "guest_text_is_readable_on_the_link_without_a_key_and_not_with_one";
    require_kvm_and_netns!(name);
    if !tcpdump_available(name) {
        return;
    }
    let net = TestNet::up("enc");
    let store = TempDir::new("enc-key");
    let key = store.path("ft.key");
    write_key(&key, 32, 0o600);
    let secret = marker();
    let cmdline = format!("workload=idle note={secret}");

    let plain = ft_stream(&net, "encp", &cmdline, None);
    let keyed = ft_stream(&net, "enck", &cmdline, Some(&key));
    check("ft", &plain, &keyed, &secret);

    let plain = migration_stream(&net, "encmp", &cmdline, None);
    let keyed = migration_stream(&net, "encmk", &cmdline, Some(&key));
    check("migration", &plain, &keyed, &secret);
}
