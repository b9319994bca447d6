//! `ft.receive`, `ft.enable`, `ft.status`, `ft.promote`, `ft.disable`: the VMM thread checks and
//! connects (so a wrong call is an immediate 4xx with nothing changed), then a pair thread
//! (`crate::ft::pair`) owns the VM and reports back with a `VmmEvent`.
//!
//! While a pair runs, `vm.pause`, `vm.resume`, `vm.shutdown`, `vm.reboot`, `vm.delete`,
//! `vm.snapshot`, `vm.counters` and migrations are refused with 409 "FT is enabled; ft.disable
//! first": carrying them to the backup (synchronised operations) is a later step. A guest
//! power-off on the primary ends the pair on purpose (the backup is told with an Abort and
//! discards its copy), unlike a crash, which closes the stream without one.

use super::{apply_overrides, chain, Flow, VmState, Vmm, VmmError};
use crate::api::types::{FtDiskMode, FtEnableConfig, FtReceiveConfig};
use crate::api::VmBox;
use crate::config::{host_memory_limit, VmConfig};
use crate::ft::pair::{
    spawn_backup, spawn_primary, start_generation, BackupSetup, PairCommand, PairHandle,
    PairTiming, PrimaryEnd, PrimarySetup,
};
use crate::ft::second_path::HeartbeatPaths;
use devices::virtio::block::gate::DiskMode;
use ft::arbiter::FileArbiter;
use ft::auth::{handshake, PairKey, Side};
use ft::status::{FtState, Role};
use ft::transport::{self, Endpoint, Listener};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running pair member.
pub(super) struct FtMember {
    role: Role,
    handle: PairHandle,
    /// The guest powered off while the pair ran: stop the VM once it comes back.
    powering_off: bool,
}

fn mode(m: FtDiskMode) -> DiskMode {
    match m {
        FtDiskMode::Shared => DiskMode::Shared,
        FtDiskMode::Replicated => DiskMode::Replicated,
    }
}

/// Reads the pair key a call names (400 when the file is missing, short or readable by others).
fn load_key(c: Option<&crate::api::types::FtKeyConfig>) -> Result<Option<PairKey>, VmmError> {
    c.map(|k| PairKey::load(&k.path).map_err(|e| VmmError::FtKey(chain(&e))))
        .transpose()
}

fn heartbeat_paths(
    listen: Option<&String>,
    peer: Option<&String>,
) -> Result<Option<HeartbeatPaths>, VmmError> {
    HeartbeatPaths::from_api(listen.map(String::as_str), peer.map(String::as_str))
        .map_err(VmmError::FtHeartbeat)
}

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default).max(1))
}

impl Vmm {
    /// 409 while a pair thread owns (or waits for) the VM.
    pub(super) fn ft_guard(&self) -> Result<(), VmmError> {
        match self.ft {
            Some(_) => Err(VmmError::FtEnabled),
            None => Ok(()),
        }
    }

    fn open_arbiter(path: &std::path::Path) -> Result<(FileArbiter, u64), VmmError> {
        let arbiter = FileArbiter::open(path).map_err(|e| VmmError::FtArbiter(chain(&e)))?;
        let generation = start_generation(&arbiter).map_err(VmmError::FtArbiter)?;
        Ok((arbiter, generation))
    }

