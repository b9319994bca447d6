//! VM configuration: the body of `PUT vm.create`, also built from CLI flags.

use devices::virtio::net::tap::valid_tap_name;
use devices::virtio::net::MacAddr;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Smallest guest memory we accept: the boot structures, the built-in guest and its stacks fit in it.
pub const MIN_MEMORY_BYTES: u64 = 32 << 20;
/// Most vCPUs a VM may have (the MADT and our APIC id space).
pub const MAX_VCPUS: u8 = 64;
/// Default guest memory when the config does not name one.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;

/// Whole VM configuration, Cloud Hypervisor's field names.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// vCPU count; one vCPU when absent.
    #[serde(default)]
    pub cpus: CpusConfig,
    /// Guest RAM size; [`DEFAULT_MEMORY_BYTES`] when absent.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// Kernel, initramfs and command line; all absent boots the built-in guest.
    #[serde(default)]
    pub payload: PayloadConfig,
    /// The 16550 serial port; `Null` (present, output discarded) when absent.
    #[serde(default)]
    pub serial: SerialConfig,
    /// virtio-blk disks, in the order the guest finds them.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs, after the disks.
    #[serde(default)]
    pub net: Vec<NetConfig>,
}

/// vCPU topology.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    /// vCPUs to create and start at boot, 1 to [`MAX_VCPUS`].
    pub boot_vcpus: u8,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig { boot_vcpus: 1 }
    }
}

/// Guest RAM.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Bytes; must be a multiple of 4 KiB.
    pub size: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: DEFAULT_MEMORY_BYTES,
        }
    }
}

/// What to boot. No kernel means the built-in guest.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// A Linux bzImage or ELF kernel on the host; `None` boots the built-in guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// An initramfs loaded beside the kernel; only with `kernel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// The guest command line (the built-in guest reads `workload=` here); the VMM appends
    /// `virtio_mmio.device=` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// Where the 16550 serial port's output goes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub enum SerialMode {
    /// No serial device at all.
    Off,
    /// Device present, output discarded.
    #[default]
    Null,
    /// The VMM's standard output.
    Tty,
    /// Appended to `serial.file`.
    File,
}

/// Serial port configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Where the port's output goes; `Null` when absent.
    #[serde(default)]
    pub mode: SerialMode,
    /// The file output is appended to; required with `File`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// A virtio-blk disk on a raw image file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Unique among disks and NICs; the guest reads its first 20 bytes as the disk serial.
    pub id: String,
    /// The raw image file on the host.
    pub path: PathBuf,
    /// The guest may only read the disk (the image is opened read-only).
    #[serde(default)]
    pub readonly: bool,
}

/// A virtio-net NIC on a host tap interface.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Unique among disks and NICs.
    pub id: String,
    /// Tap interface name (created if missing and the VMM may).
    pub tap: String,
    /// Guest MAC `xx:xx:xx:xx:xx:xx`; none derives a locally administered one from `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Most virtio devices a VM may have: one IOAPIC pin each, from GSI 5 to 23.
pub const MAX_VIRTIO_DEVICES: usize = 19;

