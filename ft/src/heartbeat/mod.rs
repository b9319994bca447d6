//! Liveness: UDP heartbeats on a second network path, a hook for the checkpoint channel, and the
//! failure detector that combines them (DESIGN.md: "heartbeats on the channel plus UDP heartbeats
//! on a second path; configurable timeout").
//!
//! Wiring, per pair member: one [`FailureDetector`] with the pair's `failure_timeout`; a
//! [`HeartbeatSender`] to the peer's heartbeat address; a [`HeartbeatReceiver`] on ours, feeding
//! the detector; and the channel's reader calling [`ChannelHook::frame_received`] on every frame.
//! The peer counts as failed only when *both* paths were silent for the timeout, so losing the
//! second network alone (or the channel stalling while UDP flows) is not a failover.
//!
//! Datagrams carry a pair id and generation so that two pairs on one host, or a member left over
//! from an older generation, are not mistaken for the peer. Without a pair key the CRC guards
//! against corruption, not forgery: anyone who can send to the port can keep a dead peer "alive"
//! (a missed failover, never a split brain, since going live always needs the arbiter). With a
//! pair key each datagram is sealed (AES-256-GCM) under a key of this connection
//! (`crate::auth`) and replays are refused by sequence number, so only the peer can vouch for
//! itself, and nobody else can read it.

mod datagram;
mod detector;
mod receiver;
mod sender;

pub use datagram::{DatagramError, Heartbeat, LEN, SEALED_LEN};
pub use detector::{ChannelHook, FailureDetector, Path, Verdict};
pub use receiver::{HeartbeatReceiver, ReceiverStats};
pub use sender::HeartbeatSender;

use std::net::{SocketAddr, ToSocketAddrs};

/// Errors of the heartbeat layer (setting up; running errors are counted, not fatal).
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// The address is not `ADDR:PORT` or does not resolve.
    #[error("invalid heartbeat address {addr:?} (expected ADDR:PORT)")]
    InvalidAddress {
        /// What was given.
        addr: String,
        /// Parser or resolver error.
        #[source]
        source: std::io::Error,
    },
    /// Could not bind the UDP socket.
    #[error("cannot bind UDP heartbeat socket on {addr}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Setting a socket option or reading the local address failed.
    #[error("cannot configure the heartbeat socket ({op})")]
    Socket {
        /// Which operation.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The heartbeat thread could not be started.
    #[error("cannot start the heartbeat thread")]
    Spawn(#[source] std::io::Error),
}

/// Parses the API's `udp:ADDR:PORT` form of a heartbeat address.
pub fn parse_udp_endpoint(s: &str) -> Result<SocketAddr, HeartbeatError> {
    match s.strip_prefix("udp:") {
        Some(rest) => parse_addr(rest),
        None => Err(HeartbeatError::InvalidAddress {
            addr: s.to_owned(),
            source: std::io::Error::other("expected udp:ADDR:PORT"),
        }),
    }
}

/// Resolves `ADDR:PORT` (numeric or a host name) to its first address.
pub fn parse_addr(addr: &str) -> Result<SocketAddr, HeartbeatError> {
    let invalid = |source| HeartbeatError::InvalidAddress {
        addr: addr.to_owned(),
        source,
    };
    addr.to_socket_addrs()
        .map_err(invalid)?
        .next()
        .ok_or_else(|| invalid(std::io::Error::other("resolves to no address")))
}

#[cfg(test)]
mod tests;
