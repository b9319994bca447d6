//! The real API server on a temporary socket, a fake VMM thread behind it, the real client in front.

use api_client::{ApiClient, ClientError};
use serde_json::{json, Value};
use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm::api::{start_server, start_server_with_timeout, ApiError, ApiRequest};
use vmm::controller::VmmEvent;

/// A fresh directory for one test's socket.
fn temp_socket() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tandem-api-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("api.sock")
}

/// A chained error, as the real VMM would produce for a kernel it cannot load.
#[derive(Debug, thiserror::Error)]
#[error("cannot boot the VM")]
struct BootError(#[source] NotAKernel);
#[derive(Debug, thiserror::Error)]
#[error("not a kernel image")]
struct NotAKernel;

/// Answers like a VMM with canned results until `vmm.shutdown`.
fn fake_vmm(rx: Receiver<VmmEvent>) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut config: Option<Value> = None;
        while let Ok(ev) = rx.recv() {
            let VmmEvent::Api(req, tx) = ev else { continue };
            seen.push(
                format!("{req:?}")
                    .split('(')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
            let stop = matches!(req, ApiRequest::VmmShutdown);
            let answer = match req {
                ApiRequest::VmmPing => {
                    Ok(Some(json!({"version": "0.1.0", "pid": std::process::id()})))
                }
                ApiRequest::VmCreate(c) => {
                    config = serde_json::to_value(&*c).ok();
                    Ok(None)
                }
                ApiRequest::VmInfo => match &config {
                    Some(c) => Ok(Some(json!({"config": c, "state": "Created"}))),
                    None => Err(ApiError::new(404, "no VM has been created")),
                },
                ApiRequest::VmBoot => Err(ApiError::from_error(400, &BootError(NotAKernel))),
                ApiRequest::VmCounters => Ok(Some(json!({"serial": {"tx_bytes": 3}}))),
                _ => Ok(None),
            };
            let _ = tx.send(answer);
            if stop {
                break;
            }
        }
        seen
    })
}

