//! Receives heartbeat datagrams, feeds the detector with valid ones, counts the rest.

use super::datagram::{DatagramError, Heartbeat};
use super::detector::{FailureDetector, Path};
use super::{parse_addr, HeartbeatError};
use crate::auth::DatagramKey;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the receive loop checks for stop while nothing arrives.
const POLL: Duration = Duration::from_millis(50);

/// Counts of what arrived on the heartbeat socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReceiverStats {
    /// Valid heartbeats from our peer (fed to the detector).
    pub accepted: u64,
    /// Not a valid heartbeat datagram (length, magic, version, checksum, fields).
    pub malformed: u64,
    /// Valid heartbeat of another pair.
    pub foreign_pair: u64,
    /// Valid heartbeat of our pair from an older generation.
    pub stale_generation: u64,
    /// Socket read errors other than timeouts.
    pub read_errors: u64,
    /// A key is in force and the datagram's tag is missing or does not verify.
    pub bad_tag: u64,
    /// Authenticated, but its sequence number is not above the last accepted (a replay).
    pub replayed: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    malformed: AtomicU64,
    foreign_pair: AtomicU64,
    stale_generation: AtomicU64,
    read_errors: AtomicU64,
    bad_tag: AtomicU64,
    replayed: AtomicU64,
    min_generation: AtomicU64,
    last_reject: std::sync::Mutex<Option<DatagramError>>,
}

/// A running heartbeat receiver; stops when stopped or dropped.
pub struct HeartbeatReceiver {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    local: SocketAddr,
}

impl HeartbeatReceiver {
    /// Binds `bind` (`ADDR:PORT`) and feeds `detector` with heartbeats of `pair_id` whose
    /// generation is at least `min_generation`.
    pub fn start(
        bind: &str,
        pair_id: u64,
        min_generation: u64,
        detector: FailureDetector,
    ) -> Result<HeartbeatReceiver, HeartbeatError> {
        let addr = parse_addr(bind)?;
        let socket =
            UdpSocket::bind(addr).map_err(|source| HeartbeatError::Bind { addr, source })?;
        Self::start_on(socket, pair_id, min_generation, detector, None)
    }

    /// As [`HeartbeatReceiver::start`] on a socket bound already (so that a caller can refuse a
    /// bad address before the peer is known), taking only datagrams tagged with `key` when given.
    pub fn start_on(
        socket: UdpSocket,
        pair_id: u64,
        min_generation: u64,
        detector: FailureDetector,
        key: Option<DatagramKey>,
    ) -> Result<HeartbeatReceiver, HeartbeatError> {
        let socket_err = |op| move |source| HeartbeatError::Socket { op, source };
        socket
            .set_read_timeout(Some(POLL))
            .map_err(socket_err("set_read_timeout"))?;
        let local = socket.local_addr().map_err(socket_err("local_addr"))?;
        let counters = Arc::new(Counters::default());
        counters
            .min_generation
            .store(min_generation, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counters.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("ft-hb-recv".into())
            .spawn(move || {
                crate::thread_hook::thread_started();
                receive_loop(socket, pair_id, key, detector, &c, &s)
            })
            .map_err(HeartbeatError::Spawn)?;
        Ok(HeartbeatReceiver {
            counters,
            stop,
            thread: Some(thread),
            local,
        })
    }

    /// The bound address (useful when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Ignores heartbeats older than `generation` from now on (after winning a new generation).
    pub fn set_min_generation(&self, generation: u64) {
        self.counters
            .min_generation
            .store(generation, Ordering::Relaxed);
    }

    /// A reader of the accepted count, for the metrics while the receiver runs.
    pub fn accepted_reader(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let counters = self.counters.clone();
        move || counters.accepted.load(Ordering::Relaxed)
    }

    /// What arrived so far.
    pub fn stats(&self) -> ReceiverStats {
        let c = &self.counters;
        ReceiverStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            foreign_pair: c.foreign_pair.load(Ordering::Relaxed),
            stale_generation: c.stale_generation.load(Ordering::Relaxed),
            read_errors: c.read_errors.load(Ordering::Relaxed),
            bad_tag: c.bad_tag.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
        }
    }

    /// Why the latest malformed datagram was rejected.
    pub fn last_reject(&self) -> Option<DatagramError> {
        *self
            .counters
            .last_reject
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Stops receiving and joins the thread (within one poll interval).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("heartbeat receiver thread panicked");
            }
        }
    }
}

impl Drop for HeartbeatReceiver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn receive_loop(
    socket: UdpSocket,
    pair_id: u64,
    key: Option<DatagramKey>,
    detector: FailureDetector,
    c: &Counters,
    stop: &AtomicBool,
) {
    // One byte more than the longest heartbeat, so that an oversized datagram shows as too long
    // instead of being silently truncated to a valid-looking prefix.
    let mut buf = [0u8; super::datagram::SEALED_LEN + 1];
    // Highest sequence number accepted, for replay protection under a key.
    let mut last_seq: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        let n = match socket.recv_from(&mut buf) {
            Ok((n, _from)) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                log::debug!("heartbeat receive: {e}");
                c.read_errors.fetch_add(1, Ordering::Relaxed);
                // Errors such as ICMP-reported unreachability repeat; don't spin on them.
                std::thread::sleep(POLL);
                continue;
            }
        };
        match Heartbeat::decode_with(&buf[..n], key.as_ref()) {
            Err(DatagramError::BadTag) => {
                c.bad_tag.fetch_add(1, Ordering::Relaxed);
                *c.last_reject.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(DatagramError::BadTag);
            }
            Err(e) => {
                c.malformed.fetch_add(1, Ordering::Relaxed);
                *c.last_reject.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
            Ok(hb) if hb.pair_id != pair_id => {
                c.foreign_pair.fetch_add(1, Ordering::Relaxed);
            }
            Ok(hb) if hb.generation < c.min_generation.load(Ordering::Relaxed) => {
                c.stale_generation.fetch_add(1, Ordering::Relaxed);
            }
            Ok(hb) if key.is_some() && last_seq.is_some_and(|l| hb.seq <= l) => {
                c.replayed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(hb) => {
                last_seq = Some(hb.seq);
                c.accepted.fetch_add(1, Ordering::Relaxed);
                detector.heard(Path::Udp);
            }
        }
    }
}
