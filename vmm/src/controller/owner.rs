//! Who holds the VM, as one value: a request is one `match` on (request, owner), and combinations
//! that must never exist (a VM here while a migration or a pair thread holds it, a pair member
//! booting a second copy) cannot be written down.

use super::migration::MigrationStatus;
use crate::api::types::FtEnableConfig;
use crate::config::VmConfig;
use crate::ft::pair::PairHandle;
use crate::vm::counters::CounterSource;
use crate::vm::Vm;
use serde::Serialize;

/// Lifecycle state as `vm.info` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum VmState {
    /// Configured by `vm.create` and not booted yet.
    Created,
    /// The vCPUs run.
    Running,
    /// The vCPUs are stopped: `vm.pause`, or a restore without `resume`.
    Paused,
    /// Stopped (`vm.shutdown`, guest power-off, a fenced member); the config stays for `vm.boot`.
    Shutdown,
    /// The VM was migrated away and now runs on the destination.
    Migrated,
    /// An incoming migration is building the VM here.
    Receiving,
    /// The VM was migrating away and the destination may be running it: nobody can say
    /// (its final ack was lost, no arbiter settled it). Paused here until an operator decides:
    /// `vm.delete` if it runs on the destination, `vm.resume` with `{"force": true}` if not.
    OutcomeUnknown,
}

/// A config and no VM: before the first boot (`Created`) or after a shutdown (`Shutdown`).
pub(super) struct Stopped {
    pub config: VmConfig,
    /// Whether it has run before (`Shutdown`) or never (`Created`).
    pub booted: bool,
}

/// A VM this thread holds and runs alone: no pair, no migration.
pub(super) struct Local {
    pub config: VmConfig,
    pub vm: Vm,
    pub paused: bool,
    /// The VM went live paused after a failover: announce its MACs when it resumes.
    pub announce_on_resume: bool,
}

/// A migration thread sends the VM away.
pub(super) struct Outgoing {
    pub config: VmConfig,
    pub counters: CounterSource,
    pub migration: MigrationStatus,
}

/// A migration thread builds a VM here.
pub(super) struct Incoming {
    pub migration: MigrationStatus,
}

/// An FT primary: its pair thread holds the VM.
pub(super) struct Primary {
    pub config: VmConfig,
    pub counters: CounterSource,
    pub pair: PairHandle,
    /// The guest was paused through the pair (`vm.pause`).
    pub paused: bool,
    /// The guest powered off while the pair ran: stop the VM once it comes back.
    pub powering_off: bool,
    /// The guest asked for a reset while the pair ran: reboot it once the VM comes back.
    pub reset_pending: bool,
    /// The `ft.enable` that started the pair, to protect the guest again after a reboot.
    pub enable: FtEnableConfig,
}

/// An FT backup: its pair thread waits for, or holds, the replica.
pub(super) struct Backup {
    pub pair: PairHandle,
}

/// A VM whose migration's outcome is unknown: paused, held here, never resumed on its own.
pub(super) struct InDoubt {
    pub config: VmConfig,
    pub vm: Vm,
    /// Why the outcome is unknown.
    pub reason: String,
}

/// A pair member that must not run the guest (it lost arbitration: the guest runs elsewhere).
/// Booting it again would make two live VMs; `ft.disable` clears it.
pub(super) struct Fenced {
    pub config: VmConfig,
    pub reason: String,
}

impl Kind<'_> {
    /// The lifecycle state `vm.info` shows (`None`: no VM config here).
    pub fn vm_state(self) -> Option<VmState> {
        Some(match self {
            Kind::Empty | Kind::Backup => return None,
            Kind::Created => VmState::Created,
            Kind::Shutdown | Kind::Fenced(_) => VmState::Shutdown,
            Kind::Paused | Kind::Primary { paused: true } => VmState::Paused,
            Kind::Running | Kind::Primary { paused: false } | Kind::MigratingOut => {
                VmState::Running
            }
            Kind::Migrated => VmState::Migrated,
            Kind::Receiving => VmState::Receiving,
            Kind::InDoubt(_) => VmState::OutcomeUnknown,
        })
    }

    /// Whether a VM config is here (a call that brings one is refused).
    pub fn has_config(self) -> bool {
        !matches!(self, Kind::Empty | Kind::Receiving | Kind::Backup)
    }
}

/// Who holds the VM.
pub(super) enum Owner {
    /// No config (`vm.info` answers 404).
    Empty,
    Stopped(Stopped),
    Local(Local),
    MigratingOut(Outgoing),
    /// The VM runs on a migration's destination now; this copy must never run again.
    Migrated(VmConfig),
    Receiving(Incoming),
    Primary(Primary),
    Backup(Backup),
    Fenced(Fenced),
    InDoubt(InDoubt),
}

/// What kind of owner, without what it holds: enough to decide what a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind<'a> {
    Empty,
    Created,
    Shutdown,
    Running,
    Paused,
    MigratingOut,
    Migrated,
    Receiving,
    Primary {
        paused: bool,
    },
    Backup,
    /// With the reason it must not run the guest.
    Fenced(&'a str),
    /// With the reason the migration's outcome is unknown.
    InDoubt(&'a str),
}

impl Owner {
    /// The kind of owner.
    pub fn kind(&self) -> Kind<'_> {
        match self {
            Owner::Empty => Kind::Empty,
            Owner::Stopped(s) if s.booted => Kind::Shutdown,
            Owner::Stopped(_) => Kind::Created,
            Owner::Local(l) if l.paused => Kind::Paused,
            Owner::Local(_) => Kind::Running,
            Owner::MigratingOut(_) => Kind::MigratingOut,
            Owner::Migrated(_) => Kind::Migrated,
            Owner::Receiving(_) => Kind::Receiving,
            Owner::Primary(p) => Kind::Primary { paused: p.paused },
            Owner::Backup(_) => Kind::Backup,
            Owner::Fenced(f) => Kind::Fenced(&f.reason),
            Owner::InDoubt(d) => Kind::InDoubt(&d.reason),
        }
    }

    /// The lifecycle state `vm.info` shows (`None`: no VM config here).
    pub fn vm_state(&self) -> Option<VmState> {
        self.kind().vm_state()
    }

    /// The VM's config, where there is one.
    pub fn config(&self) -> Option<&VmConfig> {
        match self {
            Owner::Empty | Owner::Receiving(_) | Owner::Backup(_) => None,
            Owner::Stopped(Stopped { config, .. })
            | Owner::Local(Local { config, .. })
            | Owner::MigratingOut(Outgoing { config, .. })
            | Owner::Migrated(config)
            | Owner::Primary(Primary { config, .. })
            | Owner::Fenced(Fenced { config, .. })
            | Owner::InDoubt(InDoubt { config, .. }) => Some(config),
        }
    }

    /// Counters of the VM, wherever it is held.
    pub fn counters(&self) -> Option<CounterSource> {
        match self {
            Owner::Local(l) => Some(l.vm.counter_source()),
            Owner::MigratingOut(o) => Some(o.counters.clone()),
            Owner::Primary(p) => Some(p.counters.clone()),
            Owner::InDoubt(d) => Some(d.vm.counter_source()),
            _ => None,
        }
    }

    /// The migration running now, if any.
    pub fn migration(&self) -> Option<&MigrationStatus> {
        match self {
            Owner::MigratingOut(o) => Some(&o.migration),
            Owner::Receiving(i) => Some(&i.migration),
            _ => None,
        }
    }
}
