//! The Tandem VMM: VM lifecycle, boot, API and (later) fault tolerance glue.

pub mod api;
pub mod boot;
pub mod config;
pub mod controller;
pub mod ft;
pub mod migration;
pub mod sched;
pub mod seccomp;
pub mod state;
pub mod vm;
