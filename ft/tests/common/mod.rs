//! Test doubles for migration without KVM: a fake VM and a misbehaving proxy.

pub mod fake_vm;
pub mod proxy;
