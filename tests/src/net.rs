//! The multi-host test network (see resources/testnet.sh): namespaces for a client, hosts P and B,
//! a LAN switch, and a host-to-host link. Torn down when dropped.

use std::path::PathBuf;
use std::process::Command;

/// Guest LAN addresses the topology hands out.
pub const CLIENT_IP: &str = "10.77.0.100";
/// Host P's address on its LAN bridge (`br-lan`).
pub const HOST_P_LAN_IP: &str = "10.77.0.11";
/// Host B's address on its LAN bridge (`br-lan`).
pub const HOST_B_LAN_IP: &str = "10.77.0.12";
/// Host P's end (`ft0`) of the host-to-host link, where FT traffic goes.
pub const HOST_P_LINK_IP: &str = "10.99.0.1";
/// Host B's end (`ft0`) of the host-to-host link, where FT traffic goes.
pub const HOST_B_LINK_IP: &str = "10.99.0.2";

/// One of the namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// The client namespace (`-c`): `eth0` at [`CLIENT_IP`] on the LAN.
    Client,
    /// Host P (`-p`): LAN bridge at [`HOST_P_LAN_IP`], link end at [`HOST_P_LINK_IP`].
    HostP,
    /// Host B (`-b`): LAN bridge at [`HOST_B_LAN_IP`], link end at [`HOST_B_LINK_IP`].
    HostB,
    /// The LAN switch (`-l`): the `lan` bridge the client's and hosts' uplinks join.
    Lan,
}

impl Node {
    fn suffix(self) -> &'static str {
        match self {
            Node::Client => "c",
            Node::HostP => "p",
            Node::HostB => "b",
            Node::Lan => "l",
        }
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../resources/testnet.sh")
}

/// Whether this process may build the test network (see [`crate::require`]); `who` names a
/// caller that is not a test (a benchmark binary).
pub fn netns_available(who: &str) -> bool {
    crate::require::named_for(&crate::caller(who), "netns", crate::require::probe::netns)
}

/// A live test network.
pub struct TestNet {
    /// The namespaces' prefix (`t`, tag, pid, counter); [`TestNet::ns`] adds a node's suffix.
    pub name: String,
}

impl TestNet {
    /// Builds the namespaces; `name` is made unique per process and call.
    pub fn up(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(3)
            .collect();
        let name = format!("t{tag}{:x}{n:x}", std::process::id() % 0xfff);
        let name: String = name.chars().take(10).collect();
        let out = Command::new("bash")
            .arg(script())
            .args(["up", &name])
            .output()
            .expect("run testnet.sh");
        assert!(
            out.status.success(),
            "testnet.sh up {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestNet { name }
    }

    /// The namespace name of `node`.
    pub fn ns(&self, node: Node) -> String {
        format!("{}-{}", self.name, node.suffix())
    }

    /// A command that runs `program` inside `node`'s namespace.
    pub fn command(&self, node: Node, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(node)]).arg(program);
        c
    }

    /// The test network with `tap0` on hosts P and B: where an FT pair's guest has its NIC on
    /// either host.
    pub fn up_with_taps(tag: &str) -> Self {
        let net = TestNet::up(tag);
        net.add_tap(Node::HostP, "tap0");
        net.add_tap(Node::HostB, "tap0");
        net
    }

    /// Creates tap `tap` on host `node` (HostP or HostB), attached to its LAN bridge.
    pub fn add_tap(&self, node: Node, tap: &str) {
        let out = Command::new("bash")
            .arg(script())
            .args(["tap", &self.name, node.suffix(), tap])
            .output()
            .expect("run testnet.sh");
        assert!(
            out.status.success(),
            "testnet.sh tap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Takes `node`'s end of the host-to-host link down (or up again): a partition.
    pub fn set_link(&self, node: Node, up: bool) {
        let status = Command::new("ip")
            .args(["-n", &self.ns(node), "link", "set", "ft0"])
            .arg(if up { "up" } else { "down" })
            .status()
            .expect("run ip");
        assert!(status.success());
    }

    /// Limits `node`'s sending rate on the host-to-host link (e.g. "8mbit"), so that a test can
    /// act in the middle of a transfer instead of racing it.
    pub fn throttle_link(&self, node: Node, rate: &str) {
        let status = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(node),
                "tc",
                "qdisc",
                "replace",
                "dev",
                "ft0",
            ])
            .args([
                "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms",
            ])
            .status()
            .expect("run tc");
        assert!(status.success(), "tc tbf on {}", self.ns(node));
    }

    /// Lifts [`TestNet::throttle_link`]'s limit: the link runs at full speed again.
    pub fn unthrottle_link(&self, node: Node) {
        let status = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(node),
                "tc",
                "qdisc",
                "del",
                "dev",
                "ft0",
            ])
            .args(["root"])
            .status()
            .expect("run tc");
        assert!(status.success(), "tc qdisc del on {}", self.ns(node));
    }

    /// Runs `f` on a new thread that has entered `node`'s network namespace, so sockets it opens
    /// live there; returns what `f` returns.
    pub fn run_in<T: Send + 'static>(
        &self,
        node: Node,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.ns(node));
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace fd we own only changes this thread's network namespace.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

/// Listens for RARP frames (ethertype 0x8035) in `node`'s namespace until `stop` is set,
/// returning the sender MAC of each one seen. Starts listening before it returns the handle.
pub fn capture_rarp(
    net: &TestNet,
    node: Node,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<[u8; 6]>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = net.run_in(node, move || {
        const ETH_P_RARP: u16 = 0x8035;
        // SAFETY: plain socket creation; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(ETH_P_RARP.to_be()),
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd was just returned by socket() and is owned by nothing else.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        use std::os::fd::AsRawFd;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: setsockopt reads a timeval of the given size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        let _ = tx.send(());
        let mut seen = Vec::new();
        let mut buf = [0u8; 128];
        // Stop only once `stop` is set and the socket has nothing more queued.
        loop {
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 14 && buf[12..14] == [0x80, 0x35] {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&buf[6..12]);
                seen.push(mac);
            } else if n < 0 && stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
        }
        seen
    });
    let _ = rx.recv();
    h
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.name])
            .output();
    }
}
