//! The VMM thread: owns the VM, applies API calls and guest events one at a time, and keeps the
//! VM's lifecycle state (Created → Running ⇄ Paused → Shutdown).

use crate::api::types::{RestoreDisk, RestoreNet};
use crate::api::{ApiError, ApiRequest, ApiResponse, RestoreConfig, SnapshotConfig, VmmEvent};
use crate::config::{host_memory_limit, ConfigError, SerialConfig, VmConfig};
use crate::state::snapshot::{self, SnapshotError};
use crate::vm::vcpu::VcpuFailureHandler;
use crate::vm::{Vm, VmError};
use devices::GuestEvent;
use devices::GuestEventHandler;
use serde::Serialize;
use serde_json::json;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

mod ft_pair;
mod migration;

/// Lifecycle state as `vm.info` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum VmState {
    Created,
    Running,
    Paused,
    Shutdown,
    /// The VM was migrated away and now runs on the destination.
    Migrated,
}

/// Why an API call could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("no VM has been created")]
    NoVm,
    #[error("a VM already exists; delete it first")]
    VmExists,
    #[error("cannot {action} a VM that is {state:?}")]
    WrongState {
        action: &'static str,
        state: VmState,
    },
    #[error("invalid VM config")]
    Config(#[from] ConfigError),
    #[error("cannot boot the VM")]
    Boot(#[source] VmError),
    #[error("cannot {action} the VM")]
    Vm {
        action: &'static str,
        #[source]
        source: VmError,
    },
    #[error("cannot snapshot the VM")]
    Snapshot(#[source] SnapshotError),
    #[error("cannot snapshot the VM")]
    SnapshotVm(#[source] VmError),
    #[error("cannot restore the VM")]
    Restore(#[source] SnapshotError),
    #[error("cannot restore the VM")]
    RestoreVm(#[source] VmError),
    #[error("restore: {0}")]
    RestoreOverride(String),
    #[error("a migration is in progress")]
    MigrationInProgress,
    #[error("bad migration URL")]
    MigrationUrl(#[source] ft::transport::TransportError),
    #[error("cannot reach the migration destination")]
    MigrationConnect(#[source] ft::transport::TransportError),
    #[error("cannot listen for the migration")]
    MigrationListen(#[source] ft::transport::TransportError),
    #[error("cannot start the migration thread")]
    MigrationThread(#[source] std::io::Error),
    #[error("FT is enabled; ft.disable first (only pause, resume, shutdown and reboot are carried to the backup)")]
    FtEnabled,
    #[error("FT is still syncing the backup; try again once protected")]
    FtSyncing,
    #[error("the FT pair ended meanwhile; try again")]
    FtEndedMeanwhile,
    #[error("cannot {action} the protected VM: {why}")]
    FtOp { action: &'static str, why: String },
    #[error("this VMM is already in an FT pair; ft.disable first")]
    FtAlready,
    #[error("only a backup can be promoted")]
    FtNotBackup,
    #[error("FT is not enabled")]
    FtNotEnabled,
    #[error("the backup has no complete checkpoint yet: nothing to go live from")]
    FtNothingToPromote,
    #[error("arbiter: {0}")]
    FtArbiter(String),
    #[error("cannot reach the FT peer: {0}")]
    FtPeer(String),
    #[error("cannot start FT: {0}")]
    FtStart(String),
    #[error("pair key: {0}")]
    FtKey(String),
    #[error("the FT peer was refused: {0}")]
    FtAuth(String),
    #[error("heartbeat path: {0}")]
    FtHeartbeat(String),
    /// A keyless listener other hosts could reach, without `"insecure": true`.
    #[error(transparent)]
    InsecureListen(ft::auth::AuthError),
    #[error("migration key")]
    MigrationKey(#[source] ft::auth::AuthError),
    #[error("the migration destination was refused")]
    MigrationAuth(#[source] ft::auth::AuthError),
}

impl VmmError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            VmmError::NoVm => 404,
            VmmError::VmExists | VmmError::WrongState { .. } | VmmError::MigrationInProgress => 409,
            VmmError::FtEnabled
            | VmmError::FtAlready
            | VmmError::FtNotBackup
            | VmmError::FtNotEnabled
            | VmmError::FtNothingToPromote
            | VmmError::FtSyncing
            | VmmError::FtEndedMeanwhile => 409,
            VmmError::FtOp { .. } => 500,
            VmmError::FtArbiter(_)
            | VmmError::FtPeer(_)
            | VmmError::FtKey(_)
            | VmmError::FtAuth(_)
            | VmmError::FtHeartbeat(_)
            | VmmError::InsecureListen(_)
            | VmmError::MigrationKey(_)
            | VmmError::MigrationAuth(_) => 400,
            VmmError::FtStart(_) => 500,
            // A malformed URL, an unreachable peer or an address we cannot listen on.
            VmmError::MigrationUrl(_)
            | VmmError::MigrationConnect(_)
            | VmmError::MigrationListen(_) => 400,
            VmmError::MigrationThread(_) => 500,
            VmmError::Config(_) => 400,
            // A payload, disk or tap the VMM cannot open is the caller's input; the rest is ours.
            VmmError::Boot(e) | VmmError::RestoreVm(e) if e.is_input_error() => 400,
            // A bad URL, a missing directory or file, a corrupt state: the caller's input.
            VmmError::Snapshot(_) | VmmError::Restore(_) | VmmError::RestoreOverride(_) => 400,
            VmmError::Boot(_)
            | VmmError::Vm { .. }
            | VmmError::SnapshotVm(_)
            | VmmError::RestoreVm(_) => 500,
        }
    }
}

impl From<VmmError> for ApiError {
    fn from(e: VmmError) -> Self {
        ApiError::from_error(e.status(), &e)
    }
}

/// What the event loop does after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Exit,
}

/// The VMM: at most one VM, as in Cloud Hypervisor.
pub struct Vmm {
    events: Sender<VmmEvent>,
    config: Option<VmConfig>,
    vm: Option<Vm>,
    state: VmState,
    /// Bumped at every boot, so that events from a VM already torn down are recognised.
    boot_id: u64,
    /// Exit the process when the guest powers off (no API socket to report it through).
    exit_on_guest_shutdown: bool,
    /// The current or last migration, for `vm.info`.
    migration: Option<migration::MigrationStatus>,
    /// This VMM's FT role and state (`ft.status`); standalone when no pair.
    ft_status: ::ft::status::StatusHandle,
    /// The running pair member, if any (its thread owns or awaits the VM).
    ft: Option<ft_pair::FtMember>,
    /// The VM went live paused after a failover: announce its MACs when it resumes.
    announce_on_resume: bool,
}

impl Vmm {
    /// A VMM whose guest events and vCPU failures come back through `events`.
    pub fn new(events: Sender<VmmEvent>, exit_on_guest_shutdown: bool) -> Self {
        Vmm {
            events,
            config: None,
            vm: None,
            state: VmState::Shutdown,
            boot_id: 0,
            exit_on_guest_shutdown,
            migration: None,
            ft_status: ::ft::status::StatusHandle::new(),
            ft: None,
            announce_on_resume: false,
        }
    }

    /// Runs until `vmm.shutdown` (or guest power-off when so configured).
    pub fn run(mut self, rx: Receiver<VmmEvent>) {
        while let Ok(ev) = rx.recv() {
            if self.handle_event(ev) == Flow::Exit {
                break;
            }
        }
        self.teardown();
    }

    /// Applies one event.
    pub fn handle_event(&mut self, ev: VmmEvent) -> Flow {
        match ev {
            VmmEvent::Api(req, reply) => {
                let exit = matches!(req, ApiRequest::VmmShutdown);
                let resp = self.handle_api(req);
                let ok = resp.is_ok();
                // The caller may have gone away; nothing to do about it here.
                let _ = reply.send(resp);
                if exit && ok {
                    return Flow::Exit;
                }
            }
            VmmEvent::GuestReset { boot_id } if boot_id == self.boot_id => {
                devices::guest_warn!("guest requested a reset");
                if let Err(e) = self.reboot() {
                    log::error!("reset failed: {}", chain(&e));
                }
            }
            VmmEvent::GuestPowerOff { boot_id } if boot_id == self.boot_id => {
                log::info!("guest powered off");
                if self.ft_guest_stopped() {
                    return Flow::Continue;
                }
                self.teardown();
                if self.exit_on_guest_shutdown {
                    return Flow::Exit;
                }
            }
            VmmEvent::VcpuFailed { boot_id, id, error } if boot_id == self.boot_id => {
                log::error!("vCPU {id} failed: {error}; shutting the VM down");
                if self.ft_guest_stopped() {
                    return Flow::Continue;
                }
                self.teardown();
                if self.exit_on_guest_shutdown {
                    return Flow::Exit;
                }
            }
            VmmEvent::MigrationSent { vm, result } => self.migration_sent(vm, result),
            VmmEvent::MigrationReceived { result } => self.migration_received(result),
            VmmEvent::FtPrimaryEnded { vm, end } => return self.ft_primary_ended(vm, end),
            VmmEvent::FtBackupLive {
                config,
                vm,
                paused,
                reason,
            } => self.ft_backup_live(*config, vm, paused, &reason),
            VmmEvent::FtBackupEnded => self.ft_backup_ended(),
            stale => log::debug!("ignoring event from an earlier boot: {stale:?}"),
        }
        Flow::Continue
    }

    /// Answers one API call.
    pub fn handle_api(&mut self, req: ApiRequest) -> ApiResponse {
        let r = match req {
            ApiRequest::VmmPing => Ok(Some(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "features": ["kvm"],
            }))),
            ApiRequest::VmmShutdown => {
                // A pair member ends its pair on purpose first: a primary's backup is told and
                // discards its copy instead of taking this for a crash.
                self.ft_leave();
                self.teardown();
                Ok(None)
            }
            ApiRequest::VmCreate(cfg) => self.create(*cfg).map(|_| None),
            ApiRequest::VmBoot => self.boot().map(|_| None),
            ApiRequest::VmInfo => self.info().map(Some),
            ApiRequest::VmPause => self.pause().map(|_| None),
            ApiRequest::VmResume => self.resume().map(|_| None),
            ApiRequest::VmShutdown => self.shutdown().map(|_| None),
            ApiRequest::VmReboot => self.reboot().map(|_| None),
            ApiRequest::VmDelete => self.delete().map(|_| None),
            ApiRequest::VmCounters => self.counters().map(Some),
            ApiRequest::Metrics => Ok(Some(serde_json::Value::String(self.metrics()))),
            ApiRequest::VmSnapshot(c) => self.snapshot(&c).map(|_| None),
            ApiRequest::VmSendMigration(c) => self.send_migration(&c).map(|_| None),
            ApiRequest::VmReceiveMigration(c) => self.receive_migration(*c).map(|_| None),
            ApiRequest::VmRestore(c) => self.restore(*c).map(|_| None),
            ApiRequest::FtReceive(c) => self.ft_receive(*c).map(|_| None),
            ApiRequest::FtEnable(c) => self.ft_enable(&c).map(|_| None),
            ApiRequest::FtStatus => Ok(Some(self.ft_status_json())),
            ApiRequest::FtPromote => self.ft_promote().map(|_| None),
            ApiRequest::FtDisable => self.ft_disable().map(|_| None),
        };
        r.map_err(ApiError::from)
    }

    /// Stores a config (`vm.create`).
    pub fn create(&mut self, cfg: VmConfig) -> Result<(), VmmError> {
        self.ft_guard()?;
        if self.migration_active() {
            return Err(VmmError::MigrationInProgress);
        }
        if self.config.is_some() {
            return Err(VmmError::VmExists);
        }
        cfg.validate(host_memory_limit())?;
        let mut cfg = cfg;
        cfg.fill_defaults();
        self.config = Some(cfg);
        self.state = VmState::Created;
        Ok(())
    }

    fn require(&self, action: &'static str, ok: &[VmState]) -> Result<&VmConfig, VmmError> {
        self.ft_guard()?;
        if self.migration_active() {
            return Err(VmmError::MigrationInProgress);
        }
        let cfg = self.config.as_ref().ok_or(VmmError::NoVm)?;
        if !ok.contains(&self.state) {
            return Err(VmmError::WrongState {
                action,
                state: self.state,
            });
        }
        Ok(cfg)
    }

    /// Builds and starts the VM (`vm.boot`).
    pub fn boot(&mut self) -> Result<(), VmmError> {
        let cfg = self
            .require("boot", &[VmState::Created, VmState::Shutdown])?
            .clone();
        let (guest_events, on_failure) = self.new_boot_handlers();
        let mut vm = Vm::new(&cfg, guest_events, on_failure).map_err(VmmError::Boot)?;
        vm.start().map_err(VmmError::Boot)?;
        self.vm = Some(vm);
        self.state = VmState::Running;
        Ok(())
    }

    /// Writes config, state and memory of the paused VM into a directory (`vm.snapshot`).
    pub fn snapshot(&mut self, c: &SnapshotConfig) -> Result<(), VmmError> {
        let cfg = self.require("snapshot", &[VmState::Paused])?.clone();
        let vm = self.vm.as_ref().ok_or(VmmError::NoVm)?;
        let dir = snapshot::dir_from_url(&c.destination_url).map_err(VmmError::Snapshot)?;
        snapshot::check_dir(&dir).map_err(VmmError::Snapshot)?;
        let t0 = Instant::now();
        let (state, times) = vm.capture().map_err(VmmError::SnapshotVm)?;
        let t1 = Instant::now();
        let mem = vm
            .save_memory(&dir.join(snapshot::MEMORY_FILE))
            .map_err(VmmError::SnapshotVm)?;
        let t2 = Instant::now();
        snapshot::write(&dir, &cfg, &state).map_err(VmmError::Snapshot)?;
        log::info!(
            "snapshot to {}: state {:?} (vCPUs {:?}, irqchip/PIT/clock {:?}, devices {:?}), \
             memory {:?} ({} of {} bytes non-zero), files {:?}",
            dir.display(),
            t1 - t0,
            times.vcpus,
            times.kvm,
            times.devices,
            t2 - t1,
            mem.data_bytes,
            mem.total_bytes,
            t2.elapsed()
        );
        Ok(())
    }

    /// Rebuilds a VM from a snapshot directory in a VMM that has none (`vm.restore`).
    pub fn restore(&mut self, c: RestoreConfig) -> Result<(), VmmError> {
        self.ft_guard()?;
        if self.migration_active() {
            return Err(VmmError::MigrationInProgress);
        }
        if self.config.is_some() {
            return Err(VmmError::VmExists);
        }
        let dir = snapshot::dir_from_url(&c.source_url).map_err(VmmError::Restore)?;
        snapshot::check_dir(&dir).map_err(VmmError::Restore)?;
        let mut cfg = snapshot::read_config(&dir).map_err(VmmError::Restore)?;
        apply_overrides(&mut cfg, &c.net, &c.disks, c.serial.as_ref())?;
        cfg.validate(host_memory_limit())?;
        let state = snapshot::read_state(&dir).map_err(VmmError::Restore)?;
        let t0 = Instant::now();
        let (guest_events, on_failure) = self.new_boot_handlers();
        let vm = Vm::restore(
            &cfg,
            &state,
            &dir.join(snapshot::MEMORY_FILE),
            guest_events,
            on_failure,
        )
        .map_err(VmmError::RestoreVm)?;
        log::info!("restored from {} in {:?}", dir.display(), t0.elapsed());
        if c.resume {
            vm.resume();
            self.state = VmState::Running;
        } else {
            self.state = VmState::Paused;
        }
        self.vm = Some(vm);
        self.config = Some(cfg);
        Ok(())
    }

    /// Starts a new boot generation and the handlers its VM reports through.
    fn new_boot_handlers(&mut self) -> (GuestEventHandler, VcpuFailureHandler) {
        self.boot_id += 1;
        let boot_id = self.boot_id;
        let events = self.events.clone();
        let guest_events = Arc::new(move |e: GuestEvent| {
            let ev = match e {
                GuestEvent::Reset => VmmEvent::GuestReset { boot_id },
                GuestEvent::PowerOff => VmmEvent::GuestPowerOff { boot_id },
            };
            let _ = events.send(ev);
        });
        let events = self.events.clone();
        let on_failure = Arc::new(move |id: u8, error: String| {
            let _ = events.send(VmmEvent::VcpuFailed { boot_id, id, error });
        });
        (guest_events, on_failure)
    }

    fn info(&self) -> Result<serde_json::Value, VmmError> {
        let migration = self.migration.as_ref().map(|m| m.to_json());
        let Some(cfg) = self.config.as_ref() else {
            // A destination still receiving has no VM yet, only the migration to report.
            return match migration {
                Some(m) if self.migration_active() => Ok(json!({
                    "state": "Receiving",
                    "migration": m,
                })),
                _ => Err(VmmError::NoVm),
            };
        };
        let mut info = json!({
            "config": cfg,
            "state": self.state,
            "memory_actual_size": cfg.memory.size,
        });
        if let Some(m) = migration {
            info["migration"] = m;
        }
        Ok(info)
    }

    fn pause(&mut self) -> Result<(), VmmError> {
        if let Some(r) = self.ft_pause_resume(true) {
            return r;
        }
        self.require("pause", &[VmState::Running])?;
        if let Some(vm) = &self.vm {
            vm.pause().map_err(|source| VmmError::Vm {
                action: "pause",
                source,
            })?;
        }
        self.ft_status.set_guest_paused(true);
        self.state = VmState::Paused;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), VmmError> {
        if let Some(r) = self.ft_pause_resume(false) {
            return r;
        }
        self.require("resume", &[VmState::Paused])?;
        if let Some(vm) = &mut self.vm {
            vm.resume();
            // Went live paused after a failover: the LAN still looks for it on the old host.
            if std::mem::take(&mut self.announce_on_resume) {
                vm.announce();
            }
        }
        self.ft_status.set_guest_paused(false);
        self.state = VmState::Running;
        Ok(())
    }

    fn shutdown(&mut self) -> Result<(), VmmError> {
        if let Some(r) = self.ft_shutdown() {
            return r;
        }
        self.require("shut down", &[VmState::Running, VmState::Paused])?;
        self.teardown();
        Ok(())
    }

    fn reboot(&mut self) -> Result<(), VmmError> {
        if let Some(r) = self.ft_reboot() {
            return r;
        }
        self.require("reboot", &[VmState::Running, VmState::Paused])?;
        self.teardown();
        self.boot()
    }

    fn delete(&mut self) -> Result<(), VmmError> {
        self.ft_guard()?;
        if self.migration_active() {
            return Err(VmmError::MigrationInProgress);
        }
        self.config.as_ref().ok_or(VmmError::NoVm)?;
        self.teardown();
        self.config = None;
        Ok(())
    }

    fn counters(&self) -> Result<serde_json::Value, VmmError> {
        self.require("read counters of", &[VmState::Running, VmState::Paused])?;
        let c = self.vm.as_ref().map(|vm| vm.counters()).unwrap_or_default();
        Ok(json!(c))
    }

    /// The Prometheus exposition of the VMM and its VM.
    fn metrics(&self) -> String {
        let mut e = crate::api::metrics::Exposition::default();
        e.gauge(
            "tandem_build_info",
            "Tandem version",
            vec![("version", env!("CARGO_PKG_VERSION").to_string())],
            1.0,
        );
        let current = match (&self.config, self.migration_active()) {
            (None, true) => Some("Receiving".to_string()),
            (None, false) => None,
            (Some(_), _) => serde_json::to_value(self.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string)),
        };
        for s in [
            "Created",
            "Running",
            "Paused",
            "Shutdown",
            "Migrated",
            "Receiving",
        ] {
            let on = current.as_deref() == Some(s);
            e.gauge(
                "tandem_vm_state",
                "1 for the VM's current lifecycle state",
                vec![("state", s.to_string())],
                f64::from(u8::from(on)),
            );
        }
        if let Some(cfg) = &self.config {
            e.gauge(
                "tandem_vm_vcpus",
                "vCPUs",
                vec![],
                f64::from(cfg.cpus.boot_vcpus),
            );
            e.gauge(
                "tandem_vm_memory_bytes",
                "guest RAM",
                vec![],
                cfg.memory.size as f64,
            );
        }
        e.counter(
            "tandem_vm_boots_total",
            "VM builds (boots, reboots, restores, incoming migrations)",
            vec![],
            self.boot_id as f64,
        );
        if let Some(vm) = &self.vm {
            e.add_vm_counters(&vm.counters());
        }
        if let Some(m) = &self.migration {
            m.add_metrics(&mut e);
        }
        crate::api::ft_metrics::add_ft(
            &mut e,
            &self.ft_status.snapshot(),
            &self.ft_status.counters(),
        );
        e.render()
    }

    /// Stops the vCPUs and frees the VM; the config stays for a later boot.
    fn teardown(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            if let Err(e) = vm.stop() {
                log::error!("stopping the VM: {}", chain(&e));
            }
        }
        if self.config.is_some() {
            self.state = VmState::Shutdown;
        }
        // Events already queued by the old VM's threads now refer to a stale boot.
        self.boot_id += 1;
    }
}

/// Puts the restore request's taps, disk paths and serial output into the saved config.
/// Host resources named at restore or migration replace the saved ones, by device id.
fn apply_overrides(
    cfg: &mut VmConfig,
    net: &[RestoreNet],
    disks: &[RestoreDisk],
    serial: Option<&SerialConfig>,
) -> Result<(), VmmError> {
    for n in net {
        let nic = cfg.net.iter_mut().find(|x| x.id == n.id).ok_or_else(|| {
            VmmError::RestoreOverride(format!("the snapshot has no NIC {:?}", n.id))
        })?;
        nic.tap = n.tap.clone();
    }
    for d in disks {
        let disk = cfg.disks.iter_mut().find(|x| x.id == d.id).ok_or_else(|| {
            VmmError::RestoreOverride(format!("the snapshot has no disk {:?}", d.id))
        })?;
        disk.path = d.path.clone();
    }
    if let Some(s) = serial {
        cfg.serial = s.clone();
    }
    Ok(())
}

/// An error and its causes on one line, for logs.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    ApiError::from_error(0, e).error.join(": ")
}
