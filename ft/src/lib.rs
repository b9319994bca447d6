//! Fault tolerance: the replication stream, checkpoint engine, output gates, heartbeats, arbiter and
//! failover (DESIGN.md). So far: the framed stream, its transports, the VM trait the `vmm`
//! implements, pre-copy live migration over them, and the FT building blocks the checkpoint engine
//! uses: `status` (state machine, ft.status), `heartbeat` (UDP second path, channel hook, failure
//! detector), `arbiter` (per-generation split-brain fencing) and `failover` (the decision).

pub mod arbiter;
pub mod bitmap;
pub mod failover;
pub mod frame;
pub mod heartbeat;
pub mod migration;
pub mod status;
pub mod transport;
pub mod vm;

/// The stream protocol version this build speaks (announced in Hello).
pub const PROTOCOL_VERSION: u16 = 1;
