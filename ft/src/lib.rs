//! Fault tolerance: the replication stream, checkpoint engine, output gates, heartbeats, arbiter and
//! failover (DESIGN.md). So far: the framed stream, its transports, its authentication (`auth`:
//! pair key, handshake, encrypted records), the VM trait the `vmm` implements, pre-copy live migration
//! over them, the checkpoint engine (`checkpoint`: primary
//! epochs, backup staging/ack/apply, go-live), and the FT building blocks around it: `gate` (the
//! epoch clock and output rule the device gates follow), `status` (state machine, ft.status),
//! `heartbeat` (UDP second path, channel hook, failure detector), `arbiter` (per-generation
//! split-brain fencing), `failover` (the decision) and `scrub` (the replica scrub, which checks
//! the backup's copy against the primary's and heals it). The `vmm` wires them into a pair
//! (`vmm::ft`).

pub mod arbiter;
pub mod auth;
pub mod bitmap;
pub mod checkpoint;
pub mod disk;
pub mod failover;
pub mod frame;
pub mod gate;
pub mod heartbeat;
pub mod migration;
pub mod scrub;
pub mod status;
pub mod thread_hook;
pub mod transport;
pub mod vm;

/// The newest stream protocol version this build speaks (announced in Hello). Version 2 adds the
/// Extras frame for FT checkpoints, version 3 the FT Commit's `CommitInfo` (pause, guest paused),
/// version 4 delta page entries in FT checkpoints, version 5 the FT Hello's pair settings, the
/// backup's EndConfirmed answer to an intended end, the replicated disks' copy in the FT initial
/// sync (DiskBlocks, the Hello's disk list), a backup's withdrawal, the shared-disk lease in each
/// FT checkpoint's extras (fencing) and the migration hand-over (a source that never resumes
/// once the destination may run: `migration::handover`); version 6 the VMM's state format 2
/// in the vCPU and device state frames (the frames themselves are unchanged, but a peer of
/// version 5 or older cannot read what they carry, so both purposes need 6).
pub const PROTOCOL_VERSION: u16 = 6;
