//! `ft.enable` on a running standalone VM, or to re-protect a primary running unprotected.

use super::super::owner::{Local, Owner, Primary};
use super::super::{Step, Vmm, VmmError};
use super::{heartbeat_paths, load_key, mode, ms, open_arbiter, CONNECT_TIMEOUT};
use crate::api::types::FtEnableConfig;
use crate::ft::pair::{spawn_primary, PairTiming, PrimarySetup};
use ft::auth::{handshake, Purpose, Side};
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
        match self.connect_backup(&c) {
            Ok(connected) => self.start_primary(l, c, reprotect, connected),
            Err(e) => (Owner::Local(l), Err(e)),
        }
    }

    /// Everything `ft.enable` checks before the VM is touched.
    fn connect_backup(&self, c: &FtEnableConfig) -> Result<Connected, VmmError> {
        let (arbiter, generation) = open_arbiter(&c.arbiter.path)?;
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
            generation,
            endpoint,
            conn,
            session,
            heartbeat,
        })
    }

    fn start_primary(
        &mut self,
        l: Local,
        c: FtEnableConfig,
        reprotect: bool,
        k: Connected,
    ) -> Step {
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
            conn: k.conn,
            disk_mode: mode(c.disk_mode),
            arbiter: k.arbiter,
            status: self.ft_status.clone(),
            timing: PairTiming {
                checkpoint_interval: ms(c.checkpoint_interval_ms, 25),
                heartbeat_interval: ms(c.heartbeat_interval_ms, 100),
                failure_timeout: ms(c.failure_timeout_ms, 1000),
            },
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

/// A backup reached and authenticated, and what the pair will use.
struct Connected {
    arbiter: ft::arbiter::FileArbiter,
    generation: u64,
    endpoint: Endpoint,
    conn: Box<dyn ft::transport::Connection>,
    session: ft::auth::Session,
    heartbeat: Option<crate::ft::second_path::HeartbeatPaths>,
}
