//! Linux guests: loading a bzImage or ELF vmlinux, placing the initramfs and command line, and
//! filling `boot_params` (the "zero page") for the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst).

mod bootparams;
mod initramfs;
mod kernel;

pub use bootparams::{
    build_boot_params, e820_map, load_cmdline, write_boot_params, BootParamsConfig, CmdlineInfo,
};
pub use initramfs::{initramfs_addr, load_initramfs, Initramfs};
pub use kernel::{load_kernel, LoadedKernel};

/// Errors while preparing a Linux guest.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// Reading `payload.kernel` from the host failed.
    #[error("cannot read the kernel image")]
    ReadKernel(#[source] std::io::Error),
    /// The kernel file is neither an ELF vmlinux nor a bzImage.
    #[error("not a kernel (neither ELF nor bzImage)")]
    NotAKernel,
    /// The bzImage cannot be entered in 64-bit mode (protocol before 2.12, or XLF_KERNEL_64 clear).
    #[error("the bzImage has no 64-bit entry point (boot protocol {version:#x}, xloadflags {xloadflags:#x})")]
    No64BitEntry {
        /// The boot protocol version in its setup header.
        version: u16,
        /// Its setup header's `xloadflags`.
        xloadflags: u16,
    },
    /// linux-loader could not place the kernel in guest memory.
    #[error("cannot load the kernel into guest memory")]
    LoadKernel(#[source] linux_loader::loader::Error),
    /// Reading `payload.initramfs` from the host failed.
    #[error("cannot read the initramfs")]
    ReadInitramfs(#[source] std::io::Error),
    /// The initramfs does not fit in RAM between the kernel and the highest address it may use.
    #[error("an initramfs of {size} bytes does not fit between the kernel's end {kernel_end:#x} and {limit:#x}")]
    InitramfsTooLarge {
        /// The initramfs's size in bytes.
        size: u64,
        /// Guest physical address where the kernel ends.
        kernel_end: u64,
        /// Where room for it ends: RAM's end below the MMIO hole, or `initrd_addr_max` + 1.
        limit: u64,
    },
    /// Copying the initramfs into guest memory failed.
    #[error("cannot write the initramfs into guest memory")]
    WriteInitramfs(#[source] vm_memory::GuestMemoryError),
    /// linux-loader refused the command line (e.g. a NUL or non-ASCII byte in it).
    #[error("bad kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The command line is longer than the kernel (or our buffer) takes.
    #[error("the command line is {len} bytes; this kernel takes at most {max}")]
    CmdlineTooLong {
        /// Its length in bytes.
        len: usize,
        /// The most bytes taken: the kernel's `cmdline_size`, at most 2047.
        max: usize,
    },
    /// Copying the command line into guest memory failed.
    #[error("cannot write the command line into guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// Guest RAM is split into more ranges than boot_params' e820 table holds.
    #[error("guest memory has {0} RAM ranges, more than the e820 table holds")]
    TooManyE820Entries(usize),
    /// Writing boot_params (the zero page) into guest memory failed.
    #[error("cannot write boot_params into guest memory")]
    WriteBootParams(#[source] linux_loader::configurator::Error),
}
