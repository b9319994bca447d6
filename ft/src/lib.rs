//! Fault tolerance: the replication stream, checkpoint engine, output gates, heartbeats, arbiter and
//! failover (DESIGN.md). So far: the framed stream, its transports, the VM trait the `vmm`
//! implements, and pre-copy live migration over them.

pub mod bitmap;
pub mod checkpoint;
pub mod frame;
pub mod migration;
pub mod transport;
pub mod vm;

/// The newest stream protocol version this build speaks (announced in Hello). Version 2 adds the
/// Extras frame for FT checkpoints; a version-1 migration stream is still accepted.
pub const PROTOCOL_VERSION: u16 = 2;