    /// `ft.enable`.
    pub(super) fn ft_enable(&mut self, c: &FtEnableConfig) -> Result<(), VmmError> {
        self.ft_guard().map_err(|_| VmmError::FtAlready)?;
        let cfg = self.require("enable FT on", &[VmState::Running])?.clone();
        if self.ft_status.role() != Role::Standalone {
            return Err(VmmError::FtAlready);
        }
        let (arbiter, generation) = Self::open_arbiter(&c.arbiter.path)?;
        let endpoint: Endpoint = c.peer.parse().map_err(VmmError::MigrationUrl)?;
        if !matches!(endpoint, Endpoint::Tcp { .. }) {
            return Err(VmmError::FtPeer("the peer must be tcp:HOST:PORT".into()));
        }
        let key = load_key(c.key.as_ref())?;
        let heartbeat = heartbeat_paths(c.heartbeat_listen.as_ref(), c.peer_heartbeat.as_ref())?;
        let conn = transport::connect(&endpoint, CONNECT_TIMEOUT)
            .map_err(|e| VmmError::FtPeer(chain(&e)))?;
        // Before anything is gated or sent: a peer with another key (or none) is this call's
        // error, and the VM runs on untouched.
        let (conn, session) = handshake(conn, key.as_ref(), Side::Initiator, CONNECT_TIMEOUT)
            .map_err(|e| {
                let why = chain(&e);
                log::error!("ft.enable: the backup at {endpoint} was refused: {why}");
                self.ft_status.note(&format!(
                    "ft.enable refused the backup at {endpoint}: {why}"
                ));
                VmmError::FtAuth(why)
            })?;
        if !session.authenticated {
            log::warn!(
                "ft: the replication stream to {endpoint} is NOT authenticated (no pair key): \
                 anyone on the link can alter or forge it"
            );
        }
        self.ft_status
            .enable(
                Role::Primary,
                generation,
                Some(endpoint.to_string()),
                "ft.enable",
            )
            .map_err(|_| VmmError::FtAlready)?;
        self.ft_status.set_authenticated(session.authenticated);
        let vm = self.vm.take().ok_or(VmmError::NoVm)?;
        let setup = PrimarySetup {
            vm,
            config: cfg,
            conn,
            disk_mode: mode(c.disk_mode),
            arbiter,
            status: self.ft_status.clone(),
            timing: PairTiming {
                checkpoint_interval: ms(c.checkpoint_interval_ms, 25),
                heartbeat_interval: ms(c.heartbeat_interval_ms, 100),
                failure_timeout: ms(c.failure_timeout_ms, 1000),
            },
            events: self.events.clone(),
            session,
            heartbeat,
        };
        match spawn_primary(setup) {
            Ok(handle) => {
                self.ft = Some(FtMember {
                    role: Role::Primary,
                    handle,
                    powering_off: false,
                });
                log::info!("ft: protecting the VM with the backup at {endpoint}");
                Ok(())
            }
            Err(b) => {
                let (vm, why) = *b;
                self.vm = Some(vm);
                self.ft_status.disable(&format!("ft.enable failed: {why}"));
                Err(VmmError::FtStart(why))
            }
        }
    }

    /// `ft.receive`.
    pub(super) fn ft_receive(&mut self, c: FtReceiveConfig) -> Result<(), VmmError> {
        self.ft_guard().map_err(|_| VmmError::FtAlready)?;
        if self.migration_active() {
            return Err(VmmError::MigrationInProgress);
        }
        if self.config.is_some() {
            return Err(VmmError::VmExists);
        }
        if self.ft_status.role() != Role::Standalone {
            return Err(VmmError::FtAlready);
        }
        let (arbiter, generation) = Self::open_arbiter(&c.arbiter.path)?;
        let key = load_key(c.key.as_ref())?;
        let heartbeat = heartbeat_paths(c.heartbeat_listen.as_ref(), c.peer_heartbeat.as_ref())?;
        let endpoint: Endpoint = c.listen.parse().map_err(VmmError::MigrationUrl)?;
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
        let overrides = c.clone();
        let setup = BackupSetup {
            listener,
            localize: Box::new(move |json: &str| -> Result<VmConfig, String> {
                let mut cfg: VmConfig = serde_json::from_str(json)
                    .map_err(|e| format!("the primary's VM config is not valid here: {e}"))?;
                apply_overrides(
                    &mut cfg,
                    &overrides.net,
                    &overrides.disks,
                    overrides.serial.as_ref(),
                )
                .map_err(|e| chain(&e))?;
                cfg.validate(host_memory_limit()).map_err(|e| chain(&e))?;
                Ok(cfg)
            }),
            disk_mode: mode(c.disk_mode.unwrap_or(FtDiskMode::Shared)),
            arbiter,
            status: self.ft_status.clone(),
            failure_timeout: ms(c.failure_timeout_ms, 1000),
            guest_events,
            on_failure,
            events: self.events.clone(),
            key,
            heartbeat,
        };
        match spawn_backup(setup) {
            Ok(handle) => {
                self.ft = Some(FtMember {
                    role: Role::Backup,
                    handle,
                    powering_off: false,
                });
                log::info!("ft: backup waiting for a primary on {endpoint}");
                Ok(())
            }
            Err(e) => {
                self.ft_status.disable(&format!("ft.receive failed: {e}"));
                Err(VmmError::FtStart(e.to_string()))
            }
        }
    }

