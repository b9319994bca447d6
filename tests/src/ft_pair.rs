//! A pair of real `tandem` processes on the test network for FT tests that set up the pair
//! themselves (keys, heartbeat paths): P runs the counter guest on a shared disk, B has no VM
//! until it receives one.

use crate::net::{Node, TestNet, HOST_B_LINK_IP};
use crate::{Tandem, TempDir};
use serde_json::{json, Value};

pub use crate::ft::{
    assert_counts_up, client, ft_status, wait_ft, wait_status, FT_PORT, GUEST_IP, T,
};

/// Two hosts, P running the guest, B idle; nothing paired yet.
pub struct Hosts {
    /// The test network: hosts P and B, their taps and the host-to-host link.
    pub net: TestNet,
    /// The VMM on host P, running the counter guest.
    pub p: Tandem,
    /// The VMM on host B, with no VM yet.
    pub b: Tandem,
    /// Shared storage: the disk image and the arbiter's directory.
    pub store: TempDir,
}

impl Hosts {
    /// Builds the network and boots the counter guest on P, its disk in the store.
    pub fn up(tag: &str) -> Hosts {
        Hosts::up_with_disk(tag, None)
    }

    /// As [`Hosts::up`], the guest's disk at `image` when given (a file system a test stalls
    /// or fills), else `counter.img` in the store; the arbiter's directory is always in the store.
    pub fn up_with_disk(tag: &str, image: Option<std::path::PathBuf>) -> Hosts {
        let net = TestNet::up_with_taps(tag);
        let p = Tandem::start_in_netns(&format!("{tag}-p"), &net.ns(Node::HostP));
        let b = Tandem::start_in_netns(&format!("{tag}-b"), &net.ns(Node::HostB));
        let store = TempDir::new(&format!("{tag}-store"));
        let image = image.unwrap_or_else(|| store.path("counter.img"));
        std::fs::write(&image, vec![0u8; 1 << 20]).expect("disk image");
        crate::ft::arbiter_dir(&store);
        p.boot_counter(128, GUEST_IP, &image);
        Hosts { net, p, b, store }
    }

    /// The stream's URL (B's end of the host-to-host link).
    pub fn url(&self) -> String {
        format!("tcp:{HOST_B_LINK_IP}:{FT_PORT}")
    }

    /// B's ft.receive body, with `extra` fields merged in; without a `key` in them it says
    /// `insecure` (a keyless listener on the link is refused otherwise).
    pub fn receive_body(&self, extra: Value) -> Value {
        let mut body = json!({
            "listen": self.url(),
            "net": [{"id": "nic0", "tap": "tap0"}],
            "serial": {"mode": "File", "file": self.b.serial_path},
            "arbiter": {"path": self.store.path("arbiter")},
            "disk_mode": "shared",
            "failure_timeout_ms": 1000,
        });
        merge(&mut body, extra);
        if body.get("key").is_none() {
            body["insecure"] = json!(true);
        }
        body
    }

    /// P's ft.enable body, with `extra` fields merged in.
    pub fn enable_body(&self, extra: Value) -> Value {
        let mut body = json!({
            "peer": self.url(),
            "disk_mode": "shared",
            "arbiter": {"path": self.store.path("arbiter")},
            "failure_timeout_ms": 1000,
        });
        merge(&mut body, extra);
        body
    }

    /// Writes a key file of `len` random bytes with permission bits `mode`.
    pub fn key_file(&self, name: &str, len: usize, mode: u32) -> std::path::PathBuf {
        let p = self.store.path(name);
        write_key(&p, len, mode);
        p
    }
}

/// Writes a key file of `len` random bytes at `p` with permission bits `mode`.
pub fn write_key(p: &std::path::Path, len: usize, mode: u32) {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut k = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut k))
        .expect("random key");
    std::fs::write(p, k).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn merge(body: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
}
