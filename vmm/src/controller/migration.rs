//! `vm.send-migration` and `vm.receive-migration`: the VMM thread checks and connects (so that a
//! bad URL or an unreachable peer is the caller's immediate 4xx), then a migration thread runs
//! ft's pre-copy engine and reports back with a `VmmEvent`. `vm.info` shows the progress meanwhile.

use super::overrides::{arriving_config, ArrivingConfigError};
use super::owner::{Incoming, Local, Outgoing, Owner};
use super::{Step, Vmm, VmmError, VmmEvent};
use crate::api::{ReceiveMigrationConfig, SendMigrationConfig};
use crate::config::VmConfig;
use crate::migration::incoming::IncomingVm;
use crate::migration::source::SourceVm;
use crate::vm::memory::MemoryError;
use crate::vm::Vm;
use ft::migration::{
    send_migration, IncomingMigration, MigrationError, ProgressHandle, ReceiveOptions, Role,
    SendOptions, SendReport,
};
use ft::transport::{self, Endpoint, Listener, TransportError};
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

/// Why an incoming migration did not produce a VM here.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("no source connected")]
    Accept(#[source] TransportError),
    #[error("the migration stream failed")]
    Stream(#[source] MigrationError),
    #[error("the source's VM cannot run here")]
    Refused(#[source] MigrationError),
    #[error("the stream ended without a VM")]
    NoVm,
}

/// Why the source's VM cannot be built here.
#[derive(Debug, thiserror::Error)]
pub enum DestinationConfigError {
    #[error(transparent)]
    Config(#[from] ArrivingConfigError),
    #[error("cannot allocate the guest's memory")]
    Memory(#[source] MemoryError),
}

/// The current or last migration.
#[derive(Clone)]
pub(super) struct MigrationStatus {
    role: Role,
    peer: String,
    progress: ProgressHandle,
    active: bool,
    /// The report of a finished migration, or why it failed (its causes, outermost first).
    outcome: Option<Result<serde_json::Value, Vec<String>>>,
}

impl MigrationStatus {
    fn new(role: Role, peer: String, progress: ProgressHandle) -> Self {
        MigrationStatus {
            role,
            peer,
            progress,
            active: true,
            outcome: None,
        }
    }

    /// Marks it ended with `outcome`.
    fn ended(mut self, outcome: Result<serde_json::Value, &dyn std::error::Error>) -> Self {
        self.active = false;
        self.outcome = Some(outcome.map_err(errors::messages));
        self
    }

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
            Some(Err(e)) => v["error"] = json!(e.join(": ")),
            None => {}
        }
        v
    }

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
    /// `vm.send-migration` on a running VM: connects, then migrates it in the background.
    pub(super) fn send_migration(&mut self, l: Local, c: &SendMigrationConfig) -> Step {
        let endpoint: Endpoint = match c.destination_url.parse() {
            Ok(e) => e,
            Err(e) => return (Owner::Local(l), Err(VmmError::MigrationUrl(e))),
        };
        let conn = match transport::connect(&endpoint, CONNECT_TIMEOUT) {
            Ok(c) => c,
            Err(e) => return (Owner::Local(l), Err(VmmError::MigrationConnect(e))),
        };
        let Local { config, vm, .. } = l;
        let counters = vm.counter_source();
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
        let p = progress.clone();
        let events = self.events.clone();
        let config_json = serde_json::to_string(&config).unwrap_or_default();
        let vcpus = config.cpus.boot_vcpus;
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
                let _ = events.send(VmmEvent::MigrationSent { vm, result });
            });
        if let Err(e) = spawned {
            return match slot.lock().ok().and_then(|mut s| s.take()) {
                Some(vm) => (
                    Owner::Local(Local {
                        config,
                        vm,
                        paused: false,
                        announce_on_resume: false,
                    }),
                    Err(VmmError::MigrationThread(e)),
                ),
                None => (
                    Owner::Stopped(super::owner::Stopped {
                        config,
                        booted: true,
                    }),
                    { Err(VmmError::MigrationThread(e)) },
                ),
            };
        }
        log::info!("migrating to {endpoint}");
        let migration = MigrationStatus::new(Role::Source, endpoint.to_string(), progress);
        (
            Owner::MigratingOut(Outgoing {
                config,
                counters,
                migration,
            }),
            Ok(None),
        )
    }

    /// The migration thread is done with the VM.
    pub(super) fn migration_sent(
        &mut self,
        o: Outgoing,
        mut vm: Vm,
        result: Result<SendReport, MigrationError>,
    ) -> Owner {
        let Outgoing {
            config, migration, ..
        } = o;
        match result {
            Ok(report) => {
                let report = serde_json::to_value(report).unwrap_or_default();
                log::info!("migration completed: {report}");
                // The guest runs on the destination now; this copy must never run again.
                if let Err(e) = vm.stop() {
                    log::error!("stopping the migrated VM: {}", errors::chain(&e));
                }
                self.last_migration = Some(migration.ended(Ok(report)));
                Owner::Migrated(config)
            }
            Err(e) => {
                log::warn!(
                    "migration failed, the VM keeps running here: {}",
                    errors::chain(&e)
                );
                self.last_migration = Some(migration.ended(Err(&e)));
                Owner::Local(Local {
                    config,
                    vm,
                    paused: false,
                    announce_on_resume: false,
                })
            }
        }
    }

    /// `vm.receive-migration` on an empty VMM: listens, then receives a VM in the background.
    pub(super) fn receive_migration(&mut self, c: ReceiveMigrationConfig) -> Step {
        let endpoint: Endpoint = match c.receiver_url.parse() {
            Ok(e) => e,
            Err(e) => return (Owner::Empty, Err(VmmError::MigrationUrl(e))),
        };
        let listener = match Listener::bind(&endpoint) {
            Ok(l) => l,
            Err(e) => return (Owner::Empty, Err(VmmError::MigrationListen(e))),
        };
        let (guest_events, on_failure) = self.new_boot_handlers();
        let progress = ProgressHandle::new(Role::Destination);
        let p = progress.clone();
        let events = self.events.clone();
        let spawned = std::thread::Builder::new()
            .name("tandem_migrate_in".into())
            .spawn(move || {
                crate::seccomp::apply(crate::seccomp::ThreadKind::Migration);
                let result = (|| -> Result<(Box<VmConfig>, Vm), ReceiveError> {
                    let conn = listener
                        .accept(Some(ACCEPT_TIMEOUT))
                        .map_err(ReceiveError::Accept)?;
                    let opts = ReceiveOptions {
                        io_timeout: IO_TIMEOUT,
                        ..ReceiveOptions::default()
                    };
                    let incoming =
                        IncomingMigration::accept(conn, &opts, &p).map_err(ReceiveError::Stream)?;
                    let built = arriving_config(
                        &incoming.identity().config,
                        &c.net,
                        &c.disks,
                        c.serial.as_ref(),
                    )
                    .map_err(DestinationConfigError::Config)
                    .and_then(|config| {
                        IncomingVm::new(config.clone(), guest_events, on_failure)
                            .map(|vm| (config, vm))
                            .map_err(DestinationConfigError::Memory)
                    });
                    let (config, mut vm) = match built {
                        Ok(b) => b,
                        Err(e) => {
                            let refused = incoming.reject(&errors::chain(&e));
                            return Err(ReceiveError::Refused(refused));
                        }
                    };
                    incoming
                        .receive_into(&mut vm)
                        .map_err(ReceiveError::Stream)?;
                    let vm = vm.into_vm().ok_or(ReceiveError::NoVm)?;
                    Ok((Box::new(config), vm))
                })();
                let _ = events.send(VmmEvent::MigrationReceived { result });
            });
        if let Err(e) = spawned {
            return (Owner::Empty, Err(VmmError::MigrationThread(e)));
        }
        log::info!("waiting for a migration on {endpoint}");
        let migration = MigrationStatus::new(Role::Destination, endpoint.to_string(), progress);
        (Owner::Receiving(Incoming { migration }), Ok(None))
    }

    /// The migration thread built (or failed to build) the VM.
    pub(super) fn migration_received(
        &mut self,
        i: Incoming,
        result: Result<(Box<VmConfig>, Vm), ReceiveError>,
    ) -> Owner {
        match result {
            Ok((config, vm)) => {
                log::info!("migration received; the VM runs here now");
                self.last_migration = Some(i.migration.ended(Ok(json!({}))));
                Owner::Local(Local {
                    config: *config,
                    vm,
                    paused: false,
                    announce_on_resume: false,
                })
            }
            Err(e) => {
                log::warn!("incoming migration failed: {}", errors::chain(&e));
                self.last_migration = Some(i.migration.ended(Err(&e)));
                Owner::Empty
            }
        }
    }
}