/// A configuration that cannot be used, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `cpus.boot_vcpus` is 0 or above [`MAX_VCPUS`].
    #[error("cpus.boot_vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u8),
    /// `memory.size` is below [`MIN_MEMORY_BYTES`].
    #[error("memory.size must be at least {MIN_MEMORY_BYTES} bytes, got {0}")]
    MemoryTooSmall(u64),
    /// `memory.size` is not a multiple of 4 KiB.
    #[error("memory.size must be a multiple of 4096, got {0}")]
    MemoryUnaligned(u64),
    /// `memory.size` is above what this host allows (see [`host_memory_limit`]).
    #[error("memory.size {size} is more than this host allows ({limit} bytes)")]
    MemoryTooLarge {
        /// The bytes asked for.
        size: u64,
        /// The host's limit in bytes.
        limit: u64,
    },
    /// `serial.mode` is `File` but `serial.file` is absent.
    #[error("serial.mode File needs serial.file")]
    SerialFileMissing,
    /// `serial.file` is given with another mode than `File`.
    #[error("serial.file is only valid with serial.mode File")]
    SerialFileUnexpected,
    /// `payload.initramfs` is given without `payload.kernel`.
    #[error("payload.initramfs needs payload.kernel")]
    InitramfsWithoutKernel,
    /// The kernel or initramfs is not a readable regular file.
    #[error("payload.{field}: {path} does not exist or is not a readable file")]
    PayloadFile {
        /// `kernel` or `initramfs`.
        field: &'static str,
        /// The path as given.
        path: String,
    },
    /// A disk or NIC has an empty `id`.
    #[error("device ids must not be empty")]
    EmptyDeviceId,
    /// Two disks or NICs share an `id`.
    #[error("device id {0:?} is used more than once (disks and NICs share one namespace)")]
    DuplicateDeviceId(String),
    /// A disk image is not a readable regular file.
    #[error("disk {id}: {path} does not exist or is not a readable regular file")]
    DiskFile {
        /// The disk's `id`.
        id: String,
        /// The image path as given.
        path: String,
    },
    /// A NIC's `mac` is not six hex bytes or is a multicast address.
    #[error("NIC {id}: {mac:?} is not a unicast MAC address like 52:54:00:12:34:56")]
    BadMac {
        /// The NIC's `id`.
        id: String,
        /// The `mac` as given.
        mac: String,
    },
    /// A NIC's `tap` is not a valid interface name.
    #[error("NIC {id}: tap name {tap:?} must be 1 to 15 characters, without '/', NUL or spaces")]
    BadTapName {
        /// The NIC's `id`.
        id: String,
        /// The `tap` as given.
        tap: String,
    },
    /// There are more disks and NICs than [`MAX_VIRTIO_DEVICES`].
    #[error("{0} disks and NICs are more than the {MAX_VIRTIO_DEVICES} a VM can have")]
    TooManyDevices(usize),
}

