//! What the etcd arbiter decides without a server: config checks, the JSON it sends, and that
//! an unreachable cluster is an error, in bounded time. Tests against a real etcd server are in
//! tests/tests/etcd_arbiter.rs.

use super::wire::{Compare, RequestOp, TxnRequest};
use super::*;
use crate::status::Role;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

fn config(endpoints: &[&str]) -> EtcdConfig {
    EtcdConfig {
        endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
        key: "/tandem/pairs/t".into(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        user: None,
        password_file: None,
    }
}

fn open_err(c: &EtcdConfig) -> String {
    let e = EtcdArbiter::open(c).unwrap_err();
    errors::chain(&e)
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn bad_configs_are_refused_before_any_request() {
    let ok = "http://127.0.0.1:2379";
    let cases: Vec<(EtcdConfig, &str)> = vec![
        (config(&[]), "endpoints is empty"),
        (config(&["127.0.0.1:2379"]), "scheme must be http or https"),
        (config(&["ftp://h:1"]), "scheme must be http or https"),
        (config(&["http://u:p@h:1"]), "credentials go in user"),
        (config(&["http://h:1/v3"]), "just scheme://host:port"),
        (config(&[ok, "nonsense url"]), "not a URL"),
        (config(&[ok; 17]), "17 endpoints given"),
        (
            EtcdConfig {
                key: "".into(),
                ..config(&[ok])
            },
            "it is empty",
        ),
        (
            EtcdConfig {
                key: "/tandem/".into(),
                ..config(&[ok])
            },
            "must not end with '/'",
        ),
        (
            EtcdConfig {
                ca_file: Some("/etc/hostname".into()),
                ..config(&[ok])
            },
            "the endpoint is http",
        ),
        (
            EtcdConfig {
                cert_file: Some("/c".into()),
                ..config(&["https://h:1"])
            },
            "cert_file is given without key_file",
        ),
        (
            EtcdConfig {
                user: Some("u".into()),
                ..config(&[ok])
            },
            "user is given without password_file",
        ),
        (
            EtcdConfig {
                password_file: Some("/p".into()),
                ..config(&[ok])
            },
            "password_file is given without user",
        ),
        (
            EtcdConfig {
                user: Some("u".into()),
                password_file: Some("/nonexistent/pw".into()),
                ..config(&[ok])
            },
            "cannot read password_file /nonexistent/pw",
        ),
        (
            EtcdConfig {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..config(&["https://h:1"])
            },
            "cannot read ca_file /nonexistent/ca.pem",
        ),
    ];
    for (c, want) in cases {
        let got = open_err(&c);
        assert!(got.contains(want), "{c:?}: {got}");
    }
}

#[test]
fn password_and_pem_files_are_checked() {
    let dir = std::env::temp_dir().join(format!("tandem-etcd-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = EtcdConfig {
        user: Some("u".into()),
        password_file: Some(pw.clone()),
        ..config(&["http://127.0.0.1:1"])
    };
    assert!(open_err(&c).contains("mode 644"), "{}", open_err(&c));
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let creds = c.credentials().unwrap().unwrap();
    assert_eq!(
        (creds.user.as_str(), creds.password.as_str()),
        ("u", "secret")
    );
    assert!(!format!("{creds:?}").contains("secret"));
    std::fs::write(&pw, "\n").unwrap();
    assert!(open_err(&c).contains("is empty"), "{}", open_err(&c));

    let not_pem = dir.join("ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let c = EtcdConfig {
        ca_file: Some(not_pem),
        ..config(&["https://127.0.0.1:1"])
    };
    assert!(
        open_err(&c).contains("holds no certificate"),
        "{}",
        open_err(&c)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn claims_are_one_compare_and_swap_transaction() {
    let l = layout::Layout::new("/p");
    let rec = l.generation(5);
    let above = l.generation(6);
    let t = TxnRequest {
        compare: vec![Compare::absent(&rec), Compare::none_in(&above, &l.end())],
        success: vec![RequestOp::put(&rec, b"{}")],
        failure: vec![RequestOp::get(&rec), RequestOp::last_in(&above, &l.end())],
    };
    let v = serde_json::to_value(&t).unwrap();
    let b = wire::b64;
    assert_eq!(
        v,
        serde_json::json!({
            "compare": [
                {"key": b(&rec), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
                {"key": b(&above), "range_end": b(b"/p/gen/:"), "target": "CREATE",
                 "result": "EQUAL", "create_revision": "0"},
            ],
            "success": [{"request_put": {"key": b(&rec), "value": b(b"{}")}}],
            "failure": [
                {"request_range": {"key": b(&rec)}},
                {"request_range": {"key": b(&above), "range_end": b(b"/p/gen/:"), "limit": "1",
                                   "sort_order": "DESCEND", "sort_target": "KEY"}},
            ],
        })
    );
}

#[test]
fn answers_parse_with_defaults_omitted() {
    // As etcd 3.4 answers a failed claim: `succeeded` and empty `kvs` are left out.
    let text = r#"{"header":{"revision":"2"},"responses":[{"response_range":{"header":{},
        "kvs":[{"key":"L3AvZ2VuLzAwMDAwMDAwMDAwMDAwMDAwMDA1","create_revision":"2",
        "value":"eyJhIjoxfQ=="}],"count":"1"}},{"response_range":{"header":{}}}]}"#;
    let r: wire::TxnResponse = serde_json::from_str(text).unwrap();
    assert!(!r.succeeded);
    let kv = range(&r, 0).unwrap();
    assert_eq!(kv.key().unwrap(), b"/p/gen/00000000000000000005");
    assert_eq!(kv.value().unwrap(), br#"{"a":1}"#);
    assert!(range(&r, 1).is_none());
    assert!(range(&r, 2).is_none());
}

#[test]
fn an_unreachable_cluster_is_an_error_in_bounded_time() {
    let c = config(&[
        &format!("http://127.0.0.1:{}", closed_port()),
        &format!("http://127.0.0.1:{}", closed_port()),
    ]);
    let client = client::Client::new(&c).unwrap();
    let arbiter = EtcdArbiter {
        client,
        layout: layout::Layout::new(&c.key),
        key: c.key.clone(),
    };
    let t0 = Instant::now();
    let e = arbiter
        .try_acquire(1, &Claim::here(Role::Backup, "test"))
        .unwrap_err();
    assert!(t0.elapsed() < OPERATION_TIMEOUT + Duration::from_secs(1));
    let text = errors::chain(&e);
    assert!(
        text.contains("etcd: no endpoint answered (2 of 2 tried)"),
        "{text}"
    );
    assert!(
        text.contains(&c.endpoints[1]) || text.contains(&c.endpoints[0]),
        "{text}"
    );
    assert!(arbiter.current().is_err());
    assert!(arbiter.identity().is_err());
    assert!(EtcdArbiter::open(&c).is_err());
}
