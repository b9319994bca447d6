//! The destination's wait for its source: connections are accepted until one passes the
//! handshake for a migration. A refused one (another key, none, another purpose or release) is
//! noted in the progress and logged, and the wait goes on, so that whoever can reach the port
//! cannot end it (as an FT backup waits for its primary).

use super::error_chain;
use super::progress::ProgressHandle;
use crate::auth::{handshake, PairKey, Purpose, Session, Side};
use crate::transport::{Connection, Listener, TransportError};
use std::time::{Duration, Instant};

/// Waits at most `wait` for a source that completes the handshake (`key`: the one it must hold
/// too), each handshake bounded by `handshake_timeout`. Returns the stream to receive on
/// (encrypted when keyed) and what the handshake established.
pub fn accept_source(
    listener: &Listener,
    key: Option<&PairKey>,
    wait: Duration,
    handshake_timeout: Duration,
    progress: &ProgressHandle,
) -> Result<(Box<dyn Connection>, Session), TransportError> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TransportError::AcceptTimeout {
                endpoint: listener.local_endpoint().clone(),
                timeout: wait,
            });
        }
        let conn = listener.accept(Some(left))?;
        match handshake(
            conn,
            key,
            Side::Responder,
            Purpose::Migration,
            handshake_timeout,
        ) {
            Ok((conn, session)) => {
                progress.set_authenticated(session.authenticated);
                return Ok((conn, session));
            }
            Err(e) => {
                let why = error_chain(&e);
                log::warn!("migration: refused a connection: {why}; still waiting for the source");
                progress.update(|p| p.refused = Some(why));
            }
        }
    }
}
