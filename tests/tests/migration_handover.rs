//! The live-migration hand-over window (issue 11 item 3), between real `tandem` processes on the
//! test network: a proxy on the host-to-host link (`tandem_tests::handover_proxy`) kills the link
//! right at the hand-over, either with the destination's final ack on it (the destination runs
//! the VM, the source never hears so) or instead of the source's Commit (the source sent it, the
//! destination never had it). The source cannot tell the two apart; it must never resume in the
//! first, and a client of the guest's counter must never see two VMs or a lost INC.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_tests::client::CounterConn;
use tandem_tests::handover_proxy::{Cut, HandoverProxy};
use tandem_tests::net::{Node, TestNet, HOST_B_LINK_IP, HOST_P_LINK_IP};
use tandem_tests::{require, Tandem, TempDir};

const T: Duration = Duration::from_secs(60);
const GUEST_IP: &str = "10.77.0.2";
/// Where the destination listens; the proxy listens on the next port.
const PORT: u16 = 7500;

/// Two hosts with a counter guest on host P, and storage both see (disk, arbiter directory).
struct Hosts {
    net: TestNet,
    hosts: [Tandem; 2],
    store: TempDir,
}

impl Hosts {
    fn up(tag: &str) -> Hosts {
        let h = tandem_tests::ft_pair::Hosts::up(tag);
        Hosts {
            net: h.net,
            hosts: [h.p, h.b],
            store: h.store,
        }
    }

    fn arbiter(&self) -> Value {
        json!({"path": self.store.path("arbiter")})
    }
}

fn info(t: &Tandem) -> Value {
    t.get("vm.info").1
}

fn link_ip(i: usize) -> &'static str {
    [HOST_P_LINK_IP, HOST_B_LINK_IP][i]
}

fn node(i: usize) -> Node {
    [Node::HostP, Node::HostB][i]
}