fn api_error(e: ClientError) -> (u16, Vec<String>) {
    match e {
        ClientError::Api { status, error } => (status, error),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn raw_exchange(socket: &Path, request: &[u8]) -> api_client::http::RawResponse {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(request);
    api_client::http::read_response(&mut BufReader::new(&s)).expect("a response")
}

#[test]
fn every_endpoint_round_trips() {
    let socket = temp_socket();
    let (tx, rx) = channel();
    let vmm = fake_vmm(rx);
    let server = start_server(&socket, tx, None).expect("start");
    let c = ApiClient::new(&socket);

    assert_eq!(c.ping().expect("ping")["pid"], json!(std::process::id()));
    let (status, err) = api_error(c.info().unwrap_err());
    assert_eq!(
        (status, err),
        (404, vec!["no VM has been created".to_string()])
    );
    c.create(&json!({"cpus": {"boot_vcpus": 2}, "memory": {"size": 64 << 20}}))
        .expect("create");
    let info = c.info().expect("info");
    assert_eq!(info["state"], "Created");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2);
    let (status, chain) = api_error(c.boot().unwrap_err());
    assert_eq!(status, 400);
    assert_eq!(chain, ["cannot boot the VM", "not a kernel image"]);
    c.pause().expect("pause");
    c.resume().expect("resume");
    c.reboot().expect("reboot");
    c.shutdown().expect("shutdown");
    assert_eq!(c.counters().expect("counters")["serial"]["tx_bytes"], 3);
    c.delete().expect("delete");

    // 204s carry no body; the raw answer says so.
    let r = c.put("vm.pause", None).expect("pause");
    assert_eq!((r.status, r.body), (204, None));
    let r = c.get("vmm.ping").expect("ping");
    assert_eq!(r.header("Content-Type"), Some("application/json"));

    c.shutdown_vmm().expect("shutdown vmm");
    server.join().expect("server ends cleanly");
    assert!(!socket.exists(), "socket removed after vmm.shutdown");
    let seen = vmm.join().expect("fake vmm");
    assert_eq!(seen.first().map(String::as_str), Some("VmmPing"));
    assert_eq!(seen.last().map(String::as_str), Some("VmmShutdown"));
    assert!(matches!(c.ping(), Err(ClientError::Connect { .. })));
}

#[test]
fn bad_requests_get_json_errors() {
    let socket = temp_socket();
    let (tx, rx) = channel();
    let vmm = fake_vmm(rx);
    let server = start_server(&socket, tx, None).expect("start");
    let c = ApiClient::new(&socket);

    let r = c.get("/api/v1/nope").expect("answer");
    assert_eq!(r.status, 404);
    assert!(r.body.as_ref().unwrap()["error"][0]
        .as_str()
        .unwrap()
        .contains("nope"));
    let r = c.get("/").expect("answer");
    assert_eq!(r.status, 404);

    let r = c.put("vmm.ping", None).expect("answer");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET"));
    let r = c.request("POST", "vm.create", None).expect("answer");
    assert_eq!((r.status, r.header("Allow")), (405, Some("PUT")));

    // (body, text the error chain must contain)
    let big = format!("{{\"cpus\":{{\"boot_vcpus\":1}}{}}}", " ".repeat(70 << 10));
    let cases: &[(&[u8], &str)] = &[
        (b"", "needs a JSON body"),
        (b"{", "EOF"),
        (br#"{"foo": 1}"#, "unknown field `foo`"),
        (br#"{"cpus": {"boot_vcpus": "two"}}"#, "invalid type"),
        (
            br#"{"cpus": {"boot_vcpus": 0}}"#,
            "boot_vcpus must be between 1",
        ),
        (br#"{"memory": {"size": 1024}}"#, "at least"),
        (
            br#"{"memory": {"size": 33558528000000}}"#,
            "more than this host allows",
        ),
        (br#"{"memory": {"size": 33554433}}"#, "multiple of 4096"),
        (
            br#"{"payload": {"kernel": "/no/such/vmlinux"}}"#,
            "does not exist",
        ),
        (br#"{"serial": {"mode": "File"}}"#, "needs serial.file"),
        (b"\xff\xfe", "UTF-8"),
        (big.as_bytes(), "limit is 65536"),
    ];
    for (body, text) in cases {
        let r = c.request("PUT", "vm.create", Some(body)).expect("answer");
        let what = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        assert_eq!(r.status, 400, "{what}");
        let (_, chain) = api_error(r.into_result().unwrap_err());
        assert!(chain.join(": ").contains(text), "{what}: {chain:?}");
    }
    let r = c.request("PUT", "vm.boot", Some(b"{}")).expect("answer");
    assert_eq!(r.status, 400);
    assert!(
        c.request("PUT", "vm.boot", Some(b""))
            .expect("answer")
            .status
            >= 400
    ); // fake boot fails
    assert!(c.ping().is_ok(), "server still serves");

    c.shutdown_vmm().expect("shutdown");
    server.join().expect("join");
    vmm.join().expect("vmm");
}

#[test]
fn hostile_framing_does_not_kill_the_server() {
    let socket = temp_socket();
    let (tx, rx) = channel();
    let vmm = fake_vmm(rx);
    let server = start_server(&socket, tx, None).expect("start");
    let c = ApiClient::new(&socket);

    // A declared length tiny_http would try to allocate while draining.
    for len in ["1000000000000000", "18446744073709551615", "2000000"] {
        let req =
            format!("PUT /api/v1/vm.create HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n{{");
        let r = raw_exchange(&socket, req.as_bytes());
        assert_eq!(r.status, 400, "Content-Length {len}");
        let body: Value = serde_json::from_slice(&r.body).expect("JSON error");
        assert!(
            body["error"][0].as_str().unwrap().contains("limit"),
            "{body}"
        );
    }
    // A chunked body that never ends within the limit.
    let mut req = b"PUT /api/v1/vm.create HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..80 {
        req.extend_from_slice(format!("400\r\n{}\r\n", " ".repeat(1024)).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw_exchange(&socket, &req).status, 400);
    // Garbage instead of HTTP: tiny_http answers or hangs up, the server lives on.
    for junk in [
        &b"\x00\x01\x02\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /api/v1/vmm.ping HTTP/9.9\r\n\r\n",
    ] {
        let mut s = UnixStream::connect(&socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(junk);
        let _ = api_client::http::read_response(&mut BufReader::new(&s));
    }
    assert!(c.ping().is_ok(), "server still serves");
    c.shutdown_vmm().expect("shutdown");
    server.join().expect("join");
    vmm.join().expect("vmm");
}

#[test]
fn socket_is_private_and_stale_ones_are_replaced() {
    let socket = temp_socket();
    // A socket left behind by a dead process: nobody answers on it.
    drop(UnixListener::bind(&socket).expect("stale socket"));
    assert!(socket.exists());
    let (tx, rx) = channel();
    let vmm = fake_vmm(rx);
    let server = start_server(&socket, tx, None).expect("stale socket replaced");
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(server.socket_path(), socket);

    // A second server on the same path is refused by the lock, and the first one is untouched.
    let (tx2, _rx2) = channel();
    let err = start_server(&socket, tx2, None).unwrap_err();
    let chain = errors::chain(&err);
    assert!(chain.contains("another VMM owns"), "{chain}");
    assert!(ApiClient::new(&socket).ping().is_ok());

    server.stop().expect("stop");
    assert!(!socket.exists(), "socket removed on stop");
    // The lock went with the server: the path can be taken again.
    let (tx3, rx3) = channel();
    let vmm3 = fake_vmm(rx3);
    let again = start_server(&socket, tx3, None).expect("path free after stop");
    again.stop().expect("stop");
    drop(vmm);
    drop(vmm3);
}

#[test]
fn other_files_are_never_replaced() {
    let socket = temp_socket();
    std::fs::write(&socket, b"precious").expect("file");
    let (tx, _rx) = channel();
    let err = start_server(&socket, tx, None).unwrap_err();
    assert!(errors::chain(&err).contains("not a socket"));
    assert_eq!(std::fs::read(&socket).expect("still there"), b"precious");
}

#[test]
fn slow_vmm_gets_504_and_gone_vmm_503() {
    let socket = temp_socket();
    let (tx, rx) = channel::<VmmEvent>();
    let (release_tx, release_rx) = channel::<()>();
    // Holds the first request unanswered until released, then drops it and the receiver.
    let held = std::thread::spawn(move || {
        let first = rx.recv();
        let _ = release_rx.recv();
        drop(first);
    });
    let server =
        start_server_with_timeout(&socket, tx, None, Duration::from_millis(200)).expect("start");
    let c = ApiClient::new(&socket);
    let (status, chain) = api_error(c.ping().unwrap_err());
    assert_eq!(status, 504);
    assert!(chain[0].contains("did not answer"), "{chain:?}");
    release_tx.send(()).expect("release");
    held.join().expect("holder");
    // The receiver is gone now: the server says so and stops.
    let (status, _) = api_error(c.ping().unwrap_err());
    assert_eq!(status, 503);
    server.join().expect("join");
    assert!(!socket.exists());
}

/// Issue 10 item 5: reads answer from the VMM's published view while the VMM thread is busy
/// with a slow call (here: never answers at all).
#[test]
fn reads_never_wait_behind_a_slow_call() {
    let socket = temp_socket();
    let (tx, rx) = channel::<VmmEvent>();
    let (view_tx, _view_rx) = channel::<VmmEvent>();
    let view = vmm::controller::Vmm::new(view_tx, false).view();
    let server =
        start_server_with_timeout(&socket, tx, Some(view), Duration::from_secs(3)).expect("start");
    let slow = {
        let socket = socket.clone();
        std::thread::spawn(move || ApiClient::new(&socket).pause())
    };
    // The pause reaches the VMM thread, which sits on it.
    let held = rx.recv_timeout(Duration::from_secs(10)).expect("the pause");
    let c = ApiClient::new(&socket);
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let metrics = raw_exchange(&socket, b"GET /api/v1/metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(metrics.status, 200);
        assert_eq!(c.get("ft.status").expect("ft.status").status, 200);
        assert_eq!(api_error(c.info().unwrap_err()).0, 404);
        assert_eq!(c.ping().expect("ping")["pid"], json!(std::process::id()));
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(250),
            "four reads took {took:?} while a call was pending"
        );
    }
    let (status, _) = api_error(slow.join().expect("slow caller").unwrap_err());
    assert_eq!(status, 504, "the pause itself still times out");
    drop(held);
    drop(rx);
    server.stop().expect("stop");
}
