//! `tandem-remote` against a canned HTTP server: stdout holds only JSON, exit codes are 0/1/2/3.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};

const BIN: &str = env!("CARGO_BIN_EXE_tandem-remote");

fn temp_socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("api.sock");
    let _ = std::fs::remove_file(&path);
    path
}

/// Serves one connection with `response`; sends back the request line and body it got.
fn one_shot(socket: &PathBuf, response: &'static str) -> Receiver<(String, String)> {
    let listener = UnixListener::bind(socket).expect("bind");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut r = BufReader::new(&stream);
        let mut line = String::new();
        r.read_line(&mut line).expect("request line");
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).expect("header");
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).expect("body");
        (&stream).write_all(response.as_bytes()).expect("answer");
        let _ = tx.send((
            line.trim().to_string(),
            String::from_utf8_lossy(&body).into_owned(),
        ));
    });
    rx
}

fn run(socket: &PathBuf, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tandem-remote");
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("wait")
}

#[test]
fn ping_prints_pretty_json_only() {
    let socket = temp_socket("ping");
    let got = one_shot(
        &socket,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1c\r\n{\"version\":\"0.1.0\",\"pid\":42}\r\n0\r\n\r\n",
    );
    let out = run(&socket, &["ping"], "");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["pid"], 42);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\n  \"pid\""),
        "pretty"
    );
    assert!(out.stderr.is_empty());
    assert_eq!(
        got.recv().expect("request").0,
        "GET /api/v1/vmm.ping HTTP/1.1"
    );
}

#[test]
fn api_error_exits_1_with_chain_on_stderr() {
    let socket = temp_socket("error");
    let _got = one_shot(
        &socket,
        "HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: 44\r\n\r\n{\"error\":[\"cannot boot\",\"VM is Running\"]}   ",
    );
    let out = run(&socket, &["boot"], "");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).expect("stderr is JSON");
    assert_eq!(v["status"], 409);
    assert_eq!(
        v["error"],
        serde_json::json!(["cannot boot", "VM is Running"])
    );
}

#[test]
fn create_from_stdin_sends_the_json() {
    let socket = temp_socket("create");
    let got = one_shot(&socket, "HTTP/1.1 204 No Content\r\n\r\n");
    let out = run(&socket, &["create", "-"], r#"{"cpus":{"boot_vcpus":3}}"#);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty(), "204 prints nothing");
    let (line, body) = got.recv().expect("request");
    assert_eq!(line, "PUT /api/v1/vm.create HTTP/1.1");
    let v: serde_json::Value = serde_json::from_str(&body).expect("body JSON");
    assert_eq!(v["cpus"]["boot_vcpus"], 3);
}

#[test]
fn create_from_flags_sends_absolute_paths() {
    let socket = temp_socket("flags");
    let got = one_shot(&socket, "HTTP/1.1 204 No Content\r\n\r\n");
    let out = run(
        &socket,
        &[
            "create",
            "--cpus",
            "2",
            "--memory",
            "512M",
            "--kernel",
            "vmlinux",
            "--serial-mode",
            "tty",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&got.recv().expect("request").1).expect("JSON");
    assert_eq!(v["memory"]["size"], 512u64 << 20);
    assert_eq!(v["serial"]["mode"], "Tty");
    assert!(v["payload"]["kernel"]
        .as_str()
        .expect("kernel")
        .starts_with('/'));
}

#[test]
fn no_server_exits_3() {
    let socket = temp_socket("none");
    let out = run(&socket, &["info"], "");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn garbage_answer_exits_3() {
    let socket = temp_socket("garbage");
    let _got = one_shot(&socket, "SSH-2.0-OpenSSH_9.2\r\n");
    let out = run(&socket, &["counters"], "");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(out.stdout.is_empty());
}

#[test]
fn usage_errors_exit_2() {
    let socket = temp_socket("usage");
    for args in [
        &[][..],
        &["frobnicate"],
        &["create", "--memory", "12X"],
        &["create", "/no/such.json"],
    ] {
        let out = run(&socket, args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
