//! Table tests for the route parser: every endpoint and every way a request can be wrong.

use super::*;

const LIMIT: u64 = 1 << 30;

/// A file that exists, to stand in for a kernel.
fn kernel_file() -> String {
    let dir = std::env::temp_dir().join(format!("tandem-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("vmlinux");
    std::fs::write(&path, b"not really a kernel").expect("temp kernel");
    path.display().to_string()
}

fn parse(method: &str, name: &str, body: &str) -> Result<ApiRequest, RouteError> {
    parse_request(method, &format!("/api/v1/{name}"), body.as_bytes(), LIMIT)
}

#[test]
fn every_endpoint_parses() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("GET", "vmm.ping", "", "VmmPing"),
        ("PUT", "vmm.shutdown", "", "VmmShutdown"),
        ("PUT", "vm.create", "{}", "VmCreate"),
        ("PUT", "vm.boot", "", "VmBoot"),
        ("GET", "vm.info", "", "VmInfo"),
        ("PUT", "vm.pause", "", "VmPause"),
        ("PUT", "vm.resume", "", "VmResume"),
        ("PUT", "vm.shutdown", "", "VmShutdown"),
        ("PUT", "vm.reboot", "", "VmReboot"),
        ("PUT", "vm.delete", " \r\n", "VmDelete"),
        ("GET", "vm.counters", "", "VmCounters"),
        ("GET", "metrics", "", "Metrics"),
        (
            "PUT",
            "vm.snapshot",
            r#"{"destination_url":"file:///tmp/s"}"#,
            "VmSnapshot",
        ),
        (
            "PUT",
            "vm.restore",
            r#"{"source_url":"file:///tmp/s"}"#,
            "VmRestore",
        ),
        (
            "PUT",
            "vm.send-migration",
            r#"{"destination_url":"tcp:10.99.0.2:7500"}"#,
            "VmSendMigration",
        ),
        (
            "PUT",
            "vm.receive-migration",
            r#"{"receiver_url":"tcp:10.99.0.2:7500","serial":{"mode":"Null"}}"#,
            "VmReceiveMigration",
        ),
        (
            "PUT",
            "ft.receive",
            r#"{"listen":"tcp:10.99.0.2:7600","arbiter":{"path":"/a"},"disks":[{"id":"d0","path":"/d"}],"net":[{"id":"n0","tap":"tap0"}]}"#,
            "FtReceive",
        ),
        (
            "PUT",
            "ft.enable",
            r#"{"peer":"tcp:10.99.0.2:7600","disk_mode":"shared","arbiter":{"path":"/a"},"failure_timeout_ms":500}"#,
            "FtEnable",
        ),
        ("GET", "ft.status", "", "FtStatus"),
        ("PUT", "ft.promote", "", "FtPromote"),
        ("PUT", "ft.disable", "", "FtDisable"),
        ("PUT", "ft.verify", r#"{"timeout_ms":5000}"#, "FtVerify"),
    ];
    assert_eq!(cases.len(), ROUTES.len(), "a route has no test case");
    for (method, name, body, want) in cases {
        let req = parse(method, name, body).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = format!("{req:?}");
        assert!(got.starts_with(want), "{name}: got {got}");
    }
}

#[test]
fn every_route_has_a_request() {
    for r in ROUTES {
        let body = match r.body {
            Body::VmConfig => "{}",
            Body::Snapshot => r#"{"destination_url":"file:///s"}"#,
            Body::Restore => r#"{"source_url":"file:///s"}"#,
            Body::SendMigration => r#"{"destination_url":"tcp:10.0.0.2:7500","downtime_ms":100}"#,
            Body::ReceiveMigration => r#"{"receiver_url":"tcp:0.0.0.0:7500"}"#,
            Body::FtReceive => r#"{"listen":"tcp:0.0.0.0:7600","arbiter":{"path":"/a"}}"#,
            Body::FtEnable => {
                r#"{"peer":"tcp:10.0.0.2:7600","disk_mode":"replicated","arbiter":{"path":"/a"}}"#
            }
            Body::Resume => r#"{"force":true}"#,
            Body::None | Body::FtVerify => "",
        };
        assert!(parse(r.method.as_str(), r.name, body).is_ok(), "{}", r.name);
    }
}

#[test]
fn verify_takes_an_optional_timeout() {
    for (body, want) in [
        ("", None),
        ("  ", None),
        ("{}", None),
        (r#"{"timeout_ms":7}"#, Some(7)),
    ] {
        match parse("PUT", "ft.verify", body) {
            Ok(ApiRequest::FtVerify(c)) => assert_eq!(c.timeout_ms, want, "{body:?}"),
            other => panic!("{body:?}: {other:?}"),
        }
    }
    for bad in [r#"{"timeout":7}"#, r#"{"timeout_ms":-1}"#, "7", "{"] {
        assert!(parse("PUT", "ft.verify", bad).is_err(), "{bad}");
    }
}

#[test]
fn create_fills_the_config() {
    let kernel = kernel_file();
    let body = format!(
        r#"{{"cpus":{{"boot_vcpus":2}},"memory":{{"size":268435456}},
            "payload":{{"kernel":"{kernel}","cmdline":"console=ttyS0"}},
            "serial":{{"mode":"File","file":"/tmp/serial.log"}}}}"#
    );
    match parse("PUT", "vm.create", &body) {
        Ok(ApiRequest::VmCreate(c)) => {
            assert_eq!(c.cpus.boot_vcpus, 2);
            assert_eq!(c.memory.size, 256 << 20);
            assert_eq!(c.payload.cmdline.as_deref(), Some("console=ttyS0"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_requests_are_rejected() {
    let big = format!(
        "{{\"cpus\":{{\"boot_vcpus\":1}}{}}}",
        " ".repeat(MAX_BODY_BYTES)
    );
    // (method, path, body, status, text the error chain must contain)
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "GET",
            "/api/v1/nope",
            String::new(),
            404,
            "no such endpoint",
        ),
        ("GET", "/", String::new(), 404, "no such endpoint"),
        ("GET", "/api/v2/vmm.ping", String::new(), 404, "no such"),
        ("GET", "/api/v1/vmm.ping/x", String::new(), 404, "no such"),
        ("PUT", "/api/v1/vmm.ping", String::new(), 405, "use GET"),
        ("GET", "/api/v1/vm.create", String::new(), 405, "use PUT"),
        ("POST", "/api/v1/vm.boot", String::new(), 405, "use PUT"),
        ("DELETE", "/api/v1/vm.info", String::new(), 405, "use GET"),
        (
            "PUT",
            "/api/v1/vm.create",
            String::new(),
            400,
            "needs a JSON body",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            "  ".into(),
            400,
            "needs a JSON body",
        ),
        ("PUT", "/api/v1/vm.create", "{".into(), 400, "EOF"),
        (
            "PUT",
            "/api/v1/vm.create",
            "[1,2]".into(),
            400,
            "invalid JSON",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            "null".into(),
            400,
            "invalid JSON",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"foo":1}"#.into(),
            400,
            "unknown field `foo`",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"cpus":{"x":1}}"#.into(),
            400,
            "unknown field `x`",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"cpus":{"boot_vcpus":"2"}}"#.into(),
            400,
            "invalid type",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"cpus":{"boot_vcpus":-1}}"#.into(),
            400,
            "invalid value",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"cpus":{"boot_vcpus":300}}"#.into(),
            400,
            "invalid value",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"memory":{"size":1.5}}"#.into(),
            400,
            "invalid type",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"serial":{"mode":"Pty"}}"#.into(),
            400,
            "unknown variant",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{} {}"#.into(),
            400,
            "trailing characters",
        ),
        ("PUT", "/api/v1/vm.create", big, 400, "limit is 65536"),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"cpus":{"boot_vcpus":0}}"#.into(),
            400,
            "boot_vcpus must be between 1",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"cpus":{"boot_vcpus":65}}"#.into(),
            400,
            "boot_vcpus must be between 1",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"memory":{"size":4096}}"#.into(),
            400,
            "must be at least",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"memory":{"size":2147483648}}"#.into(),
            400,
            "more than this host allows",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"memory":{"size":33554433}}"#.into(),
            400,
            "multiple of 4096",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"payload":{"kernel":"/nonexistent/vmlinux"}}"#.into(),
            400,
            "does not exist",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"payload":{"kernel":"/"}}"#.into(),
            400,
            "payload.kernel",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"payload":{"initramfs":"/etc/hostname"}}"#.into(),
            400,
            "needs payload.kernel",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"serial":{"mode":"File"}}"#.into(),
            400,
            "needs serial.file",
        ),
        (
            "PUT",
            "/api/v1/vm.create",
            r#"{"serial":{"mode":"Tty","file":"/x"}}"#.into(),
            400,
            "only valid with",
        ),
        ("PUT", "/api/v1/vm.boot", "{}".into(), 400, "takes no body"),
        (
            "PUT",
            "/api/v1/vm.resume",
            r#"{"force":1}"#.into(),
            400,
            "invalid type",
        ),
        (
            "PUT",
            "/api/v1/vm.resume",
            r#"{"forced":true}"#.into(),
            400,
            "unknown field",
        ),
        ("GET", "/api/v1/vmm.ping", "x".into(), 400, "takes no body"),
    ];
    for (method, path, body, status, text) in cases {
        let err = match parse_request(method, path, body.as_bytes(), LIMIT) {
            Ok(req) => panic!("{method} {path} {body:.60}: accepted as {req:?}"),
            Err(e) => e,
        };
        let api = err.to_api_error();
        assert_eq!(api.status, status, "{method} {path} {body:.60}: {api:?}");
        let chain = api.error.join(": ");
        assert!(chain.contains(text), "{method} {path} {body:.60}: {chain}");
    }
}

