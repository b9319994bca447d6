//! A real Prometheus (Debian's package) scraping real `tandem` processes: every query of the
//! Grafana dashboard returns data, and the shipped alert rules (resources/prometheus/alerts.yml)
//! pass `promtool check rules` and their unit tests, and fire on a real pair when its backup
//! stalls and dies and when its primary is killed.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tandem_tests::metrics::free_port;
use tandem_tests::pair::wait_ft;
use tandem_tests::prometheus::{alert_rules_path, Labels, Prometheus};
use tandem_tests::{dashboard, require_kvm_and_netns, require_prometheus, Tandem, TempDir};

/// Any wait in these tests.
const T: Duration = Duration::from_secs(90);

fn promtool(args: &[&str]) -> String {
    let dir = alert_rules_path()
        .parent()
        .map(|p| p.to_path_buf())
        .expect("rules folder");
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{text}",
        out.status
    );
    text
}

/// The shipped rules' alerts: (name, rule as YAML).
fn shipped_alerts() -> Vec<(String, serde_yaml::Value)> {
    let text = std::fs::read_to_string(alert_rules_path()).expect("read alerts.yml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("alerts.yml is YAML");
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_string();
            out.push((name, rule.clone()));
        }
    }
    out
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    require_prometheus!("alert_rules_pass_promtool_check_and_their_unit_tests");
    let check = promtool(&["check", "rules", "alerts.yml"]);
    assert!(check.contains("SUCCESS"), "{check}");
    // Production `for:` durations, in virtual time.
    let unit = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(unit.contains("SUCCESS"), "{unit}");

    let tests = std::fs::read_to_string(alert_rules_path().with_file_name("alerts_test.yml"))
        .expect("read alerts_test.yml");
    let alerts = shipped_alerts();
    for wanted in [
        "TandemPairUnprotected",
        "TandemAckAgeHigh",
        "TandemBacklogHigh",
        "TandemFailoverHappened",
        "TandemMemberHalted",
        "TandemVmmDown",
    ] {
        assert!(alerts.iter().any(|(n, _)| n == wanted), "no {wanted} alert");
    }
    for (name, rule) in &alerts {
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for a in ["summary", "description"] {
            assert!(rule["annotations"][a].is_string(), "{name}: no {a}");
        }
        assert!(rule["for"].is_string(), "{name}: no `for:`");
        // A firing and a quiet case each.
        assert!(
            tests.matches(&format!("alertname: {name}\n")).count() >= 2,
            "alerts_test.yml does not test {name} both ways"
        );
    }
}

/// alerts.yml with every `for:` cut to 1 s, so that the live test takes seconds, not minutes.
/// The expressions and thresholds are the shipped ones; the durations have promtool's tests.
fn rules_for_test() -> String {
    let text = std::fs::read_to_string(alert_rules_path()).expect("read alerts.yml");
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("alerts.yml is YAML");
    for group in doc["groups"].as_sequence_mut().expect("groups") {
        for rule in group["rules"].as_sequence_mut().expect("rules") {
            rule["for"] = serde_yaml::Value::from("1s");
        }
    }
    serde_yaml::to_string(&doc).expect("YAML")
}

/// The `$instance` Grafana sends for "All" of a multi-value variable: an alternation of the
/// regex-escaped values, escaped again for a PromQL string.
fn grafana_all(instances: &[&str]) -> String {
    let escaped: Vec<String> = instances.iter().map(|i| i.replace('.', "\\\\.")).collect();
    format!("({})", escaped.join("|"))
}

