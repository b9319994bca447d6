//! Host resources named at restore, incoming migration or `ft.receive`: the taps, disk images and
//! console of this host replace the saved (or the source's) ones, by device id.

use crate::api::types::HostOverrides;
use crate::config::VmConfig;

/// An override names a device the VM does not have.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    /// A NIC override names no NIC of the VM.
    #[error("the VM has no NIC {id:?}")]
    NoNic {
        /// The override's `id`.
        id: String,
    },
    /// A disk override names no disk of the VM.
    #[error("the VM has no disk {id:?}")]
    NoDisk {
        /// The override's `id`.
        id: String,
    },
}

/// Puts the caller's taps, disk paths and serial output into `cfg`.
pub fn apply_overrides(cfg: &mut VmConfig, host: &HostOverrides) -> Result<(), OverrideError> {
    for n in &host.net {
        let nic = cfg
            .net
            .iter_mut()
            .find(|x| x.id == n.id)
            .ok_or_else(|| OverrideError::NoNic { id: n.id.clone() })?;
        nic.tap = n.tap.clone();
    }
    for d in &host.disks {
        let disk = cfg
            .disks
            .iter_mut()
            .find(|x| x.id == d.id)
            .ok_or_else(|| OverrideError::NoDisk { id: d.id.clone() })?;
        disk.path = d.path.clone();
    }
    if let Some(s) = &host.serial {
        cfg.serial = s.clone();
    }
    Ok(())
}

/// Why a VM config sent by a peer (a migration's source, an FT primary) cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum ArrivingConfigError {
    /// The peer's config is not JSON of a VM config.
    #[error("the peer's VM config is not valid here")]
    Parse(#[source] serde_json::Error),
    /// This host's overrides name a device the config lacks.
    #[error(transparent)]
    Override(#[from] OverrideError),
    /// The config, with this host's overrides, does not validate here.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// The peer's config (JSON) with this host's resources, checked like a `vm.create`.
pub fn arriving_config(json: &str, host: &HostOverrides) -> Result<VmConfig, ArrivingConfigError> {
    let mut cfg: VmConfig = serde_json::from_str(json).map_err(ArrivingConfigError::Parse)?;
    apply_overrides(&mut cfg, host)?;
    cfg.validate(crate::config::host_memory_limit())?;
    Ok(cfg)
}
