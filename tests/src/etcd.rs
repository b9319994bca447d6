//! A real etcd server for the tests (Debian's `etcd-server` 3.4, `etcdctl` from `etcd-client`):
//! one member on a free loopback port, or on an address inside a test namespace, its data in a
//! scratch folder (on /dev/shm where there is one, so that its fsyncs stay cheap on a loaded
//! host). Killed when dropped; it can be killed, restarted on the same data, paused and resumed.

use crate::net::{Node, TestNet};
use crate::TempDir;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long etcd may take to answer after a start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `etcd` and `etcdctl` run here (`require!(etcd)`, see [`crate::require`]: skipped and
/// reported, or failed where declared).
pub fn etcd_available(test: &str) -> bool {
    crate::require::named_for(&crate::caller(test), "etcd", crate::require::probe::etcd)
}

/// Skips the calling test (returning early) when etcd cannot run here.
#[macro_export]
macro_rules! require_etcd {
    ($name:expr) => {
        if !$crate::etcd::etcd_available($name) {
            return;
        }
    };
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn scratch(tag: &str) -> TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let p = shm.join(format!(
            "tandem-etcd-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&p);
        if std::fs::create_dir_all(&p).is_ok() {
            return TempDir(p);
        }
    }
    TempDir::new(&format!("etcd-{tag}"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A private CA, a server certificate for one IP address and a client certificate, made with
/// openssl (EC P-256, valid two days).
pub struct Tls {
    /// The folder holding every file below; removed when dropped.
    pub dir: TempDir,
    /// The CA certificate (PEM) that signed both certificates.
    pub ca: PathBuf,
    /// The server's certificate (PEM), for the IP address given to [`Tls::generate`].
    pub server_cert: PathBuf,
    /// The server's private key (PEM).
    pub server_key: PathBuf,
    /// The client's certificate (PEM), signed by the CA.
    pub client_cert: PathBuf,
    /// The client's private key (PEM).
    pub client_key: PathBuf,
}

impl Tls {
    /// Makes the files for a server at `ip`.
    pub fn generate(tag: &str, ip: &str) -> Tls {
        let dir = TempDir::new(&format!("etcd-tls-{tag}"));
        let p = |n: &str| dir.path(n);
        let key = |name: &str| {
            run(Command::new("openssl")
                .args([
                    "ecparam",
                    "-genkey",
                    "-name",
                    "prime256v1",
                    "-noout",
                    "-out",
                ])
                .arg(p(name)));
        };
        key("ca.key");
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-new",
                "-sha256",
                "-days",
                "2",
                "-subj",
                "/CN=tandem-test-ca",
            ])
            .arg("-key")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")));
        let sign = |name: &str, cn: &str, ext: &str| {
            key(&format!("{name}.key"));
            run(Command::new("openssl")
                .args(["req", "-new", "-sha256", "-subj", &format!("/CN={cn}")])
                .arg("-key")
                .arg(p(&format!("{name}.key")))
                .arg("-out")
                .arg(p(&format!("{name}.csr"))));
            std::fs::write(p(&format!("{name}.ext")), ext).unwrap();
            run(Command::new("openssl")
                .args(["x509", "-req", "-sha256", "-days", "2", "-CAcreateserial"])
                .arg("-in")
                .arg(p(&format!("{name}.csr")))
                .arg("-CA")
                .arg(p("ca.pem"))
                .arg("-CAkey")
                .arg(p("ca.key"))
                .arg("-extfile")
                .arg(p(&format!("{name}.ext")))
                .arg("-out")
                .arg(p(&format!("{name}.pem"))));
        };
        sign(
            "server",
            "etcd",
            &format!(
                "subjectAltName=IP:{ip}\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        );
        sign(
            "client",
            "tandem",
            "keyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        );
        Tls {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            dir,
        }
    }
}

/// A running (or stopped) one-member etcd cluster.
pub struct Etcd {
    child: Option<Child>,
    /// The client URL.
    pub url: String,
    netns: Option<String>,
    args: Vec<String>,
    /// For etcdctl: `--cacert/--cert/--key`.
    ctl_tls: Vec<String>,
    /// For etcdctl once auth is on: `--user root:PASSWORD`.
    ctl_user: Option<String>,
    /// Scratch: `data/` and `etcd.log`.
    pub dir: TempDir,
}

impl Etcd {
    /// A member on loopback free ports.
    pub fn start(tag: &str) -> Etcd {
        Etcd::launch(tag, None, "127.0.0.1", free_port(), free_port(), None)
    }

    /// A member on loopback free ports that serves clients over TLS and requires a client
    /// certificate signed by `tls.ca`.
    pub fn start_tls(tag: &str, tls: &Tls) -> Etcd {
        Etcd::launch(tag, None, "127.0.0.1", free_port(), free_port(), Some(tls))
    }

    /// A member inside network namespace `netns`, serving clients on `ip:2379` (an address that
    /// namespace has) and its peer port on the namespace's loopback.
    pub fn start_in(tag: &str, netns: &str, ip: &str) -> Etcd {
        Etcd::launch(tag, Some(netns.to_owned()), ip, 2379, 2380, None)
    }

    fn launch(
        tag: &str,
        netns: Option<String>,
        ip: &str,
        client_port: u16,
        peer_port: u16,
        tls: Option<&Tls>,
    ) -> Etcd {
        let dir = scratch(tag);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{ip}:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut args: Vec<String> = [
            "--name",
            "t",
            "--data-dir",
            &dir.path("data").display().to_string(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("t={peer}"),
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut ctl_tls = Vec::new();
        if let Some(t) = tls {
            for (flag, path) in [
                ("--cert-file", &t.server_cert),
                ("--key-file", &t.server_key),
                ("--trusted-ca-file", &t.ca),
            ] {
                args.push(flag.into());
                args.push(path.display().to_string());
            }
            args.push("--client-cert-auth".into());
            for (flag, path) in [
                ("--cacert", &t.ca),
                ("--cert", &t.client_cert),
                ("--key", &t.client_key),
            ] {
                ctl_tls.push(format!("{flag}={}", path.display()));
            }
        }
        let mut e = Etcd {
            child: None,
            url,
            netns,
            args,
            ctl_tls,
            ctl_user: None,
            dir,
        };
        e.restart();
        e
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            // `ip netns exec` execs the program: the child's pid is the program's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Starts the member (again, on the same data) and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path("etcd.log"))
            .expect("etcd log");
        let child = self
            .command("etcd")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let out = self.etcdctl(&["endpoint", "health", "--command-timeout=2s"]);
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "etcd at {} never became healthy: {}\nlog:\n{}",
                self.url,
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the member (SIGKILL) and reaps it; nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` ("STOP", "CONT") to the member.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("etcd is running").id();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} etcd");
    }

    /// Runs etcdctl against this member (inside its namespace, with its TLS files and, once
    /// [`Etcd::enable_auth`] ran, as root).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let mut c = self.command("etcdctl");
        c.arg(format!("--endpoints={}", self.url))
            .args(&self.ctl_tls)
            .args(self.ctl_user.iter().map(|u| format!("--user={u}")))
            .args(args);
        c.output().expect("run etcdctl")
    }

    /// [`Etcd::etcdctl`], which must succeed; its standard output.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl_ok(&["get", "--print-value-only", key]);
        let v = out.strip_suffix('\n').unwrap_or(&out);
        (!v.is_empty()).then(|| v.to_owned())
    }

    /// Turns etcd's authentication on: a root user, and `user` with `password` allowed to read
    /// and write under `prefix` only.
    pub fn enable_auth(&mut self, user: &str, password: &str, prefix: &str) {
        let root = "root:rootpw";
        self.etcdctl_ok(&["user", "add", root]);
        self.etcdctl_ok(&["user", "add", &format!("{user}:{password}")]);
        self.etcdctl_ok(&["role", "add", "pairs"]);
        self.etcdctl_ok(&[
            "role",
            "grant-permission",
            "pairs",
            "--prefix=true",
            "readwrite",
            prefix,
        ]);
        self.etcdctl_ok(&["user", "grant-role", user, "pairs"]);
        self.etcdctl_ok(&["auth", "enable"]);
        self.ctl_user = Some(root.into());
    }

    /// The `arbiter` API object for this member, pair key `key`.
    pub fn arbiter(&self, key: &str) -> Value {
        json!({"etcd": {"endpoints": [self.url], "key": key}})
    }

    /// What the member logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (paused) member too.
        self.kill();
    }
}

/// etcd's address on the test network's LAN (in the switch namespace): both hosts reach it
/// through their LAN bridge, not through the host-to-host link.
pub const LAN_IP: &str = "10.77.0.5";

impl Etcd {
    /// A member on the LAN of `net`, at [`LAN_IP`]:2379.
    pub fn start_on_lan(net: &TestNet, tag: &str) -> Etcd {
        let lan = net.ns(Node::Lan);
        run(Command::new("ip").args([
            "-n",
            &lan,
            "addr",
            "add",
            &format!("{LAN_IP}/24"),
            "dev",
            "lan",
        ]));
        Etcd::start_in(tag, &lan, LAN_IP)
    }
}

/// Makes host `node` unable to reach etcd on the LAN (an `unreachable` route to [`LAN_IP`]:
/// connections fail at once, established ones stop getting through), or able again. The host's
/// LAN and its link to the other host are untouched.
pub fn cut_off(net: &TestNet, node: Node, cut: bool) {
    run(Command::new("ip").args([
        "-n",
        &net.ns(node),
        "route",
        if cut { "add" } else { "del" },
        "unreachable",
        &format!("{LAN_IP}/32"),
    ]));
}
