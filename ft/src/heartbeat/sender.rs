//! Sends a heartbeat datagram to the peer every interval from its own thread.

use super::datagram::Heartbeat;
use super::{parse_addr, HeartbeatError};
use crate::auth::DatagramKey;
use crate::status::Role;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Default)]
struct Shared {
    generation: AtomicU64,
    sent: AtomicU64,
    send_errors: AtomicU64,
}

/// A running heartbeat sender; stops when stopped or dropped.
pub struct HeartbeatSender {
    shared: Arc<Shared>,
    // Dropping the sender end wakes the thread at once, not after an interval.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    local: SocketAddr,
}

impl HeartbeatSender {
    /// Binds `bind` (`ADDR:PORT`, port 0 for any) and sends to `peer` every `interval`, starting now.
    pub fn start(
        bind: &str,
        peer: &str,
        pair_id: u64,
        role: Role,
        generation: u64,
        interval: Duration,
    ) -> Result<HeartbeatSender, HeartbeatError> {
        let bind_addr = parse_addr(bind)?;
        let peer = parse_addr(peer)?;
        Self::start_keyed(bind_addr, peer, pair_id, role, generation, interval, None)
    }

    /// As [`HeartbeatSender::start`], with addresses resolved, sealing each datagram with `key`
    /// when given (the sealed format).
    pub fn start_keyed(
        bind_addr: SocketAddr,
        peer: SocketAddr,
        pair_id: u64,
        role: Role,
        generation: u64,
        interval: Duration,
        key: Option<DatagramKey>,
    ) -> Result<HeartbeatSender, HeartbeatError> {
        let socket = UdpSocket::bind(bind_addr).map_err(|source| HeartbeatError::Bind {
            addr: bind_addr,
            source,
        })?;
        let local = socket
            .local_addr()
            .map_err(|source| HeartbeatError::Socket {
                op: "local_addr",
                source,
            })?;
        let shared = Arc::new(Shared::default());
        shared.generation.store(generation, Ordering::Relaxed);
        let (stop, stopped) = mpsc::channel::<()>();
        let t_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ft-hb-send".into())
            .spawn(move || {
                crate::thread_hook::thread_started();
                let mut seq = 0u64;
                loop {
                    let hb = Heartbeat {
                        pair_id,
                        generation: t_shared.generation.load(Ordering::Relaxed),
                        role,
                        seq,
                        sent_unix_ms: crate::status::unix_ms(),
                    };
                    // A send error (no route while a link is down) is what heartbeats are for
                    // detecting on the other side; count it and keep going.
                    let sent = match &key {
                        Some(k) => socket.send_to(&hb.encode_sealed(k), peer),
                        None => socket.send_to(&hb.encode(), peer),
                    };
                    match sent {
                        Ok(_) => t_shared.sent.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            log::debug!("heartbeat to {peer}: {e}");
                            t_shared.send_errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    // The sequence number is the sealed datagrams' nonce: never reuse one, and
                    // stay inside a key's usage limit (13 years at 10 Hz).
                    seq = seq.saturating_add(1);
                    if key.is_some() && seq >= crate::auth::MAX_SEALED {
                        log::error!(
                            "heartbeat to {peer}: the key's sequence numbers are used up; stopping"
                        );
                        return;
                    }
                    match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map_err(HeartbeatError::Spawn)?;
        Ok(HeartbeatSender {
            shared,
            stop: Some(stop),
            thread: Some(thread),
            local,
        })
    }

    /// The address datagrams leave from.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Carries a new generation from the next datagram on.
    pub fn set_generation(&self, generation: u64) {
        self.shared.generation.store(generation, Ordering::Relaxed);
    }

    /// A reader of [`Self::sent`] that outlives no one: for the metrics while the sender runs.
    pub fn sent_reader(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.sent.load(Ordering::Relaxed)
    }

    /// Datagrams handed to the kernel so far.
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Sends that failed so far.
    pub fn send_errors(&self) -> u64 {
        self.shared.send_errors.load(Ordering::Relaxed)
    }

    /// Stops sending and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("heartbeat sender thread panicked");
            }
        }
    }
}

impl Drop for HeartbeatSender {
    fn drop(&mut self) {
        self.shutdown();
    }
}