/// Whether any sample of an instant query's result is a finite number.
fn has_finite(result: &[Value]) -> bool {
    result.iter().any(|r| {
        r["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

/// Waits until every query in `queries` has a finite number; fails listing those without.
fn wait_all_have_data(prom: &Prometheus, queries: &[String], started: Instant) {
    let mut empty = queries.to_vec();
    while !empty.is_empty() {
        empty.retain(|q| !has_finite(&prom.query(q)));
        assert!(
            started.elapsed() < T,
            "dashboard queries without data after {T:?}:\n{}",
            empty.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `alert` has fired for `instance` (in the last 10 minutes); returns when.
fn wait_fired(prom: &Prometheus, alert: &str, instance: &str, started: Instant) -> Duration {
    let matches = |l: &Labels| {
        l.get("alertname").map(String::as_str) == Some(alert)
            && l.get("instance").map(String::as_str) == Some(instance)
    };
    loop {
        let fired = prom.fired("10m");
        if fired.iter().any(matches) {
            let at = started.elapsed();
            eprintln!("[prom] {alert} fired for {instance} after {at:.1?}");
            return at;
        }
        assert!(
            started.elapsed() < T,
            "{alert} never fired for {instance}; fired: {fired:?}; active: {:?}",
            prom.active_alerts()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until `alert` is no longer firing for `instance`.
fn wait_resolved(prom: &Prometheus, alert: &str, instance: &str) {
    let q =
        format!("ALERTS{{alertname=\"{alert}\",instance=\"{instance}\",alertstate=\"firing\"}}");
    let start = Instant::now();
    while !prom.query(&q).is_empty() {
        assert!(start.elapsed() < T, "{alert} still firing for {instance}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Sends `sig` to a `tandem` process.
fn signal(t: &Tandem, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(t.child.id().to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig}");
}

#[test]
fn prometheus_evaluates_the_dashboard_and_fires_the_alerts_on_a_real_pair() {
    const NAME: &str = "prometheus_evaluates_the_dashboard_and_fires_the_alerts_on_a_real_pair";
    require_kvm_and_netns!(NAME);
    require_prometheus!(NAME);
    // Three VMMs, each exporting metrics over TCP: M migrates its guest to P (the migration
    // panels get data from both), then B protects it. The VM has a NIC (a tap of its own on each
    // host, nothing on it) so that the network panels have series.
    let addr = |_| format!("127.0.0.1:{}", free_port());
    let [m_addr, p_addr, b_addr]: [String; 3] = [0, 1, 2].map(addr);
    let start_vmm = |tag: &str, a: &str| Tandem::start_with_args(tag, &["--metrics-listen", a]);
    let m = start_vmm("pm-m", &m_addr);
    let mut p = start_vmm("pm-p", &p_addr);
    let mut b = start_vmm("pm-b", &b_addr);
    let tap = |c: char| json!([{"id": "nic0", "tap": format!("tp{:x}{c}", std::process::id())}]);
    let mut cfg = m.builtin_config(1, 64, "workload=idle");
    cfg["net"] = tap('m');
    m.put_ok("vm.create", Some(&cfg));
    m.put_ok("vm.boot", None);
    m.serial().wait_for("tandem-guest: ready", T);
    let url = format!("tcp:127.0.0.1:{}", free_port());
    p.put_ok(
        "vm.receive-migration",
        Some(&json!({"receiver_url": url, "net": tap('p'),
                     "serial": {"mode": "File", "file": p.serial_path}})),
    );
    m.put_ok(
        "vm.send-migration",
        Some(&json!({"destination_url": url, "downtime_ms": 300})),
    );
    p.wait_state("Running", T);
    m.wait_state("Migrated", T);

    // FT with a 10 s failure timeout, so that a stalled backup is visible before it counts as
    // failed (the default 1 s would end the pair before any scrape saw it).
    let store = TempDir::new("pm-store");
    let arbiter = store.path("arbiter");
    std::fs::create_dir(&arbiter).expect("arbiter folder");
    let protect = |p: &Tandem, b: &Tandem, nic: char| {
        let url = format!("tcp:127.0.0.1:{}", free_port());
        b.put_ok(
            "ft.receive",
            Some(
                &json!({"listen": url, "net": tap(nic), "arbiter": {"path": arbiter},
                         "serial": {"mode": "File", "file": b.serial_path},
                         "failure_timeout_ms": 10000}),
            ),
        );
        p.put_ok(
            "ft.enable",
            Some(
                &json!({"peer": url, "disk_mode": "shared", "arbiter": {"path": arbiter},
                         "failure_timeout_ms": 10000}),
            ),
        );
        wait_ft(p, "primary", "protected");
        wait_ft(b, "backup", "protected");
    };
    protect(&p, &b, 'b');

    // Prometheus on loopback: 1 s scrapes and evaluations, the shipped rules with 1 s `for:`.
    let dir = TempDir::new("pm-prom");
    let targets = format!("['{m_addr}', '{p_addr}', '{b_addr}']");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files: [alerts.yml]\n\
         scrape_configs:\n  - job_name: tandem\n    static_configs:\n      - targets: {targets}\n"
    );
    std::fs::write(dir.path("prometheus.yml"), config).expect("write config");
    std::fs::write(dir.path("alerts.yml"), rules_for_test()).expect("write rules");
    let prom = Prometheus::start(dir);
    let started = Instant::now();

    // Every panel query has a number for "All" VMMs; the VM and FT panels also for the protected
    // primary alone (its VM belongs to the pair, and its counters must still show).
    let dash = dashboard::load();
    let queries = |instances: &[&str]| {
        let all = grafana_all(instances);
        let mut q: Vec<String> = dashboard::queries(&dash)
            .into_iter()
            .filter(|q| !q.starts_with("label_values(") && q != "prometheus")
            .map(|q| q.replace("$instance", &all))
            .collect();
        q.sort();
        q.dedup();
        q
    };
    let all = queries(&[&m_addr, &p_addr, &b_addr]);
    assert!(all.len() >= 30, "{all:?}");
    wait_all_have_data(&prom, &all, started);
    let primary: Vec<String> = queries(&[&p_addr])
        .into_iter()
        .filter(|q| !q.contains("tandem_migration_"))
        .collect();
    assert!(primary
        .iter()
        .any(|q| q.contains("tandem_vcpu_exits_total")));
    wait_all_have_data(&prom, &primary, started);
    eprintln!(
        "[prom] all {} dashboard queries have data ({} of them for the primary alone) after {:.1?}",
        all.len(),
        primary.len(),
        started.elapsed()
    );
    let var = dash["templating"]["list"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == "instance"))
        .expect("instance variable");
    assert_eq!(var["query"], "label_values(tandem_build_info, instance)");
    let values = prom.api("label/instance/values", &[("match[]", "tandem_build_info")]);
    for a in [&m_addr, &p_addr, &b_addr] {
        assert!(
            values.as_array().unwrap().iter().any(|v| v == a.as_str()),
            "{values}"
        );
    }
    // Every rule loaded and evaluates; a protected pair is not reported unprotected.
    let rules = prom.rules();
    assert_eq!(rules.len(), shipped_alerts().len(), "{rules:?}");
    assert!(
        !prom
            .fired("10m")
            .iter()
            .any(|l| l["alertname"] == "TandemPairUnprotected"),
        "{:?}",
        prom.fired("10m")
    );

    // The backup's host hangs (SIGSTOP): the primary waits for acks, its window full, and the
    // backup stops answering scrapes — before the failure timeout ends the pair.
    let stalled = Instant::now();
    signal(&b, "STOP");
    wait_fired(&prom, "TandemAckAgeHigh", &p_addr, started);
    wait_fired(&prom, "TandemBacklogHigh", &p_addr, started);
    wait_fired(&prom, "TandemVmmDown", &b_addr, started);
    eprintln!(
        "[prom] stall alerts within {:.1?} of SIGSTOP",
        stalled.elapsed()
    );
    // Then it dies: the primary runs on unprotected.
    b.child.kill().expect("SIGKILL the backup");
    b.wait_exit(T);
    wait_ft(&p, "primary", "unprotected");
    wait_fired(&prom, "TandemPairUnprotected", &p_addr, started);

    // A new backup on B's address protects P again, and the alert resolves...
    b = start_vmm("pm-b2", &b_addr);
    protect(&p, &b, 'c');
    wait_resolved(&prom, "TandemPairUnprotected", &p_addr);
    // ...until P's VMM is killed: B takes over, and is the unprotected one now.
    p.child.kill().expect("SIGKILL the primary");
    p.wait_exit(T);
    let s = wait_ft(&b, "primary", "unprotected");
    assert_eq!(s["failover_count"], 1, "{s}");
    wait_fired(&prom, "TandemFailoverHappened", &b_addr, started);
    wait_fired(&prom, "TandemPairUnprotected", &b_addr, started);
    wait_fired(&prom, "TandemVmmDown", &p_addr, started);

    // No rule failed to evaluate, and nothing here halted.
    for r in prom.rules() {
        assert_eq!(r["health"], "ok", "{r}");
    }
    let fired = prom.fired("10m");
    assert!(
        !fired.iter().any(|l| l["alertname"] == "TandemMemberHalted"),
        "{fired:?}"
    );
    eprintln!("[prom] fired: {fired:?}");
}
