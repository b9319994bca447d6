//! Docker for the container tests: whether an engine answers, Tandem's image as
//! resources/docker/build.sh builds it (from this build's binaries), and containers run from it
//! with their API socket and console in a bind-mounted folder.

use crate::{tandem_bin, SerialLog, TempDir};
use api_client::ApiClient;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where a container's bind-mounted folder is inside it (the image's API socket lives there).
pub const RUN_DIR: &str = "/run/tandem";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"))
}

/// `docker ARGS`, which must succeed; returns its trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether a Docker engine answers here (`require!(docker)`, see [`crate::require`]: skipped
/// and reported, or failed where declared).
pub fn engine_available(test: &str) -> bool {
    crate::require::named_for(
        &crate::caller(test),
        "docker",
        crate::require::probe::docker,
    )
}

/// Skips the calling test (returning early) unless KVM is usable and a Docker engine answers.
#[macro_export]
macro_rules! require_kvm_and_docker {
    ($name:expr) => {
        if !$crate::kvm_available($name) || !$crate::docker::engine_available($name) {
            return;
        }
    };
}

/// The ID of Tandem's image, built once per test process by `build.sh --prebuilt` on the
/// binaries of this build (the script itself builds a Debian base when no registry answers).
pub fn image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            remove_leftovers();
            build_image()
        })
        .clone()
}

/// The label that ties a container or network to the test process that made it.
const OWNER: &str = "tandem-test-pid";

/// Removes containers and networks of test processes that are gone (killed before their drops
/// ran, e.g. by nextest's timeout), so that they do not pile up on a machine.
fn remove_leftovers() {
    for kind in ["container", "network"] {
        let fmt = format!("{{{{.ID}}}} {{{{.Label \"{OWNER}\"}}}}");
        let filter = format!("label={OWNER}");
        let mut ls = vec![kind, "ls", "--filter", &filter, "--format", &fmt];
        if kind == "container" {
            ls.push("--all");
        }
        let out = docker(&ls);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((id, pid)) = line.split_once(' ') else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let rm: &[&str] = if kind == "container" {
                    &["rm", "-f", "-v"]
                } else {
                    &["rm"]
                };
                let mut args = vec![kind];
                args.extend_from_slice(rm);
                args.push(id);
                let _ = docker(&args);
            }
        }
    }
}

/// `--label tandem-test-pid=<this process>`.
fn owner_label() -> String {
    format!("{OWNER}={}", std::process::id())
}

fn build_image() -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = tandem_bin()
        .parent()
        .map(Path::to_path_buf)
        .expect("bin dir");
    let scratch = TempDir::new("image");
    let iid = scratch.path("iid");
    let start = Instant::now();
    let out = Command::new("bash")
        .arg(root.join("resources/docker/build.sh"))
        .arg("--prebuilt")
        .arg(&bin_dir)
        .args(["--tag", "tandem:test", "--iidfile"])
        .arg(&iid)
        .output()
        .expect("run resources/docker/build.sh");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "build.sh failed ({}):\n{log}",
        out.status
    );
    // The script's own lines (fallbacks, timings), not docker build's steps.
    for line in log
        .lines()
        .filter(|l| l.contains("build.sh") || l.contains("debian-base"))
    {
        eprintln!("[image] {line}");
    }
    eprintln!("[image] ready after {:.1?}", start.elapsed());
    std::fs::read_to_string(&iid)
        .map(|s| s.trim().to_string())
        .expect("build.sh wrote the image ID")
}

/// A unique name for a container or network of this test process.
fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("tandem-test-{name}-{}-{n}", std::process::id())
}

/// A user-defined bridge network, removed when dropped.
pub struct Network {
    /// The network's name, unique to this test process (`tandem-test-NAME-PID-N`).
    pub name: String,
}

