//! The bench's VMs: a built-in guest on host P of a test network, run standalone or protected by a
//! backup on host B (real `tandem` processes, the replication stream on the host-to-host link).

use crate::net::{Node, TestNet, HOST_B_LINK_IP};
use crate::{Tandem, TempDir};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The guest's LAN address.
pub const GUEST_IP: &str = "10.77.0.2";
/// Both members' failure timeout (the API's default, set explicitly so the figures say it).
pub const FAILURE_TIMEOUT_MS: u64 = 1000;
/// How long any one step may take before the bench gives up.
pub const T: Duration = Duration::from_secs(60);
const FT_PORT: u16 = 7600;
const DISK_BYTES: usize = 1 << 20;

/// Where a protected guest's disk lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskMode {
    /// One image both hosts see; the backup writes only once live.
    Shared,
    /// Each host its own copy; the backup applies committed writes.
    Replicated,
}

impl DiskMode {
    /// The API's name.
    pub fn name(self) -> &'static str {
        match self {
            DiskMode::Shared => "shared",
            DiskMode::Replicated => "replicated",
        }
    }
}

/// What to boot.
pub struct Guest<'a> {
    /// `workload=` of the built-in guest.
    pub workload: &'a str,
    /// Guest RAM.
    pub mem_mib: u64,
    /// A NIC on tap0 with [`GUEST_IP`].
    pub nic: bool,
    /// A disk, and how FT treats it.
    pub disk: Option<DiskMode>,
}

/// A test network with tap0 on each host and a folder both "hosts" see (disks, arbiter).
pub struct Site {
    pub net: TestNet,
    store: TempDir,
    vms: std::cell::Cell<u32>,
}

impl Site {
    /// Builds the network; `tag` names it.
    pub fn up(tag: &str) -> Site {
        let net = TestNet::up(tag);
        net.add_tap(Node::HostP, "tap0");
        net.add_tap(Node::HostB, "tap0");
        Site {
            net,
            store: TempDir::new(&format!("bench-{tag}")),
            vms: std::cell::Cell::new(0),
        }
    }

    /// Starts `tandem` on host P and boots `g` there, standalone; waits for `ready`.
    pub fn boot(&self, g: &Guest) -> Vm {
        let n = self.vms.get();
        self.vms.set(n + 1);
        let file = |what: &str| self.store.path(&format!("{n}-{what}"));
        let p = Tandem::start_in_netns(&format!("bench-ft{n}-p"), &self.net.ns(Node::HostP));
        let arbiter = file("arbiter");
        std::fs::create_dir(&arbiter).expect("arbiter folder");
        let mut cmdline = format!("workload={}", g.workload);
        if g.nic {
            cmdline.push_str(&format!(" ip={GUEST_IP}/24"));
        }
        let mut cfg = p.builtin_config(1, g.mem_mib, &cmdline);
        if g.nic {
            cfg["net"] = json!([{"id": "nic0", "tap": "tap0"}]);
        }
        let disk = g.disk.map(|mode| {
            let pi = file("disk-p.img");
            std::fs::write(&pi, vec![0u8; DISK_BYTES]).expect("disk image");
            let bi = match mode {
                DiskMode::Shared => pi.clone(),
                DiskMode::Replicated => {
                    let bi = file("disk-b.img");
                    std::fs::write(&bi, vec![0u8; DISK_BYTES]).expect("disk image");
                    bi
                }
            };
            cfg["disks"] = json!([{"id": "disk0", "path": pi}]);
            (mode, bi)
        });
        p.put_ok("vm.create", Some(&cfg));
        p.put_ok("vm.boot", None);
        p.serial().wait_for("tandem-guest: ready", T);
        Vm {
            b: None,
            p,
            nic: g.nic,
            disk,
            arbiter,
            n,
        }
    }
}

/// A guest on host P, and its backup once protected.
pub struct Vm {
    // Dropped (killed) before `p`, so that the backup never goes live at teardown.
    pub b: Option<Tandem>,
    pub p: Tandem,
    nic: bool,
    disk: Option<(DiskMode, PathBuf)>,
    arbiter: PathBuf,
    n: u32,
}

