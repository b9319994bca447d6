//! A running (or runnable) VM: KVM VM, guest memory, devices and vCPU threads.

pub mod memory;
