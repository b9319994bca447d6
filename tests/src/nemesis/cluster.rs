//! The soak's cluster: two hosts of the test network, a VMM on each (replaced by a fresh one
//! whenever a fault takes one out), the arbiter and disks on storage both see, a pair key, and
//! UDP heartbeats over the LAN as the second path.

use super::watch::Sockets;
use crate::ft::{ft_status, GUEST_IP, T};
use crate::net::{Node, TestNet, HOST_B_LAN_IP, HOST_B_LINK_IP, HOST_P_LAN_IP, HOST_P_LINK_IP};
use crate::{Tandem, TempDir};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One host: its VMM now, and where its things are.
pub struct Slot {
    /// Which namespace of the test network this host is.
    pub node: Node,
    /// The host's address on the LAN (the heartbeats' second path).
    pub lan_ip: &'static str,
    /// The host's address on the host-to-host link (the FT stream).
    pub link_ip: &'static str,
    /// This host's disk image (replicated mode; in shared mode both slots name the one image).
    pub image: PathBuf,
    /// The VMM running on this host now; `None` while a fault has taken it out.
    pub member: Option<Tandem>,
}

/// Both hosts, the shared storage and what every pair of them uses.
pub struct Cluster {
    /// The test network both hosts live in.
    pub net: TestNet,
    /// The run's tag, prefix of process and namespace names.
    pub tag: String,
    /// `shared` or `replicated`.
    pub disk_mode: &'static str,
    /// Host P's slot, then host B's.
    pub slots: [Slot; 2],
    /// Storage both hosts see: disk images, the arbiter directory and the key.
    pub store: TempDir,
    /// The arbiter's directory, in `store`.
    pub arbiter: PathBuf,
    /// The 32-byte pair key file (mode 0600) every pair is given.
    pub key: PathBuf,
    /// Both members' failure timeout.
    pub timeout_ms: u64,
    /// Sockets the watcher polls.
    pub sockets: Sockets,
    /// Processes started so far (names and ports stay unique).
    spawned: u32,
}

/// A guest small enough to sync in a moment even on a loaded debug build.
const GUEST_MIB: u64 = 64;
const IMAGE_BYTES: usize = 1 << 20;

impl Cluster {
    /// Brings the network up and boots the counter guest standalone on host P.
    pub fn up(tag: &str, disk_mode: &'static str, timeout_ms: u64) -> Cluster {
        let net = TestNet::up_with_taps(tag);
        let store = TempDir::new(&format!("{tag}-store"));
        let arbiter = crate::ft::arbiter_dir(&store);
        let key = store.path("pair.key");
        crate::ft::write_key_file(&key, &[0x6bu8; 32]);
        let (p_image, b_image) = crate::ft::pair_images(&store, disk_mode, IMAGE_BYTES);
        let slots = [
            Slot {
                node: Node::HostP,
                lan_ip: HOST_P_LAN_IP,
                link_ip: HOST_P_LINK_IP,
                image: p_image,
                member: None,
            },
            Slot {
                node: Node::HostB,
                lan_ip: HOST_B_LAN_IP,
                link_ip: HOST_B_LINK_IP,
                image: b_image,
                member: None,
            },
        ];
        let mut c = Cluster {
            net,
            tag: tag.to_string(),
            disk_mode,
            slots,
            store,
            arbiter,
            key,
            timeout_ms,
            sockets: Arc::new(Mutex::new([None, None])),
            spawned: 0,
        };
        c.start_vmm(0);
        let p = c.member(0);
        p.boot_counter(GUEST_MIB, GUEST_IP, &c.slots[0].image);
        c
    }

    /// The VMM on slot `i`; panics if there is none.
    pub fn member(&self, i: usize) -> &Tandem {
        self.slots[i].member.as_ref().expect("a VMM on this host")
    }

    /// Starts a fresh VMM on slot `i`, replacing (killing) whatever ran there.
    pub fn start_vmm(&mut self, i: usize) {
        self.stop_vmm(i);
        self.spawned += 1;
        let name = format!("{}-{}{}", self.tag, ["p", "b"][i], self.spawned);
        let t = Tandem::start_in_netns(&name, &self.net.ns(self.slots[i].node));
        if let Ok(mut s) = self.sockets.lock() {
            s[i] = Some(t.socket.clone());
        }
        self.slots[i].member = Some(t);
    }

    /// Kills slot `i`'s VMM, if any.
    pub fn stop_vmm(&mut self, i: usize) {
        if let Ok(mut s) = self.sockets.lock() {
            s[i] = None;
        }
        self.slots[i].member = None;
    }

