//! `tandem-remote ft-status --watch` against real `tandem` processes: piped, it prints one line
//! per refresh that follows the pair; Ctrl-C (SIGINT) stops it cleanly; a VMM that goes away ends
//! it with a non-zero exit and the reason.

use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tandem_tests::pair::{LocalPair, PAIR_TIMEOUT};
use tandem_tests::{require, tandem_remote_bin};

fn watch(socket: &std::path::Path) -> std::process::Child {
    Command::new(tandem_remote_bin())
        .arg("--api-socket")
        .arg(socket)
        .args(["ft-status", "--watch", "--interval", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tandem-remote")
}

/// The number after `key=` in a watch line.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}

fn wait_exit(c: &mut std::process::Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = c.try_wait().expect("try_wait") {
            return s;
        }
        assert!(start.elapsed() < PAIR_TIMEOUT, "the watch did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ft_status_watch_follows_a_pair_stops_on_ctrl_c_and_fails_when_the_vmm_goes() {
    require!(kvm);
    let mut pair = LocalPair::start("ftwatch", &[]);
    pair.protect(json!({"checkpoint_interval_ms": 50}));

    let mut w = watch(&pair.p.socket);
    let mut lines = BufReader::new(w.stdout.take().expect("stdout")).lines();
    let mut seen: Vec<String> = Vec::new();
    // One line per refresh; the checkpoint count moves between them.
    while seen.len() < 2
        || field(&seen[0], "checkpoints") >= field(seen.last().unwrap(), "checkpoints")
    {
        let l = lines.next().expect("a line per refresh").expect("utf-8");
        assert!(
            l.contains("role=primary state=protected"),
            "{l}\nall: {seen:?}"
        );
        assert!(!l.contains('\x1b'), "no terminal codes into a pipe: {l:?}");
        seen.push(l);
        assert!(seen.len() < 600, "checkpoints never moved: {seen:?}");
    }
    eprintln!("[ftwatch] {}", seen.last().unwrap());
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(w.id() as i32, libc::SIGINT) }, 0);
    let st = wait_exit(&mut w);
    assert!(st.success(), "Ctrl-C is a clean stop: {st:?}");

    // The backup's VMM dies under a watch: it exits non-zero and says why.
    let mut w = watch(&pair.b.socket);
    let mut lines = BufReader::new(w.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a first line").expect("utf-8");
    assert!(first.contains("role=backup"), "{first}");
    pair.b.child.kill().expect("SIGKILL the backup");
    pair.b.wait_exit(PAIR_TIMEOUT);
    for l in lines {
        l.expect("utf-8");
    }
    let st = wait_exit(&mut w);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut w.stderr.take().expect("stderr"), &mut err).unwrap();
    assert_eq!(st.code(), Some(3), "{err}");
    assert!(err.contains("stopped answering"), "{err}");
}
