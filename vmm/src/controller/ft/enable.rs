//! `ft.enable` on a running standalone VM, or to re-protect a primary running unprotected.

// Host-side: the ft.enable call.
#![allow(clippy::disallowed_macros)]

use super::super::owner::{Local, Owner, Primary};
use super::super::{Step, Vmm, VmmError};
use super::{
    heartbeat_paths, load_key, mode, ms, open_arbiter, pair_disk_mode, OpenArbiter, CONNECT_TIMEOUT,
};
use crate::api::types::FtEnableConfig;
use crate::ft::pair::{spawn_primary, PairTiming, PrimarySetup};
use crate::migration::source::identity;
use devices::virtio::block::gate::DiskMode;
use ft::auth::{handshake, Purpose, Side};
use ft::checkpoint::PairSettings;
use ft::migration::{open_ft_stream, OpenedStream};
use ft::status::{FtState, Role};
use ft::transport::{self, Endpoint};

impl Vmm {
    /// Connects to the backup, authenticates it, then hands the VM to a primary pair thread.
    /// Any error before that leaves the VM running here, untouched.
    pub(in super::super) fn ft_enable(
        &mut self,
        l: Local,
        c: FtEnableConfig,
        reprotect: bool,
    ) -> Step {
        let opened = self
            .connect_backup(&c)
            .and_then(|k| self.open_stream(&l, &c, k));
        match opened {
            Ok(k) => self.start_primary(l, c, reprotect, k),
            Err(e) => (Owner::Local(l), Err(e)),
        }
    }

    /// Everything `ft.enable` checks before the VM is touched.
    fn connect_backup(&self, c: &FtEnableConfig) -> Result<Connected, VmmError> {
        let OpenArbiter {
            arbiter,
            generation,
            identity: arbiter_id,
        } = open_arbiter(&c.arbiter)?;
        let endpoint: Endpoint = c.peer.parse().map_err(VmmError::MigrationUrl)?;
        if !matches!(endpoint, Endpoint::Tcp { .. }) {
            return Err(VmmError::FtPeerNotTcp {
                peer: c.peer.clone(),
            });
        }
        let key = load_key(c.key.as_ref())?;
        let heartbeat = heartbeat_paths(c.heartbeat_listen.as_ref(), c.peer_heartbeat.as_ref())?;
        let conn = transport::connect(&endpoint, CONNECT_TIMEOUT).map_err(VmmError::FtPeer)?;
        // Before anything is gated or sent: a peer with another key (or none) is this call's
        // error, and the VM runs on untouched.
        let (conn, session) = handshake(
            conn,
            key.as_ref(),
            Side::Initiator,
            Purpose::Ft,
            CONNECT_TIMEOUT,
        )
        .map_err(|e| {
            let why = errors::chain(&e);
            log::error!("ft.enable: the backup at {endpoint} was refused: {why}");
            self.ft_status.note(&format!(
                "ft.enable refused the backup at {endpoint}: {why}"
            ));
            VmmError::FtAuth(e)
        })?;
        if !session.authenticated {
            log::warn!(
                "ft: the replication stream to {endpoint} is NOT encrypted or authenticated (no \
                 pair key): anyone on the link can read, alter or forge it"
            );
        }
        Ok(Connected {
            arbiter,
            arbiter_id,
            generation,
            endpoint,
            conn,
            session,
            heartbeat,
        })
    }

    /// Sends the Hello with the pair's settings and waits for the backup to accept it (it built
    /// its replica and agrees): a refusal is this call's error, with the VM untouched.
    fn open_stream(&self, l: &Local, c: &FtEnableConfig, k: Connected) -> Result<Opened, VmmError> {
        let timing = timing(c);
        let pair = PairSettings {
            disk_mode: pair_disk_mode(c.disk_mode),
            failure_timeout_ms: millis(timing.failure_timeout),
            heartbeat_interval_ms: millis(timing.heartbeat_interval),
            checkpoint_interval_ms: millis(timing.checkpoint_interval),
            arbiter_id: Some(k.arbiter_id.clone()),
        };
        let config_json = serde_json::to_string(&l.config).unwrap_or_default();
        let mut identity = identity(&l.vm, l.config.cpus.boot_vcpus, config_json);
        if mode(c.disk_mode) == DiskMode::Replicated {
            // The disks the initial sync copies: the backup checks its images against them.
            identity.disks = disk_list(l.vm.disk_sizes());
        }
        let endpoint = k.endpoint.clone();
        let stream =
            open_ft_stream(k.conn, identity, pair.to_json(), HELLO_TIMEOUT).map_err(|e| {
                let why = errors::chain(&e);
                log::error!("ft.enable: the backup at {endpoint} refused the pair: {why}");
                self.ft_status.note(&format!(
                    "ft.enable: the backup at {endpoint} refused the pair: {why}"
                ));
                VmmError::FtRefused(e)
            })?;
        Ok(Opened {
            arbiter: k.arbiter,
            generation: k.generation,
            endpoint: k.endpoint,
            stream,
            session: k.session,
            heartbeat: k.heartbeat,
            timing,
        })
    }

