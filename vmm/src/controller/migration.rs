//! `vm.send-migration` and `vm.receive-migration`: the VMM thread checks, connects and runs the
//! handshake (so that a bad URL, an unreachable peer or a wrong key is the caller's immediate 4xx
//! and the VM runs on untouched), then a migration thread runs ft's pre-copy engine and reports
//! back with a `VmmEvent`. `vm.info` shows the progress meanwhile. With a key (the same file on
//! both ends) the stream is encrypted and authenticated as an FT pair's is; without one a
//! destination listens only on a local address unless the call says `"insecure": true`.

use super::{apply_overrides, chain, VmState, Vmm, VmmError};
use crate::api::{ReceiveMigrationConfig, SendMigrationConfig, VmBox, VmmEvent};
use crate::config::{host_memory_limit, VmConfig};
use crate::migration::incoming::IncomingVm;
use crate::migration::source::SourceVm;
use ft::auth::{check_listener, handshake, PairKey, Purpose, Side};
use ft::migration::{
    accept_source, send_migration, IncomingMigration, ProgressHandle, ReceiveOptions, Role,
    SendOptions,
};
use ft::transport::{self, Endpoint, Listener};
use serde_json::json;
use std::time::Duration;

/// How long `vm.send-migration` tries to reach the destination before answering 400.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence on the stream before a migration is given up (a cut link shows up as this).
/// Generous: the source's first pass over a large, mostly zero guest sends little for a while,
/// and a loaded 2-core host stretches that.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the source waits for the destination to restore the state and ack before it takes
/// the VM back (a restore takes well under a second even for GiB guests).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a destination waits for the source to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest handshake either end waits through (a destination then takes the next connection).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the key a migration call names (400 when the file is missing, short or open to others).
fn load_key(c: Option<&crate::api::types::FtKeyConfig>) -> Result<Option<PairKey>, VmmError> {
    c.map(|k| PairKey::load(&k.path).map_err(VmmError::MigrationKey))
        .transpose()
}

/// The current or last migration.
pub(super) struct MigrationStatus {
    role: Role,
    peer: String,
    progress: ProgressHandle,
    active: bool,
    /// The report of a finished migration, or why it failed.
    outcome: Option<Result<serde_json::Value, String>>,
}

impl MigrationStatus {
    /// What `vm.info` shows under `migration`.
    pub(super) fn to_json(&self) -> serde_json::Value {
        let mut v = json!({
            "role": self.role,
            "peer": self.peer,
            "active": self.active,
            "progress": self.progress.snapshot(),
        });
        match &self.outcome {
            Some(Ok(report)) => v["report"] = report.clone(),
            Some(Err(e)) => v["error"] = json!(e),
            None => {}
        }
        v
    }
}

impl MigrationStatus {
    /// Migration gauges for the metrics endpoint.
    pub(super) fn add_metrics(&self, e: &mut crate::api::metrics::Exposition) {
        let p = self.progress.snapshot();
        let role = serde_json::to_value(self.role)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let l = || vec![("role", role.clone())];
        e.gauge(
            "tandem_migration_active",
            "1 while a migration runs",
            l(),
            f64::from(u8::from(self.active)),
        );
        e.gauge(
            "tandem_migration_bytes",
            "stream bytes of the current or last migration",
            l(),
            p.bytes as f64,
        );
        e.gauge(
            "tandem_migration_round",
            "pre-copy round",
            l(),
            f64::from(p.round),
        );
        e.gauge(
            "tandem_migration_dirty_rate_pages_per_second",
            "guest dirtying rate in the last round",
            l(),
            p.dirty_rate_pages_per_s as f64,
        );
        if let Some(d) = p.downtime_ms {
            e.gauge(
                "tandem_migration_downtime_seconds",
                "guest pause of the last migration",
                l(),
                d as f64 / 1e3,
            );
        }
    }
}

impl Vmm {
    /// Whether a migration thread owns (or is building) the VM right now.
    pub(super) fn migration_active(&self) -> bool {
        self.migration.as_ref().is_some_and(|m| m.active)
    }

