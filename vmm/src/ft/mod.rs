//! FT glue between `ft` (checkpoint engine, epoch clock, detector, arbiter, failover decision) and
//! the real VM (DESIGN.md, "The epoch"). So far: the owned primary VM
//! ([`crate::migration::source::PrimaryVm`]) and the hooks through which the checkpoint engine
//! drives the output gates ([`hooks`]). Not yet: the pair's threads, the API and failover.

pub mod hooks;
