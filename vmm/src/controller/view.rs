//! What the read-only calls (`vm.info`, `vm.counters`, `ft.status`, metrics, `vmm.ping`) answer
//! from. The VMM thread publishes it after every change; the API and metrics threads read it
//! themselves, so a dashboard's scrape never waits behind a slow call (an `ft.enable` reaching
//! for a silent peer, a pause waiting for a checkpoint).

use super::migration::MigrationStatus;
use super::owner::{Owner, VmState};
use super::VmmError;
use crate::api::metrics::Exposition;
use crate::config::VmConfig;
use crate::vm::counters::CounterSource;
use ft::status::StatusHandle;
use serde_json::json;
use std::sync::{Arc, PoisonError, RwLock};

/// One published state of the VMM.
#[derive(Clone, Default)]
struct Published {
    config: Option<VmConfig>,
    state: Option<VmState>,
    /// The migration running now, or the last one.
    migration: Option<MigrationStatus>,
    counters: Option<CounterSource>,
    /// VM builds so far (boots, reboots, restores, incoming migrations, failovers).
    boots: u64,
}

/// The readers' side of the VMM: cheap to clone, safe to read from any thread.
#[derive(Clone)]
pub struct View {
    published: Arc<RwLock<Published>>,
    ft: StatusHandle,
}

impl View {
    /// A view of a VMM with no VM, whose FT status lives in `ft`.
    pub(super) fn new(ft: StatusHandle) -> View {
        View {
            published: Arc::default(),
            ft,
        }
    }

    /// Publishes what `owner` holds now (the VMM thread, after every change).
    pub(super) fn publish(
        &self,
        owner: &Owner,
        last_migration: Option<&MigrationStatus>,
        boots: u64,
    ) {
        let next = Published {
            config: owner.config().cloned(),
            state: owner.vm_state(),
            migration: owner.migration().or(last_migration).cloned(),
            counters: owner.counters(),
            boots,
        };
        *self
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner) = next;
    }

    fn read(&self) -> Published {
        self.published
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `vmm.ping`.
    pub fn ping(&self) -> serde_json::Value {
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "features": ["kvm"],
        })
    }

    /// `vm.info`: config, state and the current or last migration.
    pub fn info(&self) -> Result<serde_json::Value, VmmError> {
        let p = self.read();
        let migration = p.migration.as_ref().map(MigrationStatus::to_json);
        let state = p.state.ok_or(VmmError::NoVm)?;
        let mut info = match &p.config {
            Some(cfg) => json!({
                "config": cfg,
                "state": state,
                "memory_actual_size": cfg.memory.size,
            }),
            // A destination still receiving has no VM yet, only the migration to report.
            None => json!({ "state": state }),
        };
        if let Some(m) = migration {
            info["migration"] = m;
        }
        Ok(info)
    }

    /// `vm.counters`: per vCPU and per device, while a VM runs (here or in a pair thread).
    pub fn counters(&self) -> Result<serde_json::Value, VmmError> {
        let p = self.read();
        match (p.state, p.counters) {
            (Some(VmState::Running | VmState::Paused), Some(c)) => Ok(json!(c.read())),
            (None, _) => Err(VmmError::NoVm),
            (Some(state), _) => Err(VmmError::WrongState {
                action: "read counters of",
                state,
            }),
        }
    }

    /// `ft.status`.
    pub fn ft_status(&self) -> serde_json::Value {
        serde_json::to_value(self.ft.snapshot()).unwrap_or_default()
    }

    /// The Prometheus exposition of the VMM and its VM.
    pub fn metrics(&self) -> String {
        let p = self.read();
        let mut e = Exposition::default();
        e.gauge(
            "tandem_build_info",
            "Tandem version",
            vec![("version", env!("CARGO_PKG_VERSION").to_string())],
            1.0,
        );
        for s in [
            VmState::Created,
            VmState::Running,
            VmState::Paused,
            VmState::Shutdown,
            VmState::Migrated,
            VmState::Receiving,
            VmState::OutcomeUnknown,
        ] {
            e.gauge(
                "tandem_vm_state",
                "1 for the VM's current lifecycle state",
                vec![("state", format!("{s:?}"))],
                f64::from(u8::from(p.state == Some(s))),
            );
        }
        if let Some(cfg) = &p.config {
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
            p.boots as f64,
        );
        if let Some(c) = &p.counters {
            e.add_vm_counters(&c.read());
        }
        if let Some(m) = &p.migration {
            m.add_metrics(&mut e);
        }
        crate::api::ft_metrics::add_ft(&mut e, &self.ft.snapshot(), &self.ft.counters());
        e.render()
    }
}
