//! Prometheus metrics from a real `tandem`, over its API socket and over TCP, parsed by a real
//! Prometheus text parser.

use std::io::{Read, Write};
use std::time::Duration;
use tandem_tests::{require, Tandem};

/// GET `path` with HTTP/1.0 over any stream; returns (status line, content type, body).
fn get(mut s: impl Read + Write, path: &str) -> (String, String, String) {
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

fn parse(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition")
}

fn value(scrape: &prometheus_parse::Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .sum()
}

#[test]
fn metrics_parse_and_follow_the_vm() {
    require!(kvm);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let t = Tandem::start_with_args("metrics", &["--metrics-listen", &addr]);
    t.boot_builtin(2, 64, "workload=compute");
    t.serial()
        .wait_count("tandem-guest: compute", 2, Duration::from_secs(30));

    let unix = std::os::unix::net::UnixStream::connect(&t.socket).unwrap();
    let (status, ctype, body) = get(unix, "/api/v1/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let s = parse(&body);
    assert_eq!(
        value(&s, "tandem_vm_state", Some(("state", "Running"))),
        1.0,
        "{body}"
    );
    assert_eq!(value(&s, "tandem_vm_state", Some(("state", "Paused"))), 0.0);
    assert_eq!(value(&s, "tandem_vm_vcpus", None), 2.0);
    assert!(
        value(&s, "tandem_vcpu_io_exits_total", Some(("vcpu", "1"))) > 0.0,
        "{body}"
    );
    assert!(value(&s, "tandem_serial_tx_bytes_total", None) > 0.0);
    for sample in &s.samples {
        assert!(
            tandem_tests::is_exported_series(&sample.metric),
            "{} is exported but not in METRIC_FAMILIES",
            sample.metric
        );
    }

    // Over TCP too, and the state follows the VM.
    t.put_ok("vm.pause", None);
    let tcp = std::net::TcpStream::connect(&addr).unwrap();
    let (status, _, body) = get(tcp, "/metrics");
    assert!(status.contains("200"), "{status}");
    let s = parse(&body);
    assert_eq!(
        value(&s, "tandem_vm_state", Some(("state", "Paused"))),
        1.0,
        "{body}"
    );
    let tcp = std::net::TcpStream::connect(&addr).unwrap();
    assert!(get(tcp, "/other").0.contains("404"));
}
