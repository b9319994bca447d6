//! Fault tolerance: the replication stream, checkpoint engine, output gates, heartbeats, arbiter and
//! failover (DESIGN.md). Nothing is implemented yet; this crate only reserves its place in the
//! workspace so that `vmm` can depend on it without a layout change later.
