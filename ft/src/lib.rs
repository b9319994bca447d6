//! Fault tolerance: the replication stream, checkpoint engine, output gates, heartbeats, arbiter and
//! failover (DESIGN.md). So far: the framed stream, its transports, the VM trait the `vmm`
//! implements, and pre-copy live migration over them.

pub mod bitmap;
pub mod frame;
pub mod gate;
pub mod migration;
pub mod transport;
pub mod vm;

/// The stream protocol version this build speaks (announced in Hello).
pub const PROTOCOL_VERSION: u16 = 1;
