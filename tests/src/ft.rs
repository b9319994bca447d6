//! Fault-tolerance test support shared by the FT test files: a protected pair of real `tandem`
//! processes in two host namespaces with a counter guest, a client on one TCP connection, and
//! waits on `ft.status`.

use crate::client::CounterConn;
use crate::net::{Node, TestNet, HOST_B_LINK_IP};
use crate::{Tandem, TempDir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long any wait in an FT test may take before it fails.
pub const T: Duration = Duration::from_secs(60);
/// The counter guest's address on the LAN.
pub const GUEST_IP: &str = "10.77.0.2";
/// The port a backup listens on for its primary's stream.
pub const FT_PORT: u16 = 7600;

/// `ft.status` of `t`, which must answer 200.
pub fn ft_status(t: &Tandem) -> Value {
    let (code, v) = t.get("ft.status");
    assert_eq!(code, 200, "ft.status: {v}");
    v
}

/// Waits until `t` reports `role`/`state`; fails with both logs after [`T`].
pub fn wait_ft(t: &Tandem, role: &str, state: &str, other: &Tandem) -> Duration {
    let start = Instant::now();
    loop {
        let s = ft_status(t);
        if s["role"] == role && s["state"] == state {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < T,
            "ft.status never {role}/{state}: {s}\nlog:\n{}\npeer log:\n{}",
            t.log(),
            other.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A protected pair: P runs a counter guest, B holds its replica.
pub struct Pair {
    /// The test network: hosts P and B, their taps and the host-to-host link.
    pub net: TestNet,
    /// The primary's VMM, in host P's namespace, running the counter guest.
    pub p: Tandem,
    /// The backup's VMM, in host B's namespace.
    pub b: Tandem,
    /// The primary's disk image, and the backup's (the same file in shared mode).
    pub p_image: PathBuf,
    /// The backup's disk image: its own copy in replicated mode, else `p_image` again.
    pub b_image: PathBuf,
    /// The arbiter's directory, on storage both hosts see.
    pub arbiter: PathBuf,
    /// The `arbiter` object both members are given (the directory, unless the pair was made
    /// with [`protected_pair_using`]).
    pub arbiter_config: Value,
    /// `shared` or `replicated`.
    pub disk_mode: String,
    /// Both members' failure timeout.
    pub failure_timeout_ms: u64,
    /// Storage both hosts see: the disk images and the arbiter directory; removed when dropped.
    pub store: TempDir,
}

impl Pair {
    /// The `ft.receive` body for backup `b` of this pair, with its disk at `image`.
    pub fn receive_body(&self, b: &Tandem, image: &Path) -> Value {
        self.receive_body_on(b, image, HOST_B_LINK_IP)
    }

    /// [`Pair::receive_body`] for a backup listening on host link address `ip` (a new backup
    /// on host P after a failover: [`HOST_P_LINK_IP`](crate::net::HOST_P_LINK_IP)). Keyless on
    /// the test network's private link, so `insecure` (refused otherwise).
    pub fn receive_body_on(&self, b: &Tandem, image: &Path, ip: &str) -> Value {
        json!({
            "listen": format!("tcp:{ip}:{FT_PORT}"),
            "insecure": true,
            "disks": [{"id": "disk0", "path": image}],
            "net": [{"id": "nic0", "tap": "tap0"}],
            "serial": {"mode": "File", "file": b.serial_path},
            "arbiter": self.arbiter_config,
            "disk_mode": self.disk_mode,
            "failure_timeout_ms": self.failure_timeout_ms,
        })
    }

    /// The `ft.enable` body that points a primary at the backup on host B.
    pub fn enable_body(&self) -> Value {
        self.enable_body_to(HOST_B_LINK_IP)
    }

    /// The `ft.enable` body that points a primary at a backup listening on `ip`.
    pub fn enable_body_to(&self, ip: &str) -> Value {
        json!({
            "peer": format!("tcp:{ip}:{FT_PORT}"),
            "disk_mode": self.disk_mode,
            "arbiter": self.arbiter_config,
            "failure_timeout_ms": self.failure_timeout_ms,
        })
    }
}

/// [`protected_pair_with`] with a 1 s failure timeout.
pub fn protected_pair(tag: &str, disk_mode: &str) -> Pair {
    protected_pair_with(tag, disk_mode, 1000)
}

/// A protected pair with both members' failure timeout set to `failure_timeout_ms`; a second
/// `ft.enable`, an `ft.promote` and a `vm.snapshot` on the primary are checked to be refused
/// with 409.
pub fn protected_pair_with(tag: &str, disk_mode: &str, failure_timeout_ms: u64) -> Pair {
    protected_pair_using(tag, disk_mode, failure_timeout_ms, directory_arbiter)
}

/// The default `arbiter` object: the pair's directory.
pub fn directory_arbiter(_: &TestNet, dir: &Path) -> Value {
    json!({ "path": dir })
}

/// [`protected_pair_with`] with the `arbiter` object `make_arbiter` makes, once the test network is
/// up, from it and the arbiter directory (e.g. an etcd the test starts on the network).
pub fn protected_pair_using(
    tag: &str,
    disk_mode: &str,
    failure_timeout_ms: u64,
    make_arbiter: impl FnOnce(&TestNet, &Path) -> Value,
) -> Pair {
    let pair = booted_pair_using(tag, disk_mode, failure_timeout_ms, make_arbiter);
    let (p, b) = (&pair.p, &pair.b);
    assert_eq!(ft_status(b)["role"], "standalone");
    b.put_ok("ft.receive", Some(&pair.receive_body(b, &pair.b_image)));
    let enable = pair.enable_body();
    p.put_ok("ft.enable", Some(&enable));
    let synced = wait_ft(p, "primary", "protected", b);
    wait_ft(b, "backup", "protected", p);
    eprintln!("[{tag}] protected after {synced:?}");

    // Wrong calls: a clear 409, nothing changed.
    assert_eq!(p.put("ft.enable", Some(&enable)).0, 409);
    assert_eq!(p.put("ft.promote", None).0, 409);
    // Snapshots are not carried to the backup (pause, resume, shutdown and reboot are).
    let snap = json!({"destination_url": format!("file://{}", pair.store.path("snap").display())});
    let (code, err) = p.put("vm.snapshot", Some(&snap));
    assert_eq!(code, 409, "{err}");
    assert!(err.to_string().contains("ft.disable first"), "{err}");
    assert_eq!(ft_status(p)["state"], "protected");
    pair
}

/// Two hosts, P running the counter guest, B an empty VMM: a pair not yet made (no
/// `ft.receive`, no `ft.enable`).
pub fn booted_pair(tag: &str, disk_mode: &str, failure_timeout_ms: u64) -> Pair {
    booted_pair_using(tag, disk_mode, failure_timeout_ms, directory_arbiter)
}

/// [`booted_pair`] with the `arbiter` object `make_arbiter` makes (see [`protected_pair_using`]).
pub fn booted_pair_using(
    tag: &str,
    disk_mode: &str,
    failure_timeout_ms: u64,
    make_arbiter: impl FnOnce(&TestNet, &Path) -> Value,
) -> Pair {
    booted_pair_backup_env(tag, disk_mode, failure_timeout_ms, make_arbiter, &[])
}

/// [`booted_pair_using`] with the backup's `tandem` started with `backup_env` added to its
/// environment (a test-only hook such as `TANDEM_TEST_CORRUPT_REPLICA`).
pub fn booted_pair_backup_env(
    tag: &str,
    disk_mode: &str,
    failure_timeout_ms: u64,
    make_arbiter: impl FnOnce(&TestNet, &Path) -> Value,
    backup_env: &[(&str, &str)],
) -> Pair {
    let net = TestNet::up_with_taps(tag);
    let p = Tandem::start_in_netns(&format!("{tag}-p"), &net.ns(Node::HostP));
    let b = Tandem::start_in_netns_with_env(&format!("{tag}-b"), &net.ns(Node::HostB), backup_env);
    let store = TempDir::new(&format!("{tag}-store"));
    let (image, b_image) = pair_images(&store, disk_mode, 1 << 20);
    let arbiter = arbiter_dir(&store);
    let arbiter_config = make_arbiter(&net, &arbiter);
    p.boot_counter(128, GUEST_IP, &image);

    Pair {
        net,
        p,
        b,
        p_image: image,
        b_image,
        arbiter,
        arbiter_config,
        disk_mode: disk_mode.to_string(),
        failure_timeout_ms,
        store,
    }
}

/// Zeroed disk images of `bytes` in `store` for a pair in `disk_mode`: the primary's
/// (`counter.img`) and the backup's, which is the same file unless the mode is `replicated`
/// (then `counter-b.img`, identical at the start).
pub fn pair_images(store: &TempDir, disk_mode: &str, bytes: usize) -> (PathBuf, PathBuf) {
    let image = store.path("counter.img");
    std::fs::write(&image, vec![0u8; bytes]).expect("disk image");
    let b_image = match disk_mode {
        "replicated" => {
            let i = store.path("counter-b.img");
            std::fs::write(&i, vec![0u8; bytes]).expect("disk image");
            i
        }
        _ => image.clone(),
    };
    (image, b_image)
}

/// Makes the file arbiter's directory, `arbiter` in `store` (storage both hosts see).
pub fn arbiter_dir(store: &TempDir) -> PathBuf {
    let dir = store.path("arbiter");
    std::fs::create_dir(&dir).expect("arbiter directory");
    dir
}

/// Writes `bytes` as a pair key file at `path`, mode 0600 (a key others can read is refused).
pub fn write_key_file(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("key file");
    std::io::Write::write_all(&mut f, bytes).expect("key");
}

/// A client on one connection, INC after INC, until `stop`: (replies, slowest INC).
pub fn client(
    net: &TestNet,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<u64>, Duration)> {
    net.run_in(Node::Client, move || {
        let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
        let mut seen = Vec::new();
        let mut slowest = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            seen.push(c.inc().expect("INC across the failure"));
            slowest = slowest.max(t0.elapsed());
        }
        (seen, slowest)
    })
}

/// Every INC answered once, in order, none lost, never going back.
pub fn assert_counts_up(seen: &[u64]) {
    assert!(
        seen.len() > 10,
        "the client made too little progress: {seen:?}"
    );
    for (i, v) in seen.iter().enumerate() {
        assert_eq!(*v, i as u64 + 1, "INC #{i} answered {v}; all: {seen:?}");
    }
}

/// Waits until `t` runs the VM as an unprotected primary, failing if it halts.
pub fn wait_takeover(t: &Tandem) -> Duration {
    let start = Instant::now();
    loop {
        let s = ft_status(t);
        if s["role"] == "primary" && s["state"] == "unprotected" {
            return start.elapsed();
        }
        assert!(
            s["state"] != "halted" && start.elapsed() < T,
            "no takeover: {s}\nlog:\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `sig` (e.g. "STOP", "CONT") to a `tandem` process.
pub fn signal(t: &Tandem, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(t.child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig}");
}

/// Waits until `t` says halted; returns its status.
pub fn wait_halted(t: &Tandem) -> Value {
    wait_status(t, "halted", |s| s["state"] == "halted")
}

/// Waits until `check` holds on `t`'s ft.status; returns that status.
pub fn wait_status(t: &Tandem, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = ft_status(t);
        if check(&s) {
            return s;
        }
        assert!(
            start.elapsed() < T,
            "ft.status never {what}: {s}\nlog:\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
