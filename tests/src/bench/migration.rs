//! Live migration figures from the source's own report.

use crate::net::{Node, TestNet, HOST_B_LINK_IP};
use crate::Tandem;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn secs(v: &Value) -> f64 {
    v["secs"].as_f64().unwrap_or(0.0) + v["nanos"].as_f64().unwrap_or(0.0) / 1e9
}

fn one(net: &TestNet, mem_mib: u64, workload: &str) -> Value {
    let p = Tandem::start_in_netns("bench-mig-p", &net.ns(Node::HostP));
    let b = Tandem::start_in_netns("bench-mig-b", &net.ns(Node::HostB));
    p.boot_builtin(1, mem_mib, &format!("workload={workload}"));
    // Let a dirtying guest reach its rate (and touch its working set) first.
    std::thread::sleep(Duration::from_secs(2));
    let url = format!("tcp:{HOST_B_LINK_IP}:7600");
    b.put_ok(
        "vm.receive-migration",
        Some(&json!({"receiver_url": url, "serial": {"mode": "Null"}, "insecure": true})),
    );
    p.put_ok(
        "vm.send-migration",
        Some(&json!({"destination_url": url, "downtime_ms": 300})),
    );
    let start = Instant::now();
    loop {
        let i = p.get("vm.info").1;
        if i["state"] == "Migrated" {
            return i["migration"]["report"].clone();
        }
        if !i["migration"]["error"].is_null() {
            return json!({"error": i["migration"]["error"]});
        }
        // A migration that does not finish is a failure, never a 0 ms / 0 MiB success.
        if start.elapsed() > Duration::from_secs(300) {
            return json!({"error": format!("not migrated after 300 s: {}", i["migration"])});
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the migration bench: 256 and 1024 MiB guests, idle and dirtying, over the host link.
pub fn run() {
    let net = TestNet::up("bmg");
    for mem in [256u64, 1024] {
        for workload in ["idle", "dirty:64:20000"] {
            let r = one(&net, mem, workload);
            if !r["error"].is_null() {
                println!("migration {mem} MiB {workload}: FAILED {}", r["error"]);
                continue;
            }
            println!(
                "migration {mem:>4} MiB {workload:<15} (n=1): downtime {:.1} ms, total {:.0} ms, {} rounds ({}), {:.1} MiB sent",
                secs(&r["downtime"]) * 1e3,
                secs(&r["total_time"]) * 1e3,
                r["rounds"],
                r["stop_reason"].as_str().unwrap_or("?"),
                r["bytes_sent"].as_f64().unwrap_or(0.0) / (1 << 20) as f64
            );
        }
    }
}
