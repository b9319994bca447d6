//! The failure detector: the peer has failed when no liveness path heard it for the timeout.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A way the peer proves it is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// Any frame on the checkpoint channel (data, ack or heartbeat frame).
    Channel,
    /// A valid UDP heartbeat on the second path.
    Udp,
}

/// What [`FailureDetector::wait_for_failure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The deadline passed and the peer was heard within the timeout.
    Alive,
    /// Neither path heard the peer for `silent_for` (at least the timeout).
    Failed {
        /// Time since the last sign of life (or since arming, if none came).
        silent_for: Duration,
    },
    /// The detector was closed (FT disabled or the pair torn down).
    Closed,
}

struct State {
    channel: Option<Instant>,
    udp: Option<Instant>,
    /// Silence is measured from here when nothing newer was heard: a peer that never spoke
    /// fails one timeout after arming, not at once and not never.
    armed_at: Instant,
    closed: bool,
    /// Silence after which the peer has failed; a backup adopts its primary's once the Hello
    /// names it.
    timeout: Duration,
}

impl State {
    fn last_sign(&self) -> Instant {
        [self.channel, self.udp]
            .into_iter()
            .flatten()
            .fold(self.armed_at, Instant::max)
    }
}

struct Inner {
    state: Mutex<State>,
    wake: Condvar,
}

/// Shared, cheaply cloned detector: feeders (UDP receiver, channel hook) and watchers share it.
#[derive(Clone)]
pub struct FailureDetector(Arc<Inner>);

impl FailureDetector {
    /// A detector armed now that declares failure after `failure_timeout` of silence on all paths.
    pub fn new(failure_timeout: Duration) -> Self {
        FailureDetector(Arc::new(Inner {
            state: Mutex::new(State {
                channel: None,
                udp: None,
                armed_at: Instant::now(),
                closed: false,
                timeout: failure_timeout,
            }),
            wake: Condvar::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Timestamps stay meaningful even if a feeder panicked while holding the lock.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configured failure timeout.
    pub fn timeout(&self) -> Duration {
        self.lock().timeout
    }

    /// Changes the failure timeout (a backup adopting its primary's); waiters re-evaluate.
    pub fn set_timeout(&self, timeout: Duration) {
        self.lock().timeout = timeout;
        self.0.wake.notify_all();
    }

    /// Records a sign of life on `path`.
    pub fn heard(&self, path: Path) {
        let now = Instant::now();
        let mut s = self.lock();
        match path {
            Path::Channel => s.channel = Some(now),
            Path::Udp => s.udp = Some(now),
        }
        // No notify: hearing the peer can only push failure later, and waiters re-check on wake.
    }

    /// The hook the checkpoint channel calls on every frame from the peer.
    pub fn channel_hook(&self) -> ChannelHook {
        ChannelHook(self.clone())
    }

    /// When `path` last heard the peer (`None`: never since arming).
    pub fn last_heard(&self, path: Path) -> Option<Instant> {
        let s = self.lock();
        match path {
            Path::Channel => s.channel,
            Path::Udp => s.udp,
        }
    }

    /// How long `path` has been silent: since it last heard the peer, or since arming if never.
    pub fn silent_for(&self, path: Path) -> Duration {
        let s = self.lock();
        let last = match path {
            Path::Channel => s.channel,
            Path::Udp => s.udp,
        };
        last.unwrap_or(s.armed_at).elapsed()
    }

    /// Forgets what was heard and restarts the silence clock (a new peer, a new generation).
    pub fn rearm(&self) {
        let mut s = self.lock();
        s.channel = None;
        s.udp = None;
        s.armed_at = Instant::now();
        s.closed = false;
    }

    /// Wakes every waiter with [`Verdict::Closed`]; later waits return it at once until `rearm`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.0.wake.notify_all();
    }

    /// Whether the peer counts as failed right now.
    pub fn is_failed(&self) -> bool {
        let s = self.lock();
        s.last_sign().elapsed() >= s.timeout
    }

    /// Blocks until the peer fails, the detector is closed, or `deadline` passes.
    pub fn wait_for_failure(&self, deadline: Instant) -> Verdict {
        let mut s = self.lock();
        loop {
            if s.closed {
                return Verdict::Closed;
            }
            let now = Instant::now();
            let silent_for = now.saturating_duration_since(s.last_sign());
            if silent_for >= s.timeout {
                return Verdict::Failed { silent_for };
            }
            if now >= deadline {
                return Verdict::Alive;
            }
            // Sleep until the earliest moment the verdict could change; a sign of life heard
            // meanwhile just moves that moment, found on the next turn.
            let until_failure = s.timeout - silent_for;
            let wait = until_failure.min(deadline - now);
            s = match self.0.wake.wait_timeout(s, wait) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// What the checkpoint channel holds to report that a frame from the peer arrived.
#[derive(Clone)]
pub struct ChannelHook(FailureDetector);

impl ChannelHook {
    /// Call on every frame received from the peer, whatever its type.
    pub fn frame_received(&self) {
        self.0.heard(Path::Channel);
    }
}