    fn start_primary(&mut self, l: Local, c: FtEnableConfig, reprotect: bool, k: Opened) -> Step {
        let peer = Some(k.endpoint.to_string());
        let entered = if reprotect {
            self.ft_status
                .reprotect(k.generation, peer, "ft.enable: protecting again")
        } else {
            self.ft_status
                .enable(Role::Primary, k.generation, peer, "ft.enable")
        };
        if entered.is_err() {
            return (Owner::Local(l), Err(VmmError::FtAlready));
        }
        self.ft_status.set_authenticated(k.session.authenticated);
        let Local { config, vm, .. } = l;
        let counters = vm.counter_source();
        let setup = PrimarySetup {
            vm,
            config: config.clone(),
            stream: k.stream,
            disk_mode: mode(c.disk_mode),
            arbiter: k.arbiter,
            status: self.ft_status.clone(),
            timing: k.timing,
            session: k.session,
            heartbeat: k.heartbeat,
        };
        match spawn_primary(setup, self.report_sink()) {
            Ok(pair) => {
                log::info!("ft: protecting the VM with the backup at {}", k.endpoint);
                let p = Primary {
                    config,
                    counters,
                    pair,
                    paused: false,
                    powering_off: false,
                    reset_pending: false,
                    enable: c,
                };
                (Owner::Primary(p), Ok(None))
            }
            Err(b) => {
                let (vm, e) = *b;
                let reason = format!("ft.enable failed: {}", errors::chain(&e));
                if reprotect {
                    let _ = self.ft_status.transition(FtState::Unprotected, &reason);
                } else {
                    self.ft_status.disable(&reason);
                }
                let l = Local {
                    config,
                    vm,
                    paused: false,
                    announce_on_resume: false,
                };
                (Owner::Local(l), Err(VmmError::FtStart(e)))
            }
        }
    }
}

/// How often the background replica scrub covers everything, unless `ft.enable` says.
const DEFAULT_SCRUB_PERIOD_S: u64 = 300;

/// The pair's timing as `ft.enable` set it (defaults filled in).
fn timing(c: &FtEnableConfig) -> PairTiming {
    PairTiming {
        checkpoint_interval: ms(c.checkpoint_interval_ms, 25),
        heartbeat_interval: ms(c.heartbeat_interval_ms, 100),
        failure_timeout: ms(c.failure_timeout_ms, 1000),
        max_backlog_bytes: c
            .max_backlog_bytes
            .unwrap_or(ft::checkpoint::DEFAULT_MAX_BACKLOG_BYTES)
            .max(MIN_BACKLOG_BYTES),
        // One default, flow control's own.
        target_pause: ms(
            c.target_pause_ms,
            millis(ft::checkpoint::FlowOptions::default().target_pause),
        ),
        scrub_period: match c.scrub_period_s.unwrap_or(DEFAULT_SCRUB_PERIOD_S) {
            0 => None,
            s => Some(std::time::Duration::from_secs(s)),
        },
    }
}

/// Smallest backlog bound `ft.enable` takes: below it flow control would throttle an idle guest.
const MIN_BACKLOG_BYTES: u64 = 1 << 20;

fn millis(d: std::time::Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// How long `ft.enable` waits for the backup to accept the Hello (it builds its replica first).
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A backup that accepted the pair, and what the pair will use.
struct Opened {
    arbiter: std::sync::Arc<dyn ft::arbiter::Arbiter>,
    generation: u64,
    endpoint: Endpoint,
    stream: OpenedStream,
    session: ft::auth::Session,
    heartbeat: Option<crate::ft::second_path::HeartbeatPaths>,
    timing: PairTiming,
}

/// A backup reached and authenticated, and what the pair will use.
struct Connected {
    /// The arbiter store's identity, for the Hello.
    arbiter_id: String,
    arbiter: std::sync::Arc<dyn ft::arbiter::Arbiter>,
    generation: u64,
    endpoint: Endpoint,
    conn: Box<dyn ft::transport::Connection>,
    session: ft::auth::Session,
    heartbeat: Option<crate::ft::second_path::HeartbeatPaths>,
}

/// A VM's disks as the Hello announces them: index (device position) and size.
fn disk_list(sizes: &[u64]) -> Vec<ft::disk::DiskInfo> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| ft::disk::DiskInfo {
            index: i as u32,
            size,
        })
        .collect()
}
