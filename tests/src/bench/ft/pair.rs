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
    /// vCPUs.
    pub vcpus: u8,
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
        Site {
            net: TestNet::up_with_taps(tag),
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
        let mut cfg = p.builtin_config(g.vcpus, g.mem_mib, &cmdline);
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

/// The FT initial sync as the bench saw it.
#[derive(Clone, Copy, Debug)]
pub struct Sync {
    /// `ft.enable` to both members `protected`.
    pub time: Duration,
    /// Bytes host P sent on the host-to-host link meanwhile.
    pub link_bytes: u64,
    /// The guest pause the sync ended with, as the primary reports it (`None`: not reported).
    pub downtime: Option<Duration>,
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
    /// Starts a backup on host B and protects the guest with `ft.enable`'s defaults.
    pub fn protect(&mut self, site: &Site) -> Sync {
        self.protect_with(site, &json!({}))
    }

    /// As [`Vm::protect`], with `extra` fields added to the `ft.enable` body; returns the time
    /// from `ft.enable` to both members reporting `protected`, and the link bytes meanwhile.
    pub fn protect_with(&mut self, site: &Site, extra: &Value) -> Sync {
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
        let mut enable = json!({
            "peer": url,
            "disk_mode": mode.name(),
            "arbiter": {"path": self.arbiter},
            "failure_timeout_ms": FAILURE_TIMEOUT_MS,
        });
        if let (Some(e), Some(x)) = (enable.as_object_mut(), extra.as_object()) {
            e.extend(x.clone());
        }
        let tx = link_tx_bytes(&site.net);
        let start = Instant::now();
        self.p.put_ok("ft.enable", Some(&enable));
        wait_ft(&self.p, "primary", "protected");
        wait_ft(&b, "backup", "protected");
        let time = start.elapsed();
        self.b = Some(b);
        let d = &ft_status(&self.p)["initial_sync"]["downtime"];
        Sync {
            time,
            link_bytes: link_tx_bytes(&site.net).saturating_sub(tx),
            downtime: d["secs"]
                .as_f64()
                .map(|s| Duration::from_secs_f64(s + d["nanos"].as_f64().unwrap_or(0.0) / 1e9)),
        }
    }

    /// The backup; panics if the guest is not protected.
    pub fn backup(&self) -> &Tandem {
        self.b.as_ref().expect("protected")
    }
}

pub use crate::ft::ft_status;

/// Waits until `role`/`state` (`crate::ft::wait_status`); panics on `halted` or after
/// [`crate::ft::T`]. How long it took.
pub fn wait_ft(t: &Tandem, role: &str, state: &str) -> Duration {
    let start = Instant::now();
    crate::ft::wait_status(t, &format!("{role}/{state}"), |s| {
        assert!(
            s["state"] != "halted",
            "halted while waiting for {role}/{state}: {s}"
        );
        s["role"] == role && s["state"] == state
    });
    start.elapsed()
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
