//! VM configuration: the body of `PUT vm.create`, also built from CLI flags.

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
    #[serde(default)]
    pub cpus: CpusConfig,
    #[serde(default)]
    pub memory: MemoryConfig,
    #[serde(default)]
    pub payload: PayloadConfig,
    #[serde(default)]
    pub serial: SerialConfig,
}

/// vCPU topology.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
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
    #[serde(default)]
    pub mode: SerialMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// A configuration that cannot be used, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cpus.boot_vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u8),
    #[error("memory.size must be at least {MIN_MEMORY_BYTES} bytes, got {0}")]
    MemoryTooSmall(u64),
    #[error("memory.size must be a multiple of 4096, got {0}")]
    MemoryUnaligned(u64),
    #[error("memory.size {size} is more than this host allows ({limit} bytes)")]
    MemoryTooLarge { size: u64, limit: u64 },
    #[error("serial.mode File needs serial.file")]
    SerialFileMissing,
    #[error("serial.file is only valid with serial.mode File")]
    SerialFileUnexpected,
    #[error("payload.initramfs needs payload.kernel")]
    InitramfsWithoutKernel,
    #[error("payload.{field}: {path} does not exist or is not a readable file")]
    PayloadFile { field: &'static str, path: String },
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
                if !p.is_file() || std::fs::File::open(p).is_err() {
                    return Err(ConfigError::PayloadFile {
                        field,
                        path: p.display().to_string(),
                    });
                }
            }
        }
        Ok(())
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
