//! `ft.receive`, `ft.enable`, `ft.status`, `ft.promote`, `ft.disable`: the VMM thread checks and
//! connects (so a wrong call is an immediate 4xx with nothing changed), then a pair thread
//! (`crate::ft::pair`) owns the VM and reports back with a `VmmEvent`.
//!
//! Synchronised operations on a protected primary (the pair thread carries them, the API call
//! waits; refused with 409 while the pair is still syncing):
//! * `vm.pause`: the guest pauses after one last checkpoint that tells the backup so; it stays
//!   protected (a backup that goes live from it comes up Paused). `vm.resume` resumes it.
//! * `vm.shutdown`, and `vmm.shutdown` on a pair member: the pair ends on purpose, like a guest
//!   power-off: the backup is told with an Abort and discards its copy (as vSphere powers off
//!   the secondary with the primary), unlike a crash, which closes the stream without one.
//!   `vmm.shutdown` on a backup leaves the pair; its primary goes on unprotected.
//! * `vm.reboot`: the backup is told to discard its copy and wait for a fresh sync on the same
//!   listener; the guest reboots and FT is enabled again with the same settings.
//!
//! `vm.delete`, `vm.snapshot`, `vm.counters` and migrations stay refused with 409 "FT is
//! enabled; ft.disable first"; so is every VM call on a backup.
//!
//! Re-protect: a primary running unprotected (after a failover, or after losing its backup) takes
//! `ft.enable` to a new backup; it keeps the generation it holds (or the arbiter's, if higher),
//! which the next failover's claim goes above.

