//! Seccomp: a thread that makes a syscall its kind may not use ends the process with a message
//! naming the thread and the syscall; `--seccomp=false` lets the same call through. The forbidden
//! call is made on demand by the hidden `TANDEM_SECCOMP_SELFTEST=<kind>` variable (mount(2), which
//! no kind may use), right after the thread installed its filter.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tandem_tests::{require_kvm, tandem_bin, TempDir};

/// SYS_mount on x86_64.
const SYS_MOUNT: &str = "syscall 165";

/// Runs tandem with the self-test for `kind`; returns (exit code if it exited within `wait`,
/// standard error).
fn run(kind: &str, extra: &[&str], wait: Duration) -> (Option<i32>, String) {
    let dir = TempDir::new(&format!("seccomp-{kind}"));
    let sock = dir.path("api.sock");
    let mut child = Command::new(tandem_bin())
        .arg("--api-socket")
        .arg(&sock)
        .args(extra)
        .env("TANDEM_SECCOMP_SELFTEST", kind)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tandem");
    let deadline = Instant::now() + wait;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[test]
fn api_thread_is_refused_a_forbidden_syscall() {
    let (code, err) = run("api", &["--seccomp=true"], Duration::from_secs(10));
    assert_eq!(
        code,
        Some(159),
        "tandem should exit 159 on SIGSYS; stderr:\n{err}"
    );
    assert!(err.contains("seccomp: on"), "{err}");
    assert!(
        err.contains("thread 'tandem_api' made forbidden") && err.contains(SYS_MOUNT),
        "the message names the thread and the syscall:\n{err}"
    );
}

#[test]
fn seccomp_false_lets_the_same_call_through() {
    let (code, err) = run("api", &["--seccomp=false"], Duration::from_secs(3));
    assert_eq!(code, None, "tandem should keep running; stderr:\n{err}");
    assert!(err.contains("seccomp: off"), "{err}");
    assert!(
        err.contains("seccomp self-test: the api thread called mount(2) and survived"),
        "{err}"
    );
}

#[test]
fn vmm_and_vcpu_threads_are_refused_too() {
    require_kvm!("vmm_and_vcpu_threads_are_refused_too");
    let (code, err) = run("vmm", &["--seccomp=true"], Duration::from_secs(10));
    assert_eq!(code, Some(159), "{err}");
    assert!(err.contains(SYS_MOUNT), "{err}");
    let (code, err) = run(
        "vcpu",
        &[
            "--seccomp=true",
            "--cpus",
            "1",
            "--memory",
            "64M",
            "--serial",
            "null",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(159), "{err}");
    assert!(
        err.contains("thread 'tandem_vcpu0' made forbidden") && err.contains(SYS_MOUNT),
        "{err}"
    );
}