impl Network {
    /// `docker network create`.
    pub fn create(name: &str) -> Self {
        let name = unique(name);
        docker_ok(&["network", "create", "--label", &owner_label(), &name]);
        Network { name }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A container of Tandem's image, removed (with `docker rm -f`) when dropped.
pub struct Container {
    /// The container id `docker run -d` printed.
    pub id: String,
    /// The container's name, unique to this test process (`tandem-test-NAME-PID-N`).
    pub name: String,
    /// Bind-mounted at [`RUN_DIR`]: the API socket, the console, the seccomp report.
    pub dir: TempDir,
}

impl Container {
    /// `docker run -d` of [`image`] with `docker_args` (devices, networks, more mounts) and
    /// `args` for the image's entry point (`tandem`; none: its default, the API socket in
    /// [`RUN_DIR`]). Tandem reports forbidden syscalls to a file in the bind-mounted folder.
    pub fn run(name: &str, docker_args: &[&str], args: &[&str]) -> Self {
        let image = image();
        let name = unique(name);
        let dir = TempDir::new(&name);
        let mount = format!("{}:{RUN_DIR}", dir.0.display());
        let report = format!("TANDEM_SECCOMP_REPORT={RUN_DIR}/seccomp.report");
        let owner = owner_label();
        let mut all = vec!["run", "-d", "--name", &name, "--label", &owner];
        all.extend(["-v", &mount, "-e", &report]);
        all.extend_from_slice(docker_args);
        all.push(&image);
        all.extend_from_slice(args);
        let id = docker_ok(&all);
        Container { id, name, dir }
    }

    /// The API socket as this host sees it.
    pub fn socket(&self) -> PathBuf {
        self.dir.path("tandem.sock")
    }

    /// A path inside the container's [`RUN_DIR`], as the container sees it.
    pub fn inside(&self, file: &str) -> String {
        format!("{RUN_DIR}/{file}")
    }

    /// An API client over the bind-mounted socket.
    pub fn client(&self) -> ApiClient {
        ApiClient::new(self.socket())
    }

    /// Waits until `vmm.ping` answers over the bind-mounted socket; returns how long it took.
    pub fn wait_api(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        while self.client().get("vmm.ping").is_err() {
            assert!(
                start.elapsed() < timeout,
                "{}: no API on {} after {timeout:?}; state {}; logs:\n{}",
                self.name,
                self.socket().display(),
                self.state(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    }

    /// `PUT` and return (status, JSON body or Null); panics only on transport errors.
    pub fn put(&self, endpoint: &str, body: Option<&Value>) -> (u16, Value) {
        let r = self
            .client()
            .put(endpoint, body)
            .unwrap_or_else(|e| panic!("PUT {endpoint}: {e}; logs:\n{}", self.logs()));
        (r.status, r.body.unwrap_or(Value::Null))
    }

    /// `PUT` that must succeed (2xx).
    pub fn put_ok(&self, endpoint: &str, body: Option<&Value>) -> Value {
        let (s, b) = self.put(endpoint, body);
        assert!(
            (200..300).contains(&s),
            "PUT {endpoint} -> {s} {b}; logs:\n{}",
            self.logs()
        );
        b
    }

    /// `GET` that must answer 200; returns the body.
    pub fn get_ok(&self, endpoint: &str) -> Value {
        let r = self
            .client()
            .get(endpoint)
            .unwrap_or_else(|e| panic!("GET {endpoint}: {e}; logs:\n{}", self.logs()));
        assert_eq!(r.status, 200, "GET {endpoint}; logs:\n{}", self.logs());
        r.body.unwrap_or(Value::Null)
    }

    /// The guest console written to `serial.log` in the bind-mounted folder.
    pub fn serial(&self) -> SerialLog {
        SerialLog::new(&self.dir.path("serial.log"))
    }

    /// `docker exec` of `cmd` in the container.
    pub fn exec(&self, env: &[&str], cmd: &[&str]) -> Output {
        let mut all = vec!["exec"];
        for e in env {
            all.extend(["-e", e]);
        }
        all.push(&self.id);
        all.extend_from_slice(cmd);
        docker(&all)
    }

    /// The container's standard output and error so far (tandem logs to standard error).
    pub fn logs(&self) -> String {
        let o = docker(&["logs", &self.id]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// `running`, `exited`, ... from `docker inspect`.
    pub fn state(&self) -> String {
        String::from_utf8_lossy(&docker(&["inspect", "-f", "{{.State.Status}}", &self.id]).stdout)
            .trim()
            .to_string()
    }

    /// This container's address on `network`.
    pub fn ip(&self, network: &Network) -> String {
        let fmt = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            network.name
        );
        let ip = docker_ok(&["inspect", "-f", &fmt, &self.id]);
        assert!(
            !ip.is_empty(),
            "{} has no address on {}",
            self.name,
            network.name
        );
        ip
    }

    /// `docker kill` (SIGKILL): the container's processes die at once, as when a host dies.
    pub fn kill(&self) {
        docker_ok(&["kill", &self.id]);
    }

    /// Waits until the container has exited; returns its exit code.
    pub fn wait_exit(&self, timeout: Duration) -> i64 {
        let start = Instant::now();
        loop {
            let s = docker_ok(&[
                "inspect",
                "-f",
                "{{.State.Status}} {{.State.ExitCode}}",
                &self.id,
            ]);
            if let Some(code) = s.strip_prefix("exited ") {
                return code
                    .parse()
                    .unwrap_or_else(|_| panic!("exit code in {s:?}"));
            }
            assert!(
                start.elapsed() < timeout,
                "{} still {s} after {timeout:?}; logs:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Forbidden syscalls tandem reported in this container (none is the only good answer).
    pub fn seccomp_violations(&self) -> String {
        std::fs::read_to_string(self.dir.path("seccomp.report")).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Hand violations to the suite's report too (.ci/run fails on any).
        let v = self.seccomp_violations();
        if let (false, Some(report)) = (v.is_empty(), std::env::var_os("TANDEM_SECCOMP_REPORT")) {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(report)
            {
                let _ = f.write_all(v.as_bytes());
            }
        }
        let _ = docker(&["rm", "-f", "-v", &self.id]);
    }
}
