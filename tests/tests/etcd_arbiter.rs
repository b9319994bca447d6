//! The etcd arbiter against a real etcd server the test starts: the file arbiter's rules (one
//! winner per generation, superseded claims, idempotent retries), racing claimants, a cluster
//! that dies or hangs during a claim, endpoint failover, TLS with client certificates, and
//! user/password authentication.

use ft::arbiter::{
    open, Arbiter, ArbiterConfig, Claim, EtcdArbiter, EtcdConfig, Holder, Identity, Outcome,
};
use ft::status::Role;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tandem_tests::etcd::{free_port, Etcd, Tls};
use tandem_tests::{require_etcd, TempDir};

fn config(endpoints: &[&str], key: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
        key: key.into(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        user: None,
        password_file: None,
    }
}

fn claim(role: Role, reason: &str) -> Claim {
    Claim::here(role, reason)
}

/// An arbiter call's error, with its causes.
fn chain(e: &dyn std::error::Error) -> String {
    ft::migration::error_chain(e)
}

/// Bound on one arbiter call that errors (its own 3 s limit, plus a loaded machine).
const CALL_BOUND: Duration = Duration::from_secs(6);

#[test]
fn claims_follow_the_file_arbiters_rules() {
    require_etcd!("claims_follow_the_file_arbiters_rules");
    let etcd = Etcd::start("rules");
    let c = config(&[&etcd.url], "/tandem/pairs/rules");
    let a = EtcdArbiter::open(&c).unwrap();
    let b: Arc<dyn Arbiter> = open(&ArbiterConfig::Etcd(Box::new(c.clone()))).unwrap();
    assert_eq!(a.current().unwrap(), None);

    let p = claim(Role::Primary, "backup silent");
    let q = claim(Role::Backup, "primary silent");
    assert_eq!(a.try_acquire(5, &p).unwrap(), Outcome::Won);
    assert_eq!(
        b.try_acquire(5, &q).unwrap(),
        Outcome::Lost(Holder {
            generation: 5,
            claim: Some(p.clone())
        })
    );
    // The same claim again (a retry after a lost answer) wins again; an equal claim from the
    // other arbiter object too, since the record is what decides.
    assert_eq!(a.try_acquire(5, &p).unwrap(), Outcome::Won);
    assert_eq!(b.try_acquire(5, &p).unwrap(), Outcome::Won);
    // Nothing below the highest generation can be won, and a refused claim leaves no record.
    for g in [0, 3, 4] {
        assert_eq!(
            b.try_acquire(g, &q).unwrap(),
            Outcome::Superseded(Holder {
                generation: 5,
                claim: Some(p.clone())
            }),
            "generation {g}"
        );
        assert_eq!(etcd.get(&format!("/tandem/pairs/rules/gen/{g:020}")), None);
    }
    assert_eq!(b.try_acquire(7, &q).unwrap(), Outcome::Won);
    // Its own record does not save a claim once a higher generation exists.
    assert!(matches!(a.try_acquire(5, &p).unwrap(), Outcome::Superseded(h) if h.generation == 7));
    assert_eq!(
        a.current().unwrap(),
        Some(Holder {
            generation: 7,
            claim: Some(q.clone())
        })
    );
    // Generations past 10^19 sort right (20 digits).
    assert_eq!(a.try_acquire(u64::MAX, &p).unwrap(), Outcome::Won);
    assert_eq!(a.current().unwrap().map(|h| h.generation), Some(u64::MAX));
    assert!(matches!(
        b.try_acquire(u64::MAX - 1, &q).unwrap(),
        Outcome::Superseded(h) if h.generation == u64::MAX
    ));

    // The record is readable by an operator with etcdctl.
    let text = etcd
        .get(&format!("/tandem/pairs/rules/gen/{:020}", 7))
        .unwrap();
    assert!(text.contains("\"role\": \"backup\""), "{text}");
    assert!(text.contains("primary silent"), "{text}");

    // A record someone garbled still holds its generation (taken, by an unknown holder).
    etcd.etcdctl_ok(&[
        "put",
        "/tandem/pairs/garbled/gen/00000000000000000002",
        "{oops",
    ]);
    let g = EtcdArbiter::open(&config(&[&etcd.url], "/tandem/pairs/garbled")).unwrap();
    assert_eq!(
        g.try_acquire(2, &p).unwrap(),
        Outcome::Lost(Holder {
            generation: 2,
            claim: None
        })
    );
    // A foreign key among the generation records is an error (never a win), not ignored.
    etcd.etcdctl_ok(&["put", "/tandem/pairs/garbled/gen/9", "x"]);
    let e = g.try_acquire(3, &p).unwrap_err();
    assert!(
        chain(&e).contains("is not a generation record"),
        "{}",
        chain(&e)
    );
}