/// Starts a migration from host `src` to host `dst` through a proxy that cuts as `cut` says
/// (`None`: no proxy), with `arbiter` on both calls; waits until the source's migration ends
/// and returns its `vm.info`.
fn migrate(h: &Hosts, src: usize, dst: usize, cut: Option<Cut>, arbiter: Option<Value>) -> Value {
    let (s, d) = (&h.hosts[src], &h.hosts[dst]);
    let listen = format!("{}:{PORT}", link_ip(dst));
    let mut recv = json!({
        "receiver_url": format!("tcp:{listen}"),
        "serial": {"mode": "File", "file": d.serial_path},
        // The private test link.
        "insecure": true,
    });
    let mut send = json!({"destination_url": format!("tcp:{listen}"), "downtime_ms": 300});
    if let Some(a) = &arbiter {
        recv["arbiter"] = a.clone();
        send["arbiter"] = a.clone();
    }
    d.put_ok("vm.receive-migration", Some(&recv));
    let _proxy = cut.map(|cut| {
        let via: SocketAddr = format!("{}:{}", link_ip(dst), PORT + 1).parse().unwrap();
        send["destination_url"] = json!(format!("tcp:{via}"));
        HandoverProxy::start(&h.net, node(dst), via, listen.parse().unwrap(), cut)
    });
    s.put_ok("vm.send-migration", Some(&send));
    let start = Instant::now();
    loop {
        let i = info(s);
        if i["migration"]["active"] == false {
            return i;
        }
        assert!(start.elapsed() < T, "migration did not end: {i}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the destination has either the VM running or none (its migration failed).
fn destination_outcome(d: &Tandem) -> String {
    let start = Instant::now();
    loop {
        let (code, i) = d.get("vm.info");
        let state = if code == 404 {
            "none".to_string()
        } else {
            i["state"].as_str().unwrap_or_default().to_string()
        };
        if state != "Receiving" {
            return state;
        }
        assert!(start.elapsed() < T, "destination still receiving: {i}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client INCing on one connection until stopped; every reply must be the previous + 1.
fn client(net: &TestNet, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    net.run_in(Node::Client, move || {
        let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            seen.push(c.inc().expect("INC across the hand-over"));
        }
        seen
    })
}

fn assert_counts_up(seen: &[u64]) {
    assert!(
        seen.len() > 5,
        "the client made too little progress: {seen:?}"
    );
    for (i, v) in seen.iter().enumerate() {
        assert_eq!(*v, i as u64 + 1, "INC #{i} answered {v}; all: {seen:?}");
    }
}

/// Without an arbiter: the destination's final ack is lost. The destination runs the VM; the
/// source must not (before: it resumed too, two guests with one MAC and one disk). It stays
/// paused and says the outcome is unknown and what to do; `vm.resume` is refused; the operator
/// sees the VM running on the destination and deletes it here. The client loses nothing.
#[test]
fn a_lost_final_ack_leaves_the_source_paused_with_outcome_unknown() {
    require!(kvm, netns);
    let h = Hosts::up("mha");
    let stop = Arc::new(AtomicBool::new(false));
    let c = client(&h.net, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let i = migrate(&h, 0, 1, Some(Cut::FinalAck { pass: 1 }), None);
    let (s, d) = (&h.hosts[0], &h.hosts[1]);
    assert_eq!(destination_outcome(d), "Running", "{}", d.log());
    assert_eq!(
        i["state"],
        "OutcomeUnknown",
        "the source did not stay paused: {i}\nsource log:\n{}",
        s.log()
    );
    let error = i["migration"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("outcome is unknown"), "{i}");
    let action = i["migration"]["action"].as_str().unwrap_or_default();
    assert!(
        action.contains("force") && action.contains("vm.delete"),
        "{i}"
    );
    let (code, body) = s.put("vm.resume", None);
    assert_eq!(code, 409, "{body}");
    assert!(body.to_string().contains("force"), "{body}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(info(s)["state"], "OutcomeUnknown");
    // The operator looks at the destination: it runs the VM. This copy goes.
    s.put_ok("vm.delete", None);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = c.join().expect("client");
    eprintln!("[mha] {} INCs; source said: {error}", seen.len());
    assert_counts_up(&seen);
}

/// Without an arbiter: the link dies instead of the Commit. The source cannot tell this from
/// the case above and stays paused too; the operator sees that the destination has no VM and
/// forces the source to resume. The guest goes on where it stopped: no INC lost.
#[test]
fn an_operator_resumes_a_source_whose_destination_never_ran_the_vm() {
    require!(kvm, netns);
    let h = Hosts::up("mhc");
    let stop = Arc::new(AtomicBool::new(false));
    let c = client(&h.net, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let i = migrate(&h, 0, 1, Some(Cut::Commit), None);
    let (s, d) = (&h.hosts[0], &h.hosts[1]);
    assert_eq!(i["state"], "OutcomeUnknown", "{i}");
    assert_eq!(destination_outcome(d), "none", "{}", d.log());
    let (code, body) = s.put("vm.resume", Some(&json!({"force": true})));
    assert_eq!(code, 204, "{body}");
    let i = info(s);
    assert_eq!(i["state"], "Running", "{i}");
    assert!(i["migration"]["action"].is_null(), "{i}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen = c.join().expect("client");
    eprintln!("[mhc] {} INCs", seen.len());
    assert_counts_up(&seen);
}

/// With an arbiter on both calls, exactly one side runs the VM whichever way the link dies,
/// every time, and a migration that nothing disturbs still works; one client connection
/// through all of it loses no INC. `TANDEM_HANDOVER_ROUNDS` repeats the sequence.
#[test]
fn with_an_arbiter_exactly_one_side_runs_every_time() {
    require!(kvm, netns);
    let h = Hosts::up("mhr");
    let arbiter = Some(h.arbiter());
    let rounds: usize = std::env::var("TANDEM_HANDOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let stop = Arc::new(AtomicBool::new(false));
    let c = client(&h.net, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let mut at = 0; // the host running the VM
    let mut generation = 0;
    for round in 0..rounds {
        for cut in [Some(Cut::FinalAck { pass: 2 }), Some(Cut::Commit), None] {
            let (src, dst) = (at, 1 - at);
            let i = migrate(&h, src, dst, cut, arbiter.clone());
            generation += 1;
            let there = destination_outcome(&h.hosts[dst]);
            let here = i["state"].as_str().unwrap_or_default().to_string();
            eprintln!("[mhr] round {round} {cut:?}: source {here}, destination {there}; {i}");
            match cut {
                // The destination won the generation before it ran; the source lost to it.
                Some(Cut::FinalAck { .. }) => {
                    assert_eq!((here.as_str(), there.as_str()), ("Migrated", "Running"));
                    assert_eq!(
                        i["migration"]["report"]["confirmed_by"],
                        json!({"arbiter": {"generation": generation}})
                    );
                }
                // The destination never had the state; the source won and runs again.
                Some(Cut::Commit) => {
                    assert_eq!((here.as_str(), there.as_str()), ("Running", "none"));
                    let e = i["migration"]["error"].as_str().unwrap_or_default();
                    assert!(e.contains(&format!("won generation {generation}")), "{e}");
                }
                None => {
                    assert_eq!((here.as_str(), there.as_str()), ("Migrated", "Running"));
                    assert_eq!(i["migration"]["report"]["confirmed_by"], "ack");
                }
            }
            if here == "Migrated" {
                h.hosts[src].put_ok("vm.delete", None);
                at = dst;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seen = c.join().expect("client");
    eprintln!("[mhr] {} INCs", seen.len());
    assert_counts_up(&seen);
}