impl VmConfig {
    /// Checks everything that can be checked before touching KVM. `host_memory_limit` is the most
    /// guest RAM this host allows (see [`host_memory_limit`]).
    pub fn validate(&self, host_memory_limit: u64) -> Result<(), ConfigError> {
        let n = self.cpus.boot_vcpus;
        if n == 0 || n > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(n));
        }
        let size = self.memory.size;
        if size < MIN_MEMORY_BYTES {
            return Err(ConfigError::MemoryTooSmall(size));
        }
        if !size.is_multiple_of(4096) {
            return Err(ConfigError::MemoryUnaligned(size));
        }
        if size > host_memory_limit {
            return Err(ConfigError::MemoryTooLarge {
                size,
                limit: host_memory_limit,
            });
        }
        match (self.serial.mode, &self.serial.file) {
            (SerialMode::File, None) => return Err(ConfigError::SerialFileMissing),
            (SerialMode::File, Some(_)) => {}
            (_, Some(_)) => return Err(ConfigError::SerialFileUnexpected),
            _ => {}
        }
        if self.payload.initramfs.is_some() && self.payload.kernel.is_none() {
            return Err(ConfigError::InitramfsWithoutKernel);
        }
        for (field, path) in [
            ("kernel", &self.payload.kernel),
            ("initramfs", &self.payload.initramfs),
        ] {
            if let Some(p) = path {
                if !p.is_file() || !readable(p) {
                    return Err(ConfigError::PayloadFile {
                        field,
                        path: p.display().to_string(),
                    });
                }
            }
        }
        self.validate_devices()
    }

    fn validate_devices(&self) -> Result<(), ConfigError> {
        let count = self.disks.len() + self.net.len();
        if count > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(count));
        }
        let mut ids = std::collections::HashSet::new();
        let all_ids = self
            .disks
            .iter()
            .map(|d| &d.id)
            .chain(self.net.iter().map(|n| &n.id));
        for id in all_ids {
            if id.is_empty() {
                return Err(ConfigError::EmptyDeviceId);
            }
            if !ids.insert(id) {
                return Err(ConfigError::DuplicateDeviceId(id.clone()));
            }
        }
        for d in &self.disks {
            let meta = std::fs::metadata(&d.path);
            if !meta.is_ok_and(|m| m.is_file()) || !readable(&d.path) {
                return Err(ConfigError::DiskFile {
                    id: d.id.clone(),
                    path: d.path.display().to_string(),
                });
            }
        }
        for n in &self.net {
            if !valid_tap_name(&n.tap) {
                return Err(ConfigError::BadTapName {
                    id: n.id.clone(),
                    tap: n.tap.clone(),
                });
            }
            if let Some(mac) = &n.mac {
                if !mac.parse::<MacAddr>().is_ok_and(|m| !m.is_multicast()) {
                    return Err(ConfigError::BadMac {
                        id: n.id.clone(),
                        mac: mac.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Fills in what the config leaves to the VMM (NIC MACs), so that `vm.info` shows what the
    /// guest sees.
    pub fn fill_defaults(&mut self) {
        for n in &mut self.net {
            if n.mac.is_none() {
                n.mac = Some(MacAddr::from_id(&n.id).to_string());
            }
        }
    }
}

/// The most guest RAM this host allows: its total physical memory (overcommit is the operator's
/// choice through several VMs, not through one VM larger than the host).
pub fn host_memory_limit() -> u64 {
    // SAFETY: sysconf only reads system values.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages <= 0 || page_size <= 0 {
        return u64::MAX;
    }
    (pages as u64).saturating_mul(page_size as u64)
}

/// Whether this process may read `path`. access(2) rather than opening it: validation runs on
/// the API thread, whose seccomp filter allows no opens.
fn readable(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    unsafe { libc::access(c.as_ptr(), libc::R_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(id: &str, path: &std::path::Path) -> DiskConfig {
        DiskConfig {
            id: id.into(),
            path: path.into(),
            readonly: false,
        }
    }

    fn nic(id: &str, tap: &str, mac: Option<&str>) -> NetConfig {
        NetConfig {
            id: id.into(),
            tap: tap.into(),
            mac: mac.map(Into::into),
        }
    }

    fn check(cfg: &VmConfig) -> Result<(), ConfigError> {
        cfg.validate(u64::MAX)
    }

    #[test]
    fn devices_parse_from_json_with_defaults() {
        let cfg: VmConfig = serde_json::from_str(
            r#"{"disks":[{"id":"d0","path":"/x"}],"net":[{"id":"n0","tap":"tap0"}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.disks[0], disk("d0", std::path::Path::new("/x")));
        assert_eq!(cfg.net[0], nic("n0", "tap0", None));
        let empty: VmConfig = serde_json::from_str("{}").unwrap();
        assert!(empty.disks.is_empty() && empty.net.is_empty());
        assert!(serde_json::from_str::<VmConfig>(
            r#"{"disks":[{"id":"d0","path":"/x","cache":"none"}]}"#
        )
        .is_err());
    }

    #[test]
    fn device_validation() {
        let img = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let p = img.as_path();
        let mut cfg = VmConfig {
            disks: vec![disk("d0", p), disk("d1", p)],
            net: vec![
                nic("n0", "tap0", Some("52:54:00:00:00:01")),
                nic("n1", "tap1", None),
            ],
            ..Default::default()
        };
        assert_eq!(check(&cfg), Ok(()));

        let mut c = cfg.clone();
        c.net[1].id = "d1".into();
        assert_eq!(check(&c), Err(ConfigError::DuplicateDeviceId("d1".into())));
        let mut c = cfg.clone();
        c.disks[0].id = String::new();
        assert_eq!(check(&c), Err(ConfigError::EmptyDeviceId));
        let mut c = cfg.clone();
        c.disks[1].path = "/nonexistent/img".into();
        assert!(matches!(check(&c), Err(ConfigError::DiskFile { .. })));
        let mut c = cfg.clone();
        c.disks[1].path = "/tmp".into();
        assert!(matches!(check(&c), Err(ConfigError::DiskFile { .. })));
        for mac in ["52:54:00:00:00", "zz:54:00:00:00:01", "01:00:5e:00:00:01"] {
            let mut c = cfg.clone();
            c.net[0].mac = Some(mac.into());
            assert!(
                matches!(check(&c), Err(ConfigError::BadMac { .. })),
                "{mac}"
            );
        }
        for tap in ["", "a-name-that-is-too-long"] {
            let mut c = cfg.clone();
            c.net[0].tap = tap.into();
            assert!(
                matches!(check(&c), Err(ConfigError::BadTapName { .. })),
                "{tap:?}"
            );
        }
        let mut c = cfg.clone();
        c.disks = (0..MAX_VIRTIO_DEVICES)
            .map(|i| disk(&format!("d{i}"), p))
            .collect();
        assert_eq!(
            check(&c),
            Err(ConfigError::TooManyDevices(MAX_VIRTIO_DEVICES + 2))
        );

        cfg.fill_defaults();
        assert_eq!(cfg.net[0].mac.as_deref(), Some("52:54:00:00:00:01"));
        assert_eq!(cfg.net[1].mac, Some(MacAddr::from_id("n1").to_string()));
        assert_eq!(check(&cfg), Ok(()));
    }
}
