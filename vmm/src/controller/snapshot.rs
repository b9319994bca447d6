//! `vm.snapshot` (a paused standalone VM into a directory) and `vm.restore` (a VM from one, in an
//! empty VMM).

// Host-side: snapshot and restore calls.
#![allow(clippy::disallowed_macros)]

use super::overrides::apply_overrides;
use super::owner::{Local, Owner};
use super::{SnapshotFailure, Step, Vmm, VmmError};
use crate::api::{RestoreConfig, SnapshotConfig};
use crate::config::{host_memory_limit, VmConfig};
use crate::state::snapshot;
use crate::vm::Vm;
use std::time::Instant;

impl Vmm {
    /// Writes config, state and memory of the paused VM into a directory.
    pub(super) fn snapshot(&mut self, l: Local, c: &SnapshotConfig) -> Step {
        let r = write_snapshot(&l.vm, &l.config, c).map_err(VmmError::Snapshot);
        (Owner::Local(l), r.map(|_| None))
    }

    /// Rebuilds a VM from a snapshot directory, paused unless `resume` says otherwise.
    pub(super) fn restore(&mut self, c: RestoreConfig) -> Step {
        match self.read_snapshot(&c) {
            Ok((config, vm)) => {
                if c.request.resume {
                    vm.resume();
                }
                let l = Local {
                    config,
                    vm,
                    paused: !c.request.resume,
                    announce_on_resume: false,
                };
                (Owner::Local(l), Ok(None))
            }
            Err(e) => (Owner::Empty, Err(VmmError::Restore(e))),
        }
    }

    fn read_snapshot(&mut self, c: &RestoreConfig) -> Result<(VmConfig, Vm), SnapshotFailure> {
        let dir = snapshot::dir_from_url(&c.request.source_url)?;
        snapshot::check_dir(&dir)?;
        let mut cfg = snapshot::read_config(&dir)?;
        apply_overrides(&mut cfg, &c.host)?;
        cfg.validate(host_memory_limit())?;
        let state = snapshot::read_state(&dir)?;
        let t0 = Instant::now();
        let handlers = self.new_boot_handlers();
        let vm = Vm::restore(&cfg, &state, &dir.join(snapshot::MEMORY_FILE), handlers)?;
        log::info!("restored from {} in {:?}", dir.display(), t0.elapsed());
        Ok((cfg, vm))
    }
}

fn write_snapshot(vm: &Vm, cfg: &VmConfig, c: &SnapshotConfig) -> Result<(), SnapshotFailure> {
    let dir = snapshot::dir_from_url(&c.destination_url)?;
    snapshot::check_dir(&dir)?;
    let t0 = Instant::now();
    let (state, times) = vm.capture()?;
    let t1 = Instant::now();
    let mem = vm.save_memory(&dir.join(snapshot::MEMORY_FILE))?;
    let t2 = Instant::now();
    snapshot::write(&dir, cfg, &state)?;
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