#[test]
fn resume_takes_an_optional_force_flag() {
    for (body, want) in [
        ("", "VmResume"),
        ("{}", "VmResume"),
        (r#"{"force":false}"#, "VmResume"),
        (r#"{"force":true}"#, "VmResumeForced"),
    ] {
        let req = parse("PUT", "vm.resume", body).unwrap();
        assert_eq!(format!("{req:?}"), want, "{body}");
    }
}

#[test]
fn non_utf8_body_is_rejected() {
    let err = parse_request("PUT", "/api/v1/vm.create", &[0xff, 0xfe], LIMIT).unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(err.to_string().contains("UTF-8"));
}

#[test]
fn method_not_allowed_names_allow() {
    let err = parse_request("PUT", "/api/v1/vm.info", b"", LIMIT).unwrap_err();
    assert_eq!(err.allow(), Some("GET"));
    assert_eq!(parse("GET", "vm.info", "").ok().map(|_| ()), Some(()));
}

#[test]
fn query_string_is_ignored() {
    assert!(parse_request("GET", "/api/v1/vmm.ping?x=1", b"", LIMIT).is_ok());
}

#[test]
fn long_paths_are_shortened_in_errors() {
    let path = format!("/api/v1/{}", "é".repeat(10_000));
    let err = parse_request("GET", &path, b"", LIMIT).unwrap_err();
    assert!(err.to_string().len() < 600);
}

#[test]
fn kernel_that_exists_is_accepted() {
    let body = format!(r#"{{"payload":{{"kernel":"{}"}}}}"#, kernel_file());
    assert!(parse("PUT", "vm.create", &body).is_ok());
}

#[test]
fn restore_takes_overrides_and_refuses_unknown_fields() {
    let body = r#"{"source_url":"file:///s","resume":true,
        "net":[{"id":"n0","tap":"tap9"}],"disks":[{"id":"d0","path":"/img"}],
        "serial":{"mode":"File","file":"/tmp/c"}}"#;
    match parse("PUT", "vm.restore", body) {
        Ok(ApiRequest::VmRestore(c)) => {
            assert!(c.request.resume);
            assert_eq!(c.host.net[0].tap, "tap9");
            assert_eq!(c.host.disks[0].path, std::path::PathBuf::from("/img"));
            assert!(c.host.serial.is_some());
        }
        other => panic!("{other:?}"),
    }
    for bad in [
        r#"{"source_url":"file:///s","bogus":1}"#,
        r#"{"resume":true}"#,
        "",
    ] {
        let e = parse("PUT", "vm.restore", bad).unwrap_err();
        assert_eq!(e.status(), 400, "{bad}");
    }
    let e = parse("PUT", "vm.snapshot", r#"{"destination":"x"}"#).unwrap_err();
    assert_eq!(e.status(), 400);
}