    /// `ft.status`.
    pub(super) fn ft_status_json(&self) -> serde_json::Value {
        serde_json::to_value(self.ft_status.snapshot()).unwrap_or_default()
    }

    /// `ft.promote`: only a backup can.
    pub(super) fn ft_promote(&mut self) -> Result<(), VmmError> {
        match &self.ft {
            Some(m) if m.role == Role::Backup && self.ft_status.state() == FtState::Syncing => {
                Err(VmmError::FtNothingToPromote)
            }
            Some(m) if m.role == Role::Backup => {
                m.handle.command(PairCommand::Promote);
                Ok(())
            }
            _ => Err(VmmError::FtNotBackup),
        }
    }

    /// `ft.disable`: ends a running pair member; on a halted or failed-over member, resets the
    /// status to standalone.
    pub(super) fn ft_disable(&mut self) -> Result<(), VmmError> {
        if let Some(m) = &self.ft {
            m.handle.command(PairCommand::Disable);
            return Ok(());
        }
        if self.ft_status.role() == Role::Standalone {
            return Err(VmmError::FtNotEnabled);
        }
        self.ft_status.disable("ft.disable");
        Ok(())
    }

    /// The guest powered off (or a vCPU failed) while this VMM is an FT primary: end the pair
    /// on purpose; the VM is stopped when the pair thread hands it back. `false` if no pair.
    pub(super) fn ft_guest_stopped(&mut self) -> bool {
        match &mut self.ft {
            Some(m) if m.role == Role::Primary => {
                m.powering_off = true;
                m.handle.command(PairCommand::PowerOff);
                true
            }
            _ => false,
        }
    }

    /// The primary's thread handed the VM back.
    pub(super) fn ft_primary_ended(&mut self, vm: Option<VmBox>, end: PrimaryEnd) -> Flow {
        let powering_off = self.ft.take().is_some_and(|m| m.powering_off);
        let mut vm = vm.map(|v| v.0);
        let stop = powering_off || matches!(end, PrimaryEnd::PoweredOff | PrimaryEnd::Halted);
        log::info!("ft: primary pair thread ended ({end:?})");
        if stop || vm.is_none() {
            if let Some(mut v) = vm.take() {
                if let Err(e) = v.stop() {
                    log::error!("stopping the VM: {}", chain(&e));
                }
            }
            self.teardown();
            if powering_off && self.exit_on_guest_shutdown {
                return Flow::Exit;
            }
        } else {
            self.vm = vm;
            self.state = VmState::Running;
        }
        Flow::Continue
    }

    /// The backup went live: the VM runs here now.
    pub(super) fn ft_backup_live(&mut self, config: VmConfig, vm: VmBox) {
        self.ft = None;
        self.config = Some(config);
        self.vm = Some(vm.0);
        self.state = VmState::Running;
        log::warn!("ft: this VMM runs the guest now (failover)");
    }

    /// The backup stopped without going live.
    pub(super) fn ft_backup_ended(&mut self) {
        self.ft = None;
        log::info!("ft: backup ended: {}", self.ft_status.snapshot().reason);
    }
}
