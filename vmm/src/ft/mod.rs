//! FT glue between `ft` (checkpoint engine, epoch clock, detector, arbiter, failover decision) and
//! the real VM (DESIGN.md, "The epoch"). So far: the owned primary VM
//! ([`crate::migration::source::PrimaryVm`]) and the hooks through which the checkpoint engine
//! drives the output gates ([`hooks`]), and each side's thread ([`pair`]): checkpointing,
//! failure detection, arbitration, failover, and the VM operations carried to the backup
//! (pause, resume, shutdown, reboot); [`second_path`]: UDP heartbeats and the rule that uses them;
//! [`disks`]: the replicated disks the initial sync copies, on either side;
//! [`scrub`]: the replicated disks as the replica scrub reads and repairs them;
//! [`replica_fault`]: a test-only hook that corrupts a backup's copy on purpose.

pub mod disks;
pub mod hooks;
pub mod pair;
pub mod replica_fault;
pub mod scrub;
pub mod second_path;
