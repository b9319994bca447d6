//! The pair's second liveness path (UDP heartbeats, authenticated with the pair key when there is
//! one) and the rule that uses it, so that a dead replication link with a live peer does not send
//! both members racing for the arbiter:
//!
//! * primary: the stream silent for the failure timeout is enough to arbitrate, whatever the
//!   heartbeats say (it runs the guest and is the natural survivor): won → unprotected;
//! * backup: the stream gone while the primary is still heard on the heartbeat path → defer: no
//!   claim, watch the arbiter, and halt (copy discarded) once the primary has taken a newer
//!   generation. Only when the heartbeats fall silent too (or the primary has not claimed within
//!   `DEFER_LIMIT` failure timeouts, a primary that is alive but stuck) does the backup claim.

// Host-side: heartbeats, the peer and timers decide these lines, not the guest.
#![allow(clippy::disallowed_macros)]

use ft::arbiter::Arbiter;
use ft::auth::Session;
use ft::heartbeat::{
    parse_udp_endpoint, FailureDetector, HeartbeatError, HeartbeatReceiver, HeartbeatSender, Path,
};
use ft::status::{HeartbeatCounts, Role, StatusHandle};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// How many failure timeouts a backup defers to a primary it still hears before claiming anyway.
pub const DEFER_LIMIT: u32 = 5;

/// Why the heartbeat path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatSetupError {
    /// One of the two addresses without the other.
    #[error("heartbeat_listen and peer_heartbeat go together")]
    Unpaired,
    /// A bad address, a socket that cannot be bound, a thread that cannot start.
    #[error("cannot start the heartbeat path")]
    Heartbeat(#[from] HeartbeatError),
    /// The socket cannot be duplicated for a re-sync.
    #[error("cannot reuse the heartbeat socket")]
    Clone(#[source] std::io::Error),
}

/// Both ends of the heartbeat path, checked and bound when the API call is made.
pub struct HeartbeatPaths {
    /// Bound to `heartbeat_listen`: the peer's heartbeats arrive here.
    pub socket: UdpSocket,
    /// Where ours go (`peer_heartbeat`).
    pub peer: SocketAddr,
}

impl HeartbeatPaths {
    /// The same paths on a duplicate of the socket, for a pair that starts over (a re-sync).
    pub fn try_clone(&self) -> Result<HeartbeatPaths, HeartbeatSetupError> {
        Ok(HeartbeatPaths {
            socket: self
                .socket
                .try_clone()
                .map_err(HeartbeatSetupError::Clone)?,
            peer: self.peer,
        })
    }

    /// From the API fields: both or neither; a bad address or one that cannot be bound is an
    /// error for the caller.
    pub fn from_api(
        listen: Option<&str>,
        peer: Option<&str>,
    ) -> Result<Option<HeartbeatPaths>, HeartbeatSetupError> {
        let (listen, peer) = match (listen, peer) {
            (None, None) => return Ok(None),
            (Some(l), Some(p)) => (l, p),
            _ => return Err(HeartbeatSetupError::Unpaired),
        };
        let at = parse_udp_endpoint(listen)?;
        let peer = parse_udp_endpoint(peer)?;
        let socket =
            UdpSocket::bind(at).map_err(|source| HeartbeatError::Bind { addr: at, source })?;
        Ok(Some(HeartbeatPaths { socket, peer }))
    }
}

/// The running heartbeat threads of one pair member; they stop when this is dropped.
pub struct Heartbeats {
    _sender: HeartbeatSender,
    _receiver: HeartbeatReceiver,
    status: StatusHandle,
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.status.detach_udp_counts();
    }
}

/// Starts sending to the peer and feeding `detector` with what it sends, tagged under the
/// session's keys when it is authenticated.
pub fn start(
    paths: HeartbeatPaths,
    session: &Session,
    role: Role,
    generation: u64,
    interval: Duration,
    detector: &FailureDetector,
    status: &StatusHandle,
) -> Result<Heartbeats, HeartbeatSetupError> {
    let (send_key, recv_key) = match &session.heartbeat {
        Some((s, r)) => (Some(s.clone()), Some(r.clone())),
        None => (None, None),
    };
    let local = paths
        .socket
        .local_addr()
        .map_err(|source| HeartbeatError::Socket {
            op: "local_addr",
            source,
        })?;
    // Leave from the listening address, so that the datagrams take the second path's network.
    let from = SocketAddr::new(local.ip(), 0);
    let sender = HeartbeatSender::start_keyed(
        from,
        paths.peer,
        session.pair_id,
        role,
        generation,
        interval,
        send_key,
    )?;
    let receiver =
        HeartbeatReceiver::start_on(paths.socket, session.pair_id, 0, detector.clone(), recv_key)?;
    log::info!(
        "ft: heartbeats on the second path: listening on {local}, sending to {}{}",
        paths.peer,
        if session.authenticated {
            " (authenticated)"
        } else {
            ""
        }
    );
    let (sent, received) = (sender.sent_reader(), receiver.accepted_reader());
    status.attach_udp_counts(Box::new(move || HeartbeatCounts {
        sent: sent(),
        received: received(),
    }));
    Ok(Heartbeats {
        _sender: sender,
        _receiver: receiver,
        status: status.clone(),
    })
}

/// Primary: the stream has been silent for the failure timeout (the heartbeats may still say the
/// backup lives): time to arbitrate. Returns how long it has been silent.
pub fn stream_lost(detector: &FailureDetector) -> Option<Duration> {
    let silent = detector.silent_for(Path::Channel);
    (silent >= detector.timeout()).then_some(silent)
}

/// What a backup whose stream ended does while the detector still hears the primary.
pub enum Deferral {
    /// Keep waiting.
    Wait,
    /// The primary took a newer generation: halt with this reason.
    Lost(String),
    /// Deferred long enough: claim now, silent on the stream for this long.
    Claim(Duration),
}

/// Backup, stream ended, detector still hearing the primary on the heartbeat path.
pub fn defer<A: Arbiter>(
    arbiter: &A,
    status: &StatusHandle,
    detector: &FailureDetector,
) -> Deferral {
    let stream_silent = detector.silent_for(Path::Channel);
    if stream_silent < detector.timeout() {
        // The stream's last frame is recent: nothing to decide yet.
        return Deferral::Wait;
    }
    match arbiter.current() {
        Ok(Some(h)) if h.generation > status.generation() => {
            return Deferral::Lost(format!(
                "the replication stream was lost while the primary was alive on the heartbeat \
                 path, and it won: {h}; copy discarded"
            ))
        }
        Ok(_) => {}
        Err(e) => log::warn!(
            "ft backup: cannot read the arbiter while deferring: {}",
            errors::chain(&e)
        ),
    }
    if stream_silent >= detector.timeout() * DEFER_LIMIT {
        return Deferral::Claim(stream_silent);
    }
    status.note(&format!(
        "replication stream lost {:.1} s ago; the primary is alive on the heartbeat path: \
         deferring to it",
        stream_silent.as_secs_f64()
    ));
    Deferral::Wait
}

#[cfg(test)]
#[path = "second_path_tests.rs"]
mod tests;
