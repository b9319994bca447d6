//! Seccomp (on by default): a thread that makes a syscall its kind may not use ends the process
//! with a message naming the thread and the syscall; `--seccomp=false` lets the same call
//! through. The forbidden call is made on demand by the hidden `TANDEM_SECCOMP_SELFTEST=<kind>`
//! variable (mount(2), which no kind may use), right after the thread installed its filter. Every
//! kind is checked on its own real thread: api, vmm, vcpu (a booted VM), migration
//! (`vm.receive-migration`) and ft (`ft.receive`).
//!
//! Each self-test reports its violation to a `TANDEM_SECCOMP_REPORT` file of its own (checked
//! here), never to the suite's: `.ci/run` fails on any line in that one.

use api_client::ApiClient;
use serde_json::{json, Value};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tandem_tests::{require, tandem_bin, TempDir};

/// SYS_mount on x86_64.
const SYS_MOUNT: &str = "syscall 165";
/// Exit status of a process the SIGSYS handler ended.
const SIGSYS_EXIT: i32 = 159;

/// A tandem process started with the self-test for one kind.
struct SelfTest {
    child: Child,
    dir: TempDir,
}

impl SelfTest {
    fn start(kind: &str, extra: &[&str]) -> SelfTest {
        let dir = TempDir::new(&format!("seccomp-{kind}"));
        let child = Command::new(tandem_bin())
            .arg("--api-socket")
            .arg(dir.path("api.sock"))
            .args(extra)
            .env("TANDEM_SECCOMP_SELFTEST", kind)
            .env("TANDEM_SECCOMP_REPORT", dir.path("seccomp-report"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tandem");
        SelfTest { child, dir }
    }

    /// Waits for the API to answer, then sends `PUT endpoint` (the answer does not matter: the
    /// call only starts the thread under test).
    fn put(&self, endpoint: &str, body: &Value) {
        let client = ApiClient::new(self.dir.path("api.sock")).with_timeout(Duration::from_secs(5));
        let start = Instant::now();
        while client.get("vmm.ping").is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the API never answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = client.put(endpoint, Some(body));
    }

    /// The exit code if the process ended within `wait` (else it is killed: None), stderr, and
    /// what it appended to its seccomp report.
    fn finish(mut self, wait: Duration) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + wait;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let report = std::fs::read_to_string(self.dir.path("seccomp-report")).unwrap_or_default();
        (status, err, report)
    }
}

/// Asserts that `thread` was ended for mount(2), on stderr and in the process's seccomp report.
/// The kernel keeps 15 bytes of a thread's name.
fn assert_refused((code, err, report): (Option<i32>, String, String), thread: &str) {
    let thread = &thread[..thread.len().min(15)];
    assert_eq!(
        code,
        Some(SIGSYS_EXIT),
        "tandem should exit {SIGSYS_EXIT} on SIGSYS; stderr:\n{err}"
    );
    assert!(
        err.contains(&format!("thread '{thread}' made forbidden")) && err.contains(SYS_MOUNT),
        "the message names the thread ({thread}) and the syscall:\n{err}"
    );
    assert!(
        report.contains(&format!("thread '{thread}' made forbidden")) && report.contains(SYS_MOUNT),
        "the report file names the thread ({thread}) and the syscall:\n{report}"
    );
}

#[test]
fn api_thread_is_refused_a_forbidden_syscall_by_default() {
    // No --seccomp flag at all: on is the default.
    let out = SelfTest::start("api", &[]).finish(Duration::from_secs(10));
    assert!(out.1.contains("seccomp: on"), "{}", out.1);
    assert_refused(out, "tandem_api");
}

#[test]
fn seccomp_false_lets_the_same_call_through_and_warns() {
    let (code, err, report) =
        SelfTest::start("api", &["--seccomp=false"]).finish(Duration::from_secs(3));
    assert_eq!(code, None, "tandem should keep running; stderr:\n{err}");
    assert_eq!(report, "", "nothing to report");
    assert!(
        err.contains("WARN") && err.contains("seccomp: off"),
        "{err}"
    );
    assert!(
        err.contains("seccomp self-test: the api thread called mount(2) and survived"),
        "{err}"
    );
}

#[test]
fn seccomp_log_lets_the_call_through_for_the_kernel_to_log() {
    let (code, err, _) =
        SelfTest::start("api", &["--seccomp", "log"]).finish(Duration::from_secs(3));
    assert_eq!(code, None, "tandem should keep running; stderr:\n{err}");
    assert!(err.contains("seccomp: log"), "{err}");
    assert!(
        err.contains("the api thread called mount(2) and survived"),
        "{err}"
    );
}

#[test]
fn migration_and_ft_threads_are_refused_too() {
    let t = SelfTest::start("migration", &["--seccomp=true"]);
    t.put(
        "vm.receive-migration",
        &json!({"receiver_url": "tcp:127.0.0.1:0"}),
    );
    assert_refused(t.finish(Duration::from_secs(10)), "tandem_migrate_in");

    let t = SelfTest::start("ft", &["--seccomp=true"]);
    let arbiter = t.dir.path("arbiter");
    std::fs::create_dir(&arbiter).unwrap();
    t.put(
        "ft.receive",
        &json!({"listen": "tcp:127.0.0.1:0", "arbiter": {"path": arbiter}}),
    );
    assert_refused(t.finish(Duration::from_secs(10)), "tandem_ft_backup");
}

#[test]
fn vmm_and_vcpu_threads_are_refused_too() {
    require!(kvm);
    assert_refused(
        SelfTest::start("vmm", &[]).finish(Duration::from_secs(10)),
        "tandem",
    );
    let args = ["--cpus", "1", "--memory", "64M", "--serial", "null"];
    assert_refused(
        SelfTest::start("vcpu", &args).finish(Duration::from_secs(20)),
        "tandem_vcpu0",
    );
}