use super::{apply_overrides, chain, Flow, VmState, Vmm, VmmError};
use crate::api::types::{FtDiskMode, FtEnableConfig, FtReceiveConfig};
use crate::api::VmBox;
use crate::config::{host_memory_limit, VmConfig};
use crate::ft::pair::{
    spawn_backup, spawn_primary, start_generation, BackupSetup, PairCommand, PairHandle,
    PairTiming, PrimaryEnd, PrimarySetup, OP_TIMEOUT,
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
    /// A primary's ft.enable, to protect the guest again after a reboot.
    enable: Option<FtEnableConfig>,
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

/// Smallest backlog bound `ft.enable` takes: below it flow control would throttle an idle guest.
const MIN_BACKLOG_BYTES: u64 = 1 << 20;

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

    /// `ft.enable`: from standalone, or to re-protect a primary running unprotected.
    pub(super) fn ft_enable(&mut self, c: &FtEnableConfig) -> Result<(), VmmError> {
        self.ft_guard().map_err(|_| VmmError::FtAlready)?;
        let cfg = self.require("enable FT on", &[VmState::Running])?.clone();
        let reprotect = match (self.ft_status.role(), self.ft_status.state()) {
            (Role::Standalone, _) => false,
            (Role::Primary, FtState::Unprotected) => true,
            _ => return Err(VmmError::FtAlready),
        };
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
        let peer = Some(endpoint.to_string());
        let entered = if reprotect {
            self.ft_status
                .reprotect(generation, peer, "ft.enable: protecting again")
        } else {
            self.ft_status
                .enable(Role::Primary, generation, peer, "ft.enable")
        };
        entered.map_err(|_| VmmError::FtAlready)?;
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
                max_backlog_bytes: c
                    .max_backlog_bytes
                    .unwrap_or(ft::checkpoint::DEFAULT_MAX_BACKLOG_BYTES)
                    .max(MIN_BACKLOG_BYTES),
                target_pause: ms(c.target_pause_ms, 4),
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
                    enable: Some(c.clone()),
                });
                log::info!("ft: protecting the VM with the backup at {endpoint}");
                Ok(())
            }
            Err(b) => {
                let (vm, why) = *b;
                self.vm = Some(vm);
                let reason = format!("ft.enable failed: {why}");
                if reprotect {
                    let _ = self.ft_status.transition(FtState::Unprotected, &reason);
                } else {
                    self.ft_status.disable(&reason);
                }
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
                    enable: None,
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

    /// The protected primary's pair member, if this VMM is one and its pair thread can take a
    /// synchronised operation now (`Err`: it is still syncing).
    fn ft_primary(&self) -> Option<Result<&FtMember, VmmError>> {
        match &self.ft {
            Some(m) if m.role == Role::Primary => Some(match self.ft_status.state() {
                FtState::Syncing => Err(VmmError::FtSyncing),
                _ => Ok(m),
            }),
            _ => None,
        }
    }

    /// `vm.pause` (`pause`) or `vm.resume` on a protected primary; `None`: no pair here.
    pub(super) fn ft_pause_resume(&mut self, pause: bool) -> Option<Result<(), VmmError>> {
        let (action, from, to) = if pause {
            ("pause", VmState::Running, VmState::Paused)
        } else {
            ("resume", VmState::Paused, VmState::Running)
        };
        let m = match self.ft_primary()? {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        if self.state != from {
            return Some(Err(VmmError::WrongState {
                action,
                state: self.state,
            }));
        }
        let op = if pause {
            PairCommand::Pause
        } else {
            PairCommand::Resume
        };
        // The pair thread answers within OP_TIMEOUT; a little more for the thread's own turn.
        let r = m.handle.op(op, OP_TIMEOUT + Duration::from_secs(1));
        Some(match r {
            Ok(()) => {
                self.state = to;
                log::info!("ft: guest {action}d; still protected");
                Ok(())
            }
            Err(Some(why)) => Err(VmmError::FtOp { action, why }),
            Err(None) => Err(VmmError::FtEndedMeanwhile),
        })
    }

    /// Ends a protected primary's pair synchronously with `c`: the VM back, stopped.
    fn ft_end_primary(&mut self, c: PairCommand) -> Result<(), VmmError> {
        let m = self.ft.take().ok_or(VmmError::FtNotEnabled)?;
        let Some((vm, end)) = m.handle.end(c) else {
            // It ended on its own just now; its event brings the VM back.
            return Err(VmmError::FtEndedMeanwhile);
        };
        log::info!("ft: primary pair thread ended ({end:?})");
        if let Some(mut vm) = vm {
            if let Err(e) = vm.stop() {
                log::error!("stopping the VM: {}", chain(&e));
            }
        }
        self.teardown();
        Ok(())
    }

    /// `vm.shutdown` on a protected primary: the pair ends on purpose, the backup discards.
    pub(super) fn ft_shutdown(&mut self) -> Option<Result<(), VmmError>> {
        if let Err(e) = self.ft_primary()? {
            return Some(Err(e));
        }
        Some(self.ft_end_primary(PairCommand::Shutdown("vm.shutdown on the primary")))
    }

    /// `vm.reboot` on a protected primary: the backup discards its copy and waits; the guest
    /// reboots; FT is enabled again with the same settings (a fresh initial sync). Should that
    /// fail, the guest runs on unprotected (see ft.status) and `ft.enable` can protect it again.
    pub(super) fn ft_reboot(&mut self) -> Option<Result<(), VmmError>> {
        let enable = match self.ft_primary()? {
            Ok(m) => m.enable.clone(),
            Err(e) => return Some(Err(e)),
        };
        if let Err(e) = self.ft_end_primary(PairCommand::Reboot) {
            return Some(Err(e));
        }
        if let Err(e) = self.boot() {
            return Some(Err(e));
        }
        self.ft_status.set_guest_paused(false);
        if let Some(c) = enable {
            if let Err(e) = self.ft_enable(&c) {
                let why = format!(
                    "vm.reboot: the rebooted guest runs UNPROTECTED: ft.enable failed: {}",
                    chain(&e)
                );
                log::error!("ft: {why}");
                // The operator polling ft.status must see it, not only the log.
                self.ft_status.note(&why);
            }
        }
        Some(Ok(()))
    }

    /// `vmm.shutdown` on a pair member: a primary ends its pair on purpose (the backup discards),
    /// a backup leaves (its primary goes on unprotected); either way before the process exits.
    pub(super) fn ft_leave(&mut self) {
        let Some(m) = self.ft.take() else { return };
        if m.role != Role::Primary {
            let _ = m.handle.end(PairCommand::Leave);
            return;
        }
        if let Some((Some(mut vm), _)) = m
            .handle
            .end(PairCommand::Shutdown("vmm.shutdown on the primary"))
        {
            if let Err(e) = vm.stop() {
                log::error!("stopping the VM: {}", chain(&e));
            }
        }
    }

    /// The primary's thread handed the VM back.
    pub(super) fn ft_primary_ended(&mut self, vm: Option<VmBox>, end: PrimaryEnd) -> Flow {
        let powering_off = self.ft.take().is_some_and(|m| m.powering_off);
        let mut vm = vm.map(|v| v.0);
        let stop = powering_off
            || matches!(
                end,
                PrimaryEnd::PoweredOff | PrimaryEnd::Halted | PrimaryEnd::Shutdown
            );
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
            // A guest paused through the pair stays paused (FtPrimary hands it back so).
            if self.state == VmState::Paused {
                self.ft_status.set_guest_paused(true);
            } else {
                self.state = VmState::Running;
            }
        }
        Flow::Continue
    }

    /// The backup went live: the VM runs here now, or is paused here if the primary's guest was
    /// paused at the checkpoint it went live from (its MACs are announced on `vm.resume`).
    pub(super) fn ft_backup_live(&mut self, config: VmConfig, vm: VmBox, paused: bool, why: &str) {
        self.ft = None;
        self.config = Some(config);
        self.vm = Some(vm.0);
        self.state = if paused {
            VmState::Paused
        } else {
            VmState::Running
        };
        self.announce_on_resume = paused;
        // Only now: a client that sees "unprotected" on ft.status finds the VM on vm.info.
        if let Err(e) = self.ft_status.transition(FtState::Unprotected, why) {
            log::error!("ft: status after going live: {}", chain(&e));
        }
        log::warn!(
            "ft: this VMM holds the guest now (failover){}",
            if paused { ", paused" } else { "" }
        );
    }

    /// The backup stopped without going live.
    pub(super) fn ft_backup_ended(&mut self) {
        self.ft = None;
        log::info!("ft: backup ended: {}", self.ft_status.snapshot().reason);
    }
}
