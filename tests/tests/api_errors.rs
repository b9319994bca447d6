//! Bad input through the real API socket gets a 4xx with a JSON body naming the problem, and the
//! VMM goes on serving. Table-driven; each row runs against the same live `tandem` process.

use serde_json::{json, Value};
use tandem_tests::{require, Tandem};

struct Case {
    what: &'static str,
    method: &'static str,
    endpoint: &'static str,
    body: Option<Value>,
    raw: Option<&'static str>,
    status: u16,
    says: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    endpoint: &'static str,
    body: Option<Value>,
    status: u16,
    says: &'static str,
) -> Case {
    Case {
        what,
        method,
        endpoint,
        body,
        raw: None,
        status,
        says,
    }
}

fn run(t: &Tandem, c: &Case) {
    let client = t.client();
    let r = match (c.method, c.raw) {
        (m, Some(raw)) => client.request(m, c.endpoint, Some(raw.as_bytes())),
        ("GET", None) => client.get(c.endpoint),
        (_, None) => client.put(c.endpoint, c.body.as_ref()),
    }
    .unwrap_or_else(|e| panic!("{}: transport error {e}", c.what));
    let body = r.body.clone().unwrap_or(Value::Null);
    assert_eq!(r.status, c.status, "{}: got {} {body}", c.what, r.status);
    let errors = body["error"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no error array in {body}", c.what));
    let text = errors
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        text.contains(c.says),
        "{}: error {text:?} does not mention {:?}",
        c.what,
        c.says
    );
}

#[test]
fn bad_requests_get_clear_4xx_errors() {
    require!(kvm);
    let t = Tandem::start("api-errors");
    let not_a_kernel = t.dir.path("not-a-kernel");
    std::fs::write(&not_a_kernel, b"#!/bin/sh\necho this is not a kernel\n").unwrap();
    let cfg = |v: Value| Some(v);

    let cases = vec![
        case("boot before create", "PUT", "vm.boot", None, 404, "no VM"),
        case("info before create", "GET", "vm.info", None, 404, "no VM"),
        case("pause before create", "PUT", "vm.pause", None, 404, "no VM"),
        Case {
            raw: Some("{\"cpus\": "),
            ..case("malformed JSON", "PUT", "vm.create", None, 400, "")
        },
        case(
            "unknown field",
            "PUT",
            "vm.create",
            cfg(json!({"cpus": {"boot_vcpus": 1}, "bogus": 1})),
            400,
            "unknown field",
        ),
        case(
            "wrong type",
            "PUT",
            "vm.create",
            cfg(json!({"cpus": {"boot_vcpus": "two"}})),
            400,
            "",
        ),
        case(
            "zero vCPUs",
            "PUT",
            "vm.create",
            cfg(json!({"cpus": {"boot_vcpus": 0}})),
            400,
            "boot_vcpus",
        ),
        case(
            "memory too small",
            "PUT",
            "vm.create",
            cfg(json!({"memory": {"size": 1 << 20}})),
            400,
            "at least",
        ),
        case(
            "memory larger than the host",
            "PUT",
            "vm.create",
            cfg(json!({"memory": {"size": 1u64 << 50}})),
            400,
            "more than this host allows",
        ),
        case(
            "kernel that does not exist",
            "PUT",
            "vm.create",
            cfg(json!({"payload": {"kernel": "/nonexistent/vmlinux"}})),
            400,
            "does not exist",
        ),
        case(
            "serial file mode without a file",
            "PUT",
            "vm.create",
            cfg(json!({"serial": {"mode": "File"}})),
            400,
            "serial.file",
        ),
        case("unknown endpoint", "GET", "vm.nope", None, 404, ""),
        case("wrong method", "GET", "vm.pause", None, 405, ""),
    ];
    for c in &cases {
        run(&t, c);
    }

    // A file that exists but is no kernel is refused at boot, and the VM stays Created.
    t.put_ok(
        "vm.create",
        Some(&json!({"payload": {"kernel": not_a_kernel}, "memory": {"size": 64 << 20}})),
    );
    let state_cases = vec![
        case("not a kernel", "PUT", "vm.boot", None, 400, "not a kernel"),
        case("pause before boot", "PUT", "vm.pause", None, 409, "Created"),
        case(
            "resume before boot",
            "PUT",
            "vm.resume",
            None,
            409,
            "Created",
        ),
        case(
            "shutdown before boot",
            "PUT",
            "vm.shutdown",
            None,
            409,
            "Created",
        ),
        case(
            "create twice",
            "PUT",
            "vm.create",
            cfg(json!({})),
            409,
            "already",
        ),
    ];
    for c in &state_cases {
        run(&t, c);
    }
    assert_eq!(t.state(), "Created");
    // Still serving.
    assert_eq!(t.get("vmm.ping").0, 200);
}

#[test]
fn a_second_vmm_on_the_same_socket_is_refused() {
    require!(kvm);
    let t = Tandem::start("two-vmms");
    let out = std::process::Command::new(tandem_tests::tandem_bin())
        .arg("--api-socket")
        .arg(&t.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another VMM owns"), "{err}");
    // The first one still serves, its socket private.
    assert_eq!(t.get("vmm.ping").0, 200);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&t.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
