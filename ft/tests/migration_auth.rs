//! Live migration takes the pair key and handshake of an FT stream: between two fake VMs over
//! real sockets, sources with another key, none, or an FT stream are refused at the handshake
//! (the destination notes why and goes on waiting, the source's VM is never paused), then the
//! right key migrates, encrypted.

// The shared doubles include a proxy this file does not use.
#[allow(dead_code)]
mod common;

use common::fake_vm::FakeVm;
use ft::auth::{handshake, AuthError, PairKey, Purpose, Side};
use ft::migration::{
    accept_source, send_migration, IncomingMigration, MigrationPhase, ProgressHandle,
    ReceiveOptions, Role, SendOptions,
};
use ft::transport::{connect, Endpoint, Listener};
use std::time::Duration;

const PAGES: u64 = 1024;
const T: Duration = Duration::from_secs(10);

fn key(b: u8) -> PairKey {
    PairKey::from_bytes(&[b; 32]).unwrap()
}

/// Connects to `ep` and runs the source's handshake for `purpose` with `k`.
fn source_handshake(ep: &Endpoint, k: Option<&PairKey>, purpose: Purpose) -> AuthError {
    let conn = connect(ep, T).unwrap();
    match handshake(conn, k, Side::Initiator, purpose, T) {
        Ok(_) => panic!("the destination accepted a wrong source"),
        Err(e) => e,
    }
}

#[test]
fn wrong_sources_are_refused_and_the_right_key_migrates_encrypted() {
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let ep = l.local_endpoint().clone();
    let progress = ProgressHandle::new(Role::Destination);
    let p = progress.clone();
    let dest = std::thread::spawn(move || {
        let mut dst = FakeVm::destination(PAGES, 1);
        let (conn, session) =
            accept_source(&l, Some(&key(1)), T * 3, T, &p).expect("the right source passes");
        let opts = ReceiveOptions {
            io_timeout: T,
            ..ReceiveOptions::default()
        };
        IncomingMigration::accept(conn, &opts, &p)
            .and_then(|m| m.receive_into(&mut dst))
            .map(|_| (dst, session))
    });
    let refused = |needle: &str| {
        let start = std::time::Instant::now();
        loop {
            let r = progress.snapshot().refused.unwrap_or_default();
            if r.contains(needle) {
                return r;
            }
            assert!(
                start.elapsed() < T,
                "destination never noted {needle:?}: {r}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    // Another key: refused on both sides.
    let e = source_handshake(&ep, Some(&key(2)), Purpose::Migration);
    assert!(matches!(e, AuthError::Failed), "{e:?}");
    refused("authentication failed: the peer does not hold the same pair key");
    // No key: the source hears the destination wants one; the destination says it has none.
    let e = source_handshake(&ep, None, Purpose::Migration);
    assert!(matches!(e, AuthError::WeHaveNoKey), "{e}");
    refused("the peer has none");
    // An FT primary pointed at the migration port.
    let e = source_handshake(&ep, Some(&key(1)), Purpose::Ft);
    assert!(matches!(e, AuthError::WrongPurpose { .. }), "{e}");
    refused("opens an FT replication stream but this side expects a live migration");
    assert_eq!(progress.snapshot().phase, MigrationPhase::Setup);

    // The right key: migrated, encrypted, and the destination says so.
    let mut src = FakeVm::source(PAGES, 1, 200, 3);
    let conn = connect(&ep, T).unwrap();
    let (conn, session) = handshake(conn, Some(&key(1)), Side::Initiator, Purpose::Migration, T)
        .expect("the right key is accepted");
    assert!(session.authenticated);
    let sp = ProgressHandle::new(Role::Source);
    let opts = SendOptions {
        io_timeout: T,
        commit_timeout: T,
        ..SendOptions::default()
    };
    send_migration(&mut src, conn, &opts, &sp).expect("migration");
    let (dst, dsession) = dest.join().unwrap().expect("destination");
    assert!(dsession.authenticated);
    assert_eq!(progress.snapshot().authenticated, Some(true));
    assert!(src.memory() == dst.memory(), "memory differs");
    assert!(dst.is_running() && !src.is_running());
}