impl Vm {
    /// Starts a backup on host B and protects the guest; returns the time from `ft.enable` to
    /// both members reporting `protected`.
    pub fn protect(&mut self, site: &Site) -> Duration {
        let b = Tandem::start_in_netns(&format!("bench-ft{}-b", self.n), &site.net.ns(Node::HostB));
        let url = format!("tcp:{HOST_B_LINK_IP}:{FT_PORT}");
        let mode = self.disk.as_ref().map_or(DiskMode::Shared, |d| d.0);
        let mut receive = json!({
            "listen": url,
            // No key on the bench's private link.
            "insecure": true,
            "serial": {"mode": "File", "file": b.serial_path},
            "arbiter": {"path": self.arbiter},
            "disk_mode": mode.name(),
            "failure_timeout_ms": FAILURE_TIMEOUT_MS,
        });
        if self.nic {
            receive["net"] = json!([{"id": "nic0", "tap": "tap0"}]);
        }
        if let Some((_, image)) = &self.disk {
            receive["disks"] = json!([{"id": "disk0", "path": image}]);
        }
        b.put_ok("ft.receive", Some(&receive));
        let start = Instant::now();
        self.p.put_ok(
            "ft.enable",
            Some(&json!({
                "peer": url,
                "disk_mode": mode.name(),
                "arbiter": {"path": self.arbiter},
                "failure_timeout_ms": FAILURE_TIMEOUT_MS,
            })),
        );
        wait_ft(&self.p, "primary", "protected");
        wait_ft(&b, "backup", "protected");
        self.b = Some(b);
        start.elapsed()
    }

    /// The backup; panics if the guest is not protected.
    pub fn backup(&self) -> &Tandem {
        self.b.as_ref().expect("protected")
    }
}

/// `ft.status` of `t`.
pub fn ft_status(t: &Tandem) -> Value {
    let (code, v) = t.get("ft.status");
    assert_eq!(code, 200, "ft.status: {v}");
    v
}

/// Polls `ft.status` every 5 ms until `role`/`state`; panics on `halted` or after [`T`].
pub fn wait_ft(t: &Tandem, role: &str, state: &str) -> Duration {
    let start = Instant::now();
    loop {
        let s = ft_status(t);
        if s["role"] == role && s["state"] == state {
            return start.elapsed();
        }
        assert!(
            s["state"] != "halted" && start.elapsed() < T,
            "ft.status never {role}/{state}: {s}\nlog:\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Bytes host P has sent on the host-to-host link (the replication stream and heartbeats).
pub fn link_tx_bytes(net: &TestNet) -> u64 {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &net.ns(Node::HostP),
            "-s",
            "-j",
            "link",
            "show",
            "dev",
            "ft0",
        ])
        .output()
        .expect("run ip");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx bytes for ft0 in {v}"))
}

/// The primary's checkpointing over a stretch of time.
pub struct Checkpoints {
    /// Checkpoints per second.
    pub per_s: f64,
    /// Link bytes per checkpoint (frames, TCP/IP headers and heartbeats included).
    pub link_bytes_per_ckpt: f64,
    /// Link bytes per second.
    pub link_bytes_per_s: f64,
    /// The primary's own mean stream bytes per checkpoint (recent window).
    pub stream_bytes_per_ckpt: u64,
    /// Guest pause per checkpoint, p50/p99/max, µs (ft.status's window: the last 1024).
    pub pause_us: [u64; 3],
}

/// Start of a measured stretch: count and link bytes now.
pub struct Mark {
    at: Instant,
    count: u64,
    tx: u64,
}

impl Mark {
    /// Marks now.
    pub fn now(vm: &Vm, net: &TestNet) -> Mark {
        Mark {
            at: Instant::now(),
            count: ft_status(&vm.p)["checkpoint_count"].as_u64().unwrap_or(0),
            tx: link_tx_bytes(net),
        }
    }

    /// The figures from the mark to now.
    pub fn since(&self, vm: &Vm, net: &TestNet) -> Checkpoints {
        let s = ft_status(&vm.p);
        let tx = link_tx_bytes(net) - self.tx;
        let secs = self.at.elapsed().as_secs_f64();
        let n = s["checkpoint_count"].as_u64().unwrap_or(0) - self.count;
        let p = &s["pause"];
        Checkpoints {
            per_s: n as f64 / secs,
            link_bytes_per_ckpt: tx as f64 / n.max(1) as f64,
            link_bytes_per_s: tx as f64 / secs,
            stream_bytes_per_ckpt: s["bytes_per_checkpoint"].as_u64().unwrap_or(0),
            pause_us: ["p50_us", "p99_us", "max_us"].map(|k| p[k].as_u64().unwrap_or(0)),
        }
    }
}

impl std::fmt::Display for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} checkpoints/s, pause p50 {} us p99 {} us max {} us, {:.1} KiB/checkpoint on the link ({:.1} KiB stream mean), link {:.2} MB/s",
            self.per_s,
            self.pause_us[0],
            self.pause_us[1],
            self.pause_us[2],
            self.link_bytes_per_ckpt / 1024.0,
            self.stream_bytes_per_ckpt as f64 / 1024.0,
            self.link_bytes_per_s / 1e6
        )
    }
}