    /// Ports for the pair made now: fresh each time, so that no socket of an earlier pair
    /// (a dying process, a lingering bind) can be in the way.
    fn ports(&self) -> (u16, u16) {
        let n = u16::try_from(self.spawned % 400).unwrap_or(0);
        (7600 + n, 8100 + n)
    }

    /// Makes slot `b` (a fresh VMM) the backup of the guest running on slot `p`, and waits until
    /// both say protected.
    pub fn protect(&mut self, p: usize, b: usize) {
        self.start_vmm(b);
        let (ft_port, hb_port) = self.ports();
        let (ps, bs) = (&self.slots[p], &self.slots[b]);
        let backup = self.member(b);
        let receive = json!({
            "listen": format!("tcp:{}:{ft_port}", bs.link_ip),
            "disks": [{"id": "disk0", "path": bs.image}],
            "net": [{"id": "nic0", "tap": "tap0"}],
            "serial": {"mode": "File", "file": backup.serial_path},
            "arbiter": {"path": self.arbiter},
            "key": {"path": self.key},
            "heartbeat_listen": format!("udp:{}:{hb_port}", bs.lan_ip),
            "peer_heartbeat": format!("udp:{}:{hb_port}", ps.lan_ip),
        });
        backup.put_ok("ft.receive", Some(&receive));
        let enable = json!({
            "peer": format!("tcp:{}:{ft_port}", bs.link_ip),
            "disk_mode": self.disk_mode,
            "arbiter": {"path": self.arbiter},
            "key": {"path": self.key},
            "failure_timeout_ms": self.timeout_ms,
            "heartbeat_listen": format!("udp:{}:{hb_port}", ps.lan_ip),
            "peer_heartbeat": format!("udp:{}:{hb_port}", bs.lan_ip),
        });
        let primary = self.member(p);
        let start = Instant::now();
        loop {
            let (code, v) = primary.put("ft.enable", Some(&enable));
            if code == 204 {
                break;
            }
            // A guest mid-reboot, or a primary still settling, is a moment's 409.
            assert!(
                code == 409 && start.elapsed() < T,
                "ft.enable: {code} {v}\nprimary log:\n{}\nbackup log:\n{}",
                primary.log(),
                backup.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_protected(p, b);
    }

    /// Waits until slot `p` is a protected primary and slot `b` a protected backup.
    pub fn wait_protected(&self, p: usize, b: usize) {
        let start = Instant::now();
        loop {
            let (ps, bs) = (ft_status(self.member(p)), ft_status(self.member(b)));
            if ps["role"] == "primary"
                && ps["state"] == "protected"
                && bs["role"] == "backup"
                && bs["state"] == "protected"
            {
                return;
            }
            assert!(
                start.elapsed() < T,
                "never protected: P {ps}\nB {bs}\nprimary log:\n{}\nbackup log:\n{}",
                self.member(p).log(),
                self.member(b).log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ft.status` and `vm.info` of slot `i`, if its VMM answers within `wait`.
    pub fn look(&self, i: usize, wait: Duration) -> Option<(Value, Value)> {
        let t = self.slots[i].member.as_ref()?;
        let c = t.client().with_timeout(wait);
        let s = c.get("ft.status").ok()?.into_result().ok().flatten()?;
        let info = c
            .get("vm.info")
            .ok()
            .and_then(|r| r.into_result().ok().flatten())
            .unwrap_or(Value::Null);
        Some((s, info))
    }

    /// Which slot runs the guest on its own now (standalone or unprotected, VM up), if one.
    pub fn alone(&self) -> Option<usize> {
        (0..2).find(|&i| {
            self.look(i, Duration::from_secs(2))
                .is_some_and(|(s, info)| {
                    matches!(info["state"].as_str(), Some("Running" | "Paused"))
                        && (s["role"] == "standalone" || s["state"] == "unprotected")
                })
        })
    }

    /// Which slot is the primary of a protected pair now, if any.
    pub fn protected_primary(&self) -> Option<usize> {
        (0..2).find(|&i| {
            let other = 1 - i;
            let p = self.look(i, Duration::from_secs(2));
            let b = self.look(other, Duration::from_secs(2));
            matches!((p, b), (Some((ps, _)), Some((bs, _)))
                if ps["role"] == "primary" && ps["state"] == "protected"
                    && bs["role"] == "backup" && bs["state"] == "protected")
        })
    }

    /// Both VMMs' logs, for failure messages.
    pub fn logs(&self) -> String {
        (0..2)
            .map(|i| match &self.slots[i].member {
                Some(t) => format!("--- host {} log:\n{}", ["P", "B"][i], t.log()),
                None => format!("--- host {}: no VMM", ["P", "B"][i]),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
