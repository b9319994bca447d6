//! A real `tandem` process serving its API on a Unix socket in a scratch folder.

use crate::{tandem_bin, SerialLog, TempDir};
use api_client::ApiClient;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `tandem --api-socket` process; killed when dropped.
pub struct Tandem {
    /// The `tandem` process (`ip netns exec` execs it, so this pid is tandem's).
    pub child: Child,
    /// The API socket, `api.sock` in [`Tandem::dir`].
    pub socket: PathBuf,
    /// `serial.log` in [`Tandem::dir`], where tests' VM configs send the guest console.
    pub serial_path: PathBuf,
    /// The scratch folder with the socket, the console and `tandem.log` (stderr).
    pub dir: TempDir,
}

impl Tandem {
    /// Starts `tandem` and waits until its API answers `vmm.ping`.
    pub fn start(name: &str) -> Self {
        Self::start_with_args(name, &[])
    }

    /// Like [`Tandem::start`] with extra command-line arguments.
    pub fn start_with_args(name: &str, args: &[&str]) -> Self {
        Self::spawn(name, None, args, &[])
    }

    /// Starts `tandem` inside network namespace `netns` (a "host" of the test network), so that
    /// its taps live there; its API socket is still a path on the shared filesystem.
    pub fn start_in_netns(name: &str, netns: &str) -> Self {
        Self::spawn(name, Some(netns), &[], &[])
    }

    /// [`Tandem::start_in_netns`] with extra environment variables (e.g. a test-only hook such
    /// as `TANDEM_TEST_CORRUPT_REPLICA`).
    pub fn start_in_netns_with_env(name: &str, netns: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(name, Some(netns), &[], env)
    }

    fn spawn(name: &str, netns: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new(name);
        let socket = dir.path("api.sock");
        let serial_path = dir.path("serial.log");
        let log = std::fs::File::create(dir.path("tandem.log")).expect("create log");
        let mut cmd = match netns {
            // `ip netns exec` execs the program, so the child's pid is tandem's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(tandem_bin());
                c
            }
            None => Command::new(tandem_bin()),
        };
        let child = cmd
            .arg("--api-socket")
            .arg(&socket)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", tandem_bin().display()));
        let t = Tandem {
            child,
            socket,
            serial_path,
            dir,
        };
        let start = Instant::now();
        while t.client().get("vmm.ping").is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                panic!("tandem did not answer on its socket; log:\n{}", t.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        t
    }

    /// An API client for this process.
    pub fn client(&self) -> ApiClient {
        ApiClient::new(&self.socket)
    }

    /// The process's stderr log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("tandem.log")).unwrap_or_default()
    }

    /// The guest console.
    pub fn serial(&self) -> SerialLog {
        SerialLog::new(&self.serial_path)
    }

    /// `PUT` and return (status, JSON body or Null); panics only on transport errors.
    pub fn put(&self, endpoint: &str, body: Option<&Value>) -> (u16, Value) {
        let r = self
            .client()
            .put(endpoint, body)
            .unwrap_or_else(|e| panic!("PUT {endpoint}: {e}; log:\n{}", self.log()));
        (r.status, r.body.unwrap_or(Value::Null))
    }

    /// `GET` and return (status, JSON body or Null).
    pub fn get(&self, endpoint: &str) -> (u16, Value) {
        let r = self
            .client()
            .get(endpoint)
            .unwrap_or_else(|e| panic!("GET {endpoint}: {e}; log:\n{}", self.log()));
        (r.status, r.body.unwrap_or(Value::Null))
    }

    /// `PUT` that must succeed (2xx).
    pub fn put_ok(&self, endpoint: &str, body: Option<&Value>) -> Value {
        let (s, b) = self.put(endpoint, body);
        assert!(
            (200..300).contains(&s),
            "PUT {endpoint} -> {s} {b}; log:\n{}",
            self.log()
        );
        b
    }

    /// A VM config for the built-in guest with serial to this process's console file.
    pub fn builtin_config(&self, cpus: u8, mem_mib: u64, cmdline: &str) -> Value {
        json!({
            "cpus": {"boot_vcpus": cpus},
            "memory": {"size": mem_mib << 20},
            "payload": {"cmdline": cmdline},
            "serial": {"mode": "File", "file": self.serial_path},
        })
    }

    /// Creates and boots the counter guest (`mem_mib` MiB, one vCPU) at `ip`/24 with `image` as
    /// `disk0` and `nic0` on `tap0`, then waits for `tandem-guest: ready`.
    pub fn boot_counter(&self, mem_mib: u64, ip: &str, image: &std::path::Path) {
        let mut cfg = self.builtin_config(1, mem_mib, &format!("workload=counter ip={ip}/24"));
        cfg["disks"] = json!([{"id": "disk0", "path": image}]);
        cfg["net"] = json!([{"id": "nic0", "tap": "tap0"}]);
        self.put_ok("vm.create", Some(&cfg));
        self.put_ok("vm.boot", None);
        self.serial()
            .wait_for("tandem-guest: ready", Duration::from_secs(60));
    }

    /// Creates and boots the built-in guest, then waits for `tandem-guest: ready`.
    pub fn boot_builtin(&self, cpus: u8, mem_mib: u64, cmdline: &str) -> Duration {
        self.put_ok(
            "vm.create",
            Some(&self.builtin_config(cpus, mem_mib, cmdline)),
        );
        let t = Instant::now();
        self.put_ok("vm.boot", None);
        self.serial()
            .wait_for("tandem-guest: ready", Duration::from_secs(60));
        t.elapsed()
    }

    /// The VM's state from `vm.info`.
    pub fn state(&self) -> String {
        let (s, b) = self.get("vm.info");
        assert_eq!(s, 200, "vm.info -> {s} {b}");
        b["state"].as_str().unwrap_or_default().to_string()
    }

    /// Polls `vm.info` until the state is `want`.
    pub fn wait_state(&self, want: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.state() == want {
                return;
            }
            if start.elapsed() > timeout {
                panic!("state is {} not {want}; log:\n{}", self.state(), self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            if start.elapsed() > timeout {
                panic!("tandem did not exit; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// CPU time (user+system) used so far by the thread named `name`, or None if there is none.
    pub fn thread_cpu_time(&self, name: &str) -> Option<Duration> {
        thread_cpu_time(self.child.id(), name)
    }
}

impl Drop for Tandem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time of the thread of `pid` whose name (comm) is `name`.
pub fn thread_cpu_time(pid: u32, name: &str) -> Option<Duration> {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the ")" that ends comm: state is field 3; utime and stime are 14 and 15.
        let after = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        return Some(Duration::from_millis(ticks * 1000 / hz));
    }
    None
}
