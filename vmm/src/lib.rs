//! The Tandem VMM: VM lifecycle, boot, API and (later) fault tolerance glue.

// Not yet: the public items of this crate still lack their one-line docs (issue 10 item 8);
// the workspace lint holds for ft, errors, tandem-require and tandem-testkit.
#![allow(missing_docs)]

pub mod api;
pub mod boot;
pub mod config;
pub mod controller;
pub mod ft;
pub mod migration;
pub mod seccomp;
pub mod state;
pub mod vm;
