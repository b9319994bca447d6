//! `ft.receive` on an empty, standalone VMM: listen for a primary and hold its replica.

use super::super::overrides::arriving_config;
use super::super::owner::{Backup, Owner};
use super::super::{Step, Vmm, VmmError};
use super::{heartbeat_paths, load_key, ms, open_arbiter, pair_disk_mode, OpenArbiter};
use crate::api::types::FtReceiveConfig;
use crate::config::VmConfig;
use crate::ft::pair::{spawn_backup, BackupSetup, LocalizeError};
use ft::auth::check_listener;
use ft::checkpoint::BackupWants;
use ft::status::Role;
use ft::transport::{Endpoint, Listener};

impl Vmm {
    /// Checks the call, binds the listener, then starts the backup's thread.
    pub(in super::super) fn ft_receive(&mut self, c: FtReceiveConfig) -> Step {
        match self.start_backup(c) {
            Ok(b) => (Owner::Backup(b), Ok(None)),
            Err(e) => (Owner::Empty, Err(e)),
        }
    }

    fn start_backup(&mut self, c: FtReceiveConfig) -> Result<Backup, VmmError> {
        let OpenArbiter {
            arbiter,
            generation,
            identity: arbiter_id,
        } = open_arbiter(&c.arbiter)?;
        let key = load_key(c.key.as_ref())?;
        let heartbeat = heartbeat_paths(c.heartbeat_listen.as_ref(), c.peer_heartbeat.as_ref())?;
        let endpoint: Endpoint = c.listen.parse().map_err(VmmError::MigrationUrl)?;
        // Safe by default: a keyless backup takes a VM from whoever connects.
        check_listener(&endpoint, key.is_some(), c.insecure).map_err(VmmError::InsecureListen)?;
        let listener = Listener::bind(&endpoint).map_err(VmmError::MigrationListen)?;
        self.ft_status
            .enable(
                Role::Backup,
                generation,
                None,
                "ft.receive: waiting for the primary",
            )
            .map_err(|_| VmmError::FtAlready)?;
        // What this side requires; the handshake with the primary confirms it.
        self.ft_status.set_authenticated(key.is_some());
        let (guest_events, on_failure) = self.new_boot_handlers();
        let wants = BackupWants {
            disk_mode: c.disk_mode.map(pair_disk_mode),
            failure_timeout: c.failure_timeout_ms.map(|v| ms(Some(v), 1000)),
            arbiter_id: Some(arbiter_id),
        };
        // Until the primary's Hello says otherwise (the backup adopts its timing).
        let failure_timeout = ms(c.failure_timeout_ms, 1000);
        let setup = BackupSetup {
            listener,
            localize: Box::new(move |json: &str| localize(json, &c)),
            wants,
            arbiter,
            status: self.ft_status.clone(),
            failure_timeout,
            guest_events,
            on_failure,
            key,
            heartbeat,
        };
        match spawn_backup(setup, self.report_sink()) {
            Ok(pair) => {
                log::info!("ft: backup waiting for a primary on {endpoint}");
                Ok(Backup { pair })
            }
            Err(e) => {
                self.ft_status
                    .disable(&format!("ft.receive failed: {}", errors::chain(&e)));
                Err(VmmError::FtStart(e))
            }
        }
    }
}

/// The primary's config (JSON, from its Hello) with this host's taps, disks and console.
fn localize(json: &str, c: &FtReceiveConfig) -> Result<VmConfig, LocalizeError> {
    Ok(arriving_config(json, &c.net, &c.disks, c.serial.as_ref())?)
}