#[test]
fn identity_is_created_once_per_key_and_read_back() {
    require_etcd!("identity_is_created_once_per_key_and_read_back");
    let etcd = Etcd::start("identity");
    const THREADS: usize = 6;
    let barrier = Arc::new(Barrier::new(THREADS));
    let url = etcd.url.clone();
    let ids: Vec<Identity> = (0..THREADS)
        .map(|_| {
            let (barrier, url) = (barrier.clone(), url.clone());
            std::thread::spawn(move || {
                let a = EtcdArbiter::open(&config(&[&url], "/tandem/pairs/id")).unwrap();
                barrier.wait();
                a.identity().unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(
        etcd.get("/tandem/pairs/id/identity").as_deref(),
        Some(ids[0].as_str())
    );
    // Another pair key is other storage.
    let other = EtcdArbiter::open(&config(&[&etcd.url], "/tandem/pairs/other")).unwrap();
    assert_ne!(other.identity().unwrap(), ids[0]);
    // It survives a restart of the cluster: it is in etcd, not in the arbiter.
    let mut etcd = etcd;
    etcd.restart();
    let again = EtcdArbiter::open(&config(&[&etcd.url], "/tandem/pairs/id")).unwrap();
    assert_eq!(again.identity().unwrap(), ids[0]);
}

#[test]
fn racing_claimants_have_exactly_one_winner_per_generation() {
    require_etcd!("racing_claimants_have_exactly_one_winner_per_generation");
    const THREADS: usize = 6;
    const ROUNDS: u64 = 40;
    let etcd = Etcd::start("race");
    let url = etcd.url.clone();
    let barrier = Arc::new(Barrier::new(THREADS));
    let results: Vec<Vec<(Outcome, Claim)>> = (0..THREADS)
        .map(|t| {
            let (barrier, url) = (barrier.clone(), url.clone());
            std::thread::spawn(move || {
                // Each thread its own arbiter: its own connections, like separate hosts.
                let a = EtcdArbiter::open(&config(&[&url], "/tandem/pairs/race")).unwrap();
                let me = claim(Role::Backup, &format!("thread {t}"));
                (1..=ROUNDS)
                    .map(|g| {
                        barrier.wait();
                        (a.try_acquire(g, &me).unwrap(), me.clone())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    for g in 0..ROUNDS as usize {
        let winners: Vec<&Claim> = results
            .iter()
            .filter(|r| r[g].0 == Outcome::Won)
            .map(|r| &r[g].1)
            .collect();
        assert_eq!(winners.len(), 1, "generation {}: {winners:?}", g + 1);
        for r in &results {
            match &r[g].0 {
                Outcome::Won => {}
                // Every loser names the winner (etcd writes the record with the win).
                Outcome::Lost(h) => assert_eq!(h.claim.as_ref(), Some(winners[0])),
                // A slow thread may see the next round's winner already.
                Outcome::Superseded(h) => assert!(h.generation > g as u64 + 1),
            }
        }
    }
    let a = EtcdArbiter::open(&config(&[&url], "/tandem/pairs/race")).unwrap();
    assert!(matches!(
        a.try_acquire(1, &claim(Role::Primary, "late")).unwrap(),
        Outcome::Superseded(h) if h.generation == ROUNDS
    ));
}

#[test]
fn etcd_down_or_hung_during_a_claim_is_an_error_then_the_retry_wins() {
    require_etcd!("etcd_down_or_hung_during_a_claim_is_an_error_then_the_retry_wins");
    let mut etcd = Etcd::start("down");
    let c = config(&[&etcd.url], "/tandem/pairs/down");
    let a = EtcdArbiter::open(&c).unwrap();
    let me = claim(Role::Backup, "primary silent");
    let rival = claim(Role::Primary, "backup silent");

    // Down: connection refused.
    etcd.kill();
    let t0 = Instant::now();
    let e = a.try_acquire(1, &me).unwrap_err();
    assert!(t0.elapsed() < CALL_BOUND, "{:?}", t0.elapsed());
    assert!(chain(&e).contains("no endpoint answered"), "{}", chain(&e));
    assert!(a.current().is_err());
    // Opening an arbiter on a cluster that does not answer is refused up front.
    assert!(EtcdArbiter::open(&c).is_err());
    etcd.restart();
    assert_eq!(a.try_acquire(1, &me).unwrap(), Outcome::Won);

    // Hung (SIGSTOP): the request is sent, no answer comes, the call times out. etcd may apply
    // the claim once it runs again; either way the retry (with the same claim) wins — finding
    // its own record if the first attempt took the generation — and the rival loses to it.
    etcd.signal("STOP");
    let t0 = Instant::now();
    let e = a.try_acquire(2, &me).unwrap_err();
    let took = t0.elapsed();
    etcd.signal("CONT");
    assert!(took < CALL_BOUND, "{took:?}");
    assert!(chain(&e).contains("no endpoint answered"), "{}", chain(&e));
    let deadline = Instant::now() + Duration::from_secs(30);
    let won = loop {
        match a.try_acquire(2, &me) {
            Ok(o) => break o,
            Err(e) if Instant::now() < deadline => eprintln!("retry: {}", chain(&e)),
            Err(e) => panic!("etcd never answered again: {}", chain(&e)),
        }
    };
    assert_eq!(won, Outcome::Won);
    assert_eq!(
        a.try_acquire(2, &rival).unwrap(),
        Outcome::Lost(Holder {
            generation: 2,
            claim: Some(me.clone())
        })
    );
}

#[test]
fn endpoints_are_tried_in_turn() {
    require_etcd!("endpoints_are_tried_in_turn");
    let etcd = Etcd::start("endpoints");
    let dead = format!("http://127.0.0.1:{}", free_port());
    // A member that is down first in the list: the live one answers every call.
    let a = EtcdArbiter::open(&config(&[&dead, &etcd.url], "/tandem/pairs/ep")).unwrap();
    for g in 1..=3 {
        assert_eq!(
            a.try_acquire(g, &claim(Role::Primary, "x")).unwrap(),
            Outcome::Won
        );
    }
    assert_eq!(a.endpoints(), [dead.as_str(), etcd.url.as_str()]);
}

#[test]
fn tls_with_a_client_certificate() {
    require_etcd!("tls_with_a_client_certificate");
    let tls = Tls::generate("tls", "127.0.0.1");
    let etcd = Etcd::start_tls("tls", &tls);
    assert!(etcd.url.starts_with("https://"));
    let good = EtcdConfig {
        ca_file: Some(tls.ca.clone()),
        cert_file: Some(tls.client_cert.clone()),
        key_file: Some(tls.client_key.clone()),
        ..config(&[&etcd.url], "/tandem/pairs/tls")
    };
    let a = EtcdArbiter::open(&good).unwrap();
    assert_eq!(
        a.try_acquire(1, &claim(Role::Primary, "tls")).unwrap(),
        Outcome::Won
    );
    assert!(etcd
        .get("/tandem/pairs/tls/gen/00000000000000000001")
        .is_some());

    // No client certificate: etcd's --client-cert-auth refuses the handshake.
    let no_cert = EtcdConfig {
        cert_file: None,
        key_file: None,
        ..good.clone()
    };
    let e = EtcdArbiter::open(&no_cert).unwrap_err();
    assert!(chain(&e).contains("no endpoint answered"), "{}", chain(&e));
    // A CA that did not sign the server: the server is not trusted.
    let other = Tls::generate("tls-other", "127.0.0.1");
    let wrong_ca = EtcdConfig {
        ca_file: Some(other.ca.clone()),
        ..good.clone()
    };
    let e = EtcdArbiter::open(&wrong_ca).unwrap_err();
    assert!(
        chain(&e).to_lowercase().contains("certificate"),
        "{}",
        chain(&e)
    );
    // Plain http to a TLS port gets no answer either.
    let plain = config(&[&etcd.url.replace("https", "http")], "/tandem/pairs/tls");
    assert!(EtcdArbiter::open(&plain).is_err());
}

#[test]
fn user_and_password_authentication() {
    require_etcd!("user_and_password_authentication");
    let mut etcd = Etcd::start("auth");
    etcd.enable_auth("tandem", "s3cret", "/tandem/pairs/");
    let dir = TempDir::new("etcd-auth");
    let pw = |name: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.path(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let with = |user: &str, file: &std::path::Path, key: &str| EtcdConfig {
        user: Some(user.into()),
        password_file: Some(file.to_owned()),
        ..config(&[&etcd.url], key)
    };
    let good = with("tandem", &pw("good", "s3cret\n"), "/tandem/pairs/auth");
    let a = EtcdArbiter::open(&good).unwrap();
    assert_eq!(
        a.try_acquire(1, &claim(Role::Primary, "auth")).unwrap(),
        Outcome::Won
    );

    // Without credentials, with a wrong password, or outside the user's prefix: refused up
    // front with etcd's reason.
    let e = EtcdArbiter::open(&config(&[&etcd.url], "/tandem/pairs/auth")).unwrap_err();
    assert!(chain(&e).contains("user name is empty"), "{}", chain(&e));
    let e =
        EtcdArbiter::open(&with("tandem", &pw("bad", "nope"), "/tandem/pairs/auth")).unwrap_err();
    assert!(chain(&e).contains("authentication failed"), "{}", chain(&e));
    let e = EtcdArbiter::open(&with("tandem", &pw("good2", "s3cret"), "/elsewhere")).unwrap_err();
    assert!(chain(&e).contains("permission denied"), "{}", chain(&e));

    // etcd's simple tokens live in the member's memory: after a restart the cached token is
    // invalid, and the arbiter fetches a fresh one instead of failing.
    etcd.restart();
    assert_eq!(
        a.try_acquire(2, &claim(Role::Primary, "after restart"))
            .unwrap(),
        Outcome::Won
    );
    assert_eq!(a.current().unwrap().map(|h| h.generation), Some(2));
}
