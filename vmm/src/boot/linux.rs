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
    #[error("cannot read the kernel image")]
    ReadKernel(#[source] std::io::Error),
    #[error("not a kernel (neither ELF nor bzImage)")]
    NotAKernel,
    #[error("the bzImage has no 64-bit entry point (boot protocol {version:#x}, xloadflags {xloadflags:#x})")]
    No64BitEntry { version: u16, xloadflags: u16 },
    #[error("cannot load the kernel into guest memory")]
    LoadKernel(#[source] linux_loader::loader::Error),
    #[error("cannot read the initramfs")]
    ReadInitramfs(#[source] std::io::Error),
    #[error("an initramfs of {size} bytes does not fit between the kernel's end {kernel_end:#x} and {limit:#x}")]
    InitramfsTooLarge {
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("cannot write the initramfs into guest memory")]
    WriteInitramfs(#[source] vm_memory::GuestMemoryError),
    #[error("bad kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("the command line is {len} bytes; this kernel takes at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("cannot write the command line into guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("guest memory has {0} RAM ranges, more than the e820 table holds")]
    TooManyE820Entries(usize),
    #[error("cannot write boot_params into guest memory")]
    WriteBootParams(#[source] linux_loader::configurator::Error),
}