    /// `vm.send-migration`: connects, then migrates the running VM in the background.
    pub(super) fn send_migration(&mut self, c: &SendMigrationConfig) -> Result<(), VmmError> {
        let cfg = self.require("migrate", &[VmState::Running])?.clone();
        let endpoint: Endpoint = c.destination_url.parse().map_err(VmmError::MigrationUrl)?;
        let key = load_key(c.key.as_ref())?;
        let conn =
            transport::connect(&endpoint, CONNECT_TIMEOUT).map_err(VmmError::MigrationConnect)?;
        // Before the VM is touched: a destination with another key (or none) is this call's error.
        let (conn, session) = handshake(
            conn,
            key.as_ref(),
            Side::Initiator,
            Purpose::Migration,
            HANDSHAKE_TIMEOUT,
        )
        .map_err(|e| {
            log::error!("migration to {endpoint} refused: {}", chain(&e));
            VmmError::MigrationAuth(e)
        })?;
        if !session.authenticated {
            log::warn!(
                "migration to {endpoint}: the stream is NOT encrypted or authenticated (no key)"
            );
        }
        let Some(vm) = self.vm.take() else {
            return Err(VmmError::NoVm);
        };
        // The thread takes the VM from this slot, so it can be put back if the thread never starts.
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(vm)));
        let thread_slot = slot.clone();
        let opts = SendOptions {
            max_downtime: Duration::from_millis(c.downtime_ms.unwrap_or(300)),
            io_timeout: IO_TIMEOUT,
            commit_timeout: COMMIT_TIMEOUT,
            ..SendOptions::default()
        };
        let progress = ProgressHandle::new(Role::Source);
        progress.set_authenticated(session.authenticated);
        let p = progress.clone();
        let events = self.events.clone();
        let config_json = serde_json::to_string(&cfg).unwrap_or_default();
        let vcpus = cfg.cpus.boot_vcpus;
        let spawned = std::thread::Builder::new()
            .name("tandem_migrate_out".into())
            .spawn(move || {
                crate::seccomp::apply(crate::seccomp::ThreadKind::Migration);
                let taken = thread_slot.lock().map(|mut s| s.take()).ok().flatten();
                let Some(mut vm) = taken else { return };
                let result = {
                    let mut source = SourceVm::new(&mut vm, vcpus, config_json);
                    send_migration(&mut source, conn, &opts, &p)
                };
                let result = result
                    .map(|r| serde_json::to_value(r).unwrap_or_default())
                    .map_err(|e| chain(&e));
                let _ = events.send(VmmEvent::MigrationSent {
                    vm: VmBox(vm),
                    result,
                });
            });
        if let Err(e) = spawned {
            self.vm = slot.lock().ok().and_then(|mut s| s.take());
            return Err(VmmError::MigrationThread(e));
        }
        self.migration = Some(MigrationStatus {
            role: Role::Source,
            peer: endpoint.to_string(),
            progress,
            active: true,
            outcome: None,
        });
        log::info!("migrating to {endpoint}");
        Ok(())
    }

    /// The migration thread is done with the VM.
    pub(super) fn migration_sent(&mut self, vm: VmBox, result: Result<serde_json::Value, String>) {
        let mut vm = vm.0;
        match &result {
            Ok(report) => {
                log::info!("migration completed: {report}");
                // The guest runs on the destination now; this copy must never run again.
                if let Err(e) = vm.stop() {
                    log::error!("stopping the migrated VM: {}", chain(&e));
                }
                self.state = VmState::Migrated;
            }
            Err(e) => {
                log::warn!("migration failed, the VM keeps running here: {e}");
                self.vm = Some(vm);
                self.state = VmState::Running;
            }
        }
        if let Some(m) = &mut self.migration {
            m.active = false;
            m.outcome = Some(result);
        }
    }

    /// `vm.receive-migration`: listens, then receives a VM in the background.
    pub(super) fn receive_migration(&mut self, c: ReceiveMigrationConfig) -> Result<(), VmmError> {
        self.ft_guard()?;
        if self.migration_active() {
            return Err(VmmError::MigrationInProgress);
        }
        if self.config.is_some() {
            return Err(VmmError::VmExists);
        }
        let endpoint: Endpoint = c.receiver_url.parse().map_err(VmmError::MigrationUrl)?;
        let key = load_key(c.key.as_ref())?;
        // Safe by default: a keyless destination runs whatever VM whoever connects sends it.
        check_listener(&endpoint, key.is_some(), c.insecure).map_err(VmmError::InsecureListen)?;
        let listener = Listener::bind(&endpoint).map_err(VmmError::MigrationListen)?;
        let (guest_events, on_failure) = self.new_boot_handlers();
        let progress = ProgressHandle::new(Role::Destination);
        let p = progress.clone();
        let events = self.events.clone();
        let spawned = std::thread::Builder::new()
            .name("tandem_migrate_in".into())
            .spawn(move || {
                crate::seccomp::apply(crate::seccomp::ThreadKind::Migration);
                let result = (|| -> Result<(Box<VmConfig>, VmBox), String> {
                    let (conn, _) = accept_source(
                        &listener,
                        key.as_ref(),
                        ACCEPT_TIMEOUT,
                        HANDSHAKE_TIMEOUT,
                        &p,
                    )
                    .map_err(|e| chain(&e))?;
                    let opts = ReceiveOptions {
                        io_timeout: IO_TIMEOUT,
                    };
                    let incoming =
                        IncomingMigration::accept(conn, &opts, &p).map_err(|e| chain(&e))?;
                    let config = match destination_config(&incoming.identity().config, &c) {
                        Ok(cfg) => cfg,
                        Err(e) => return Err(chain(&incoming.reject(&e))),
                    };
                    let mut vm = match IncomingVm::new(config.clone(), guest_events, on_failure) {
                        Ok(vm) => vm,
                        Err(e) => return Err(chain(&incoming.reject(&chain(&e)))),
                    };
                    incoming.receive_into(&mut vm).map_err(|e| chain(&e))?;
                    let vm = vm
                        .into_vm()
                        .ok_or_else(|| "the stream ended without a VM".to_string())?;
                    Ok((Box::new(config), VmBox(vm)))
                })();
                let _ = events.send(VmmEvent::MigrationReceived { result });
            })
            .map_err(VmmError::MigrationThread)?;
        drop(spawned);
        self.migration = Some(MigrationStatus {
            role: Role::Destination,
            peer: endpoint.to_string(),
            progress,
            active: true,
            outcome: None,
        });
        log::info!("waiting for a migration on {endpoint}");
        Ok(())
    }

    /// The migration thread built (or failed to build) the VM.
    pub(super) fn migration_received(&mut self, result: Result<(Box<VmConfig>, VmBox), String>) {
        let outcome = match result {
            Ok((config, vm)) => {
                log::info!("migration received; the VM runs here now");
                self.config = Some(*config);
                self.vm = Some(vm.0);
                self.state = VmState::Running;
                Ok(json!({}))
            }
            Err(e) => {
                log::warn!("incoming migration failed: {e}");
                Err(e)
            }
        };
        if let Some(m) = &mut self.migration {
            m.active = false;
            m.outcome = Some(outcome);
        }
    }
}

/// The source's config with this host's resources, checked like a `vm.create`.
fn destination_config(source_json: &str, c: &ReceiveMigrationConfig) -> Result<VmConfig, String> {
    let mut cfg: VmConfig = serde_json::from_str(source_json)
        .map_err(|e| format!("the source's VM config is not valid here: {e}"))?;
    apply_overrides(&mut cfg, &c.net, &c.disks, c.serial.as_ref()).map_err(|e| chain(&e))?;
    cfg.validate(host_memory_limit()).map_err(|e| chain(&e))?;
    Ok(cfg)
}
