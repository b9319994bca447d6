//! Puts the payload in guest memory: the kernel (a file, or the built-in guest), initramfs, command
//! line, ACPI tables and `boot_params`, in the order the Linux boot protocol needs them.

use super::acpi::{self, AcpiConfig, MmioDeviceInfo};
use super::linux::{self, BootParamsConfig, LinuxError};
use crate::config::VmConfig;
use crate::vm::memory::GuestMemoryMmap;
use std::fs::File;
use std::io::Cursor;

/// The built-in guest kernel, embedded at build time (see vmm/build.rs).
pub static BUILTIN_GUEST: &[u8] = include_bytes!(env!("TANDEM_GUEST_ELF"));

/// Payload errors.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path}")]
    Kernel {
        path: String,
        #[source]
        source: LinuxError,
    },
    #[error("initramfs {path}")]
    Initramfs {
        path: String,
        #[source]
        source: LinuxError,
    },
    #[error("boot parameters")]
    BootParams(#[source] LinuxError),
    #[error("ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
}

impl PayloadError {
    /// Whether the caller's input (a file that is no kernel, too big an initramfs...) is at fault,
    /// rather than the VMM.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            PayloadError::Open { .. }
                | PayloadError::Kernel { .. }
                | PayloadError::Initramfs { .. }
                | PayloadError::BootParams(LinuxError::CmdlineTooLong { .. })
        )
    }
}

fn open(path: &std::path::Path) -> Result<File, PayloadError> {
    File::open(path).map_err(|source| PayloadError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Loads everything the first instruction needs; returns the kernel entry point.
pub fn load(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    mmio_devices: &[MmioDeviceInfo],
) -> Result<u64, PayloadError> {
    let p = &config.payload;
    let kernel = match &p.kernel {
        Some(path) => linux::load_kernel(mem, &mut open(path)?),
        None => linux::load_kernel(mem, &mut Cursor::new(BUILTIN_GUEST)),
    }
    .map_err(|source| PayloadError::Kernel {
        path: p
            .kernel
            .as_ref()
            .map_or("(built-in guest)".into(), |k| k.display().to_string()),
        source,
    })?;
    let hdr = kernel.setup_header.as_ref();
    let initramfs = match &p.initramfs {
        Some(path) => Some(
            linux::load_initramfs(mem, &mut open(path)?, kernel.end, hdr).map_err(|source| {
                PayloadError::Initramfs {
                    path: path.display().to_string(),
                    source,
                }
            })?,
        ),
        None => None,
    };
    let cmdline = linux::load_cmdline(mem, p.cmdline.as_deref().unwrap_or(""), hdr)
        .map_err(PayloadError::BootParams)?;
    let rsdp = acpi::create_acpi_tables(
        mem,
        &AcpiConfig {
            num_cpus: config.cpus.boot_vcpus,
            mmio_devices,
            serial: config.serial.mode != crate::config::SerialMode::Off,
        },
    )?;
    let params = linux::build_boot_params(
        mem,
        &BootParamsConfig {
            setup_header: kernel.setup_header,
            cmdline,
            initramfs,
            rsdp: Some(rsdp),
        },
    )
    .map_err(PayloadError::BootParams)?;
    linux::write_boot_params(mem, &params).map_err(PayloadError::BootParams)?;
    Ok(kernel.entry.0)
}
