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
    /// The kernel or initramfs file cannot be opened.
    #[error("cannot open {path}")]
    Open {
        /// The file as the config names it.
        path: String,
        /// What `open(2)` said.
        #[source]
        source: std::io::Error,
    },
    /// The kernel cannot be loaded.
    #[error("kernel {path}")]
    Kernel {
        /// The kernel file as the config names it.
        path: String,
        /// Why it cannot be loaded.
        #[source]
        source: LinuxError,
    },
    /// The initramfs cannot be loaded.
    #[error("initramfs {path}")]
    Initramfs {
        /// The initramfs file as the config names it.
        path: String,
        /// Why it cannot be loaded.
        #[source]
        source: LinuxError,
    },
    /// The command line or boot_params cannot be written.
    #[error("boot parameters")]
    BootParams(#[source] LinuxError),
    /// The ACPI tables cannot be built or written.
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

/// The user's command line plus `virtio_mmio.device=<size>@<addr>:<irq>` for each device: Linux
/// finds the devices through ACPI as well (the second registration of a window fails quietly),
/// and guests without ACPI find them this way.
pub fn kernel_cmdline(user: Option<&str>, mmio_devices: &[MmioDeviceInfo]) -> String {
    let mut parts: Vec<String> = user
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .into_iter()
        .collect();
    for d in mmio_devices {
        parts.push(format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            d.len >> 10,
            d.addr,
            d.irq
        ));
    }
    parts.join(" ")
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
    let cmdline = kernel_cmdline(p.cmdline.as_deref(), mmio_devices);
    let cmdline = linux::load_cmdline(mem, &cmdline, hdr).map_err(PayloadError::BootParams)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_devices_go_on_the_command_line() {
        let devs = [
            MmioDeviceInfo {
                addr: 0xd000_0000,
                len: 0x1000,
                irq: 5,
            },
            MmioDeviceInfo {
                addr: 0xd000_1000,
                len: 0x1000,
                irq: 6,
            },
        ];
        assert_eq!(
            kernel_cmdline(Some("console=ttyS0 "), &devs),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(
            kernel_cmdline(None, &devs[..1]),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(kernel_cmdline(Some("quiet"), &[]), "quiet");
    }
}
