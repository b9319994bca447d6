//! Output gates (DESIGN.md, output rule): "network TX and disk writes of epoch N are held until
//! the backup acks checkpoint N".
//!
//! This module owns the FT side of the gates: the shared [`EpochClock`], the [`DiskWrite`]
//! record that checkpoints carry, the [`OutputGate`] trait every gate implements and the
//! [`Releaser`] thread that moves held output out when the clock allows it. The gates
//! themselves live next to the devices they gate (`devices::virtio::net::gate`,
//! `devices::virtio::block::gate`), because they wrap the devices' single output points
//! (`TxSink`, `RawDisk`).
//!
//! Why `devices` depends on `ft` and not the reverse: `ft` is a leaf crate (no KVM, no virtio,
//! four small dependencies) that must stay fuzzable and talk to the VM only through traits, so it
//! must not know virtio; the epoch, the output rule and the records that travel in checkpoints
//! are FT protocol concepts, so they belong here; and a gate that reads `EpochClock` directly
//! costs one atomic load per output, where glue through the `vmm` would need a newtype per gate.
//!
//! Wiring (for the checkpoint engine and the VMM):
//! 1. one `Arc<EpochClock>` per VM; `VirtioDevices::enable_ft` gives it to every device, which
//!    builds its gate, and returns the gates as `Arc<dyn OutputGate>` plus the disk gates'
//!    write-log handles;
//! 2. `Releaser::spawn(clock, gates)` once; `clock.protect()` when the first checkpoint is taken;
//! 3. per epoch, with vCPUs and device workers stopped: `n = clock.capture()?`, then each disk
//!    gate's `take_epoch_writes(n)` into checkpoint N;
//! 4. on the backup's ack of N: `clock.commit(n)?`; the releaser makes disk writes of ≤ N durable,
//!    which raises `clock.release_bound()`, and then releases the network frames of ≤ N;
//! 5. after winning arbitration `clock.unprotect()`; after losing it `clock.halt()`;
//!    while protected, shared-disk writes need the clock's [`Lease`] (renewed by each ack);
//! 6. backup side: `devices::virtio::block::gate::apply_writes` on a committed epoch's writes
//!    (replicated mode), or on every committed epoch not yet known durable after failover
//!    (shared mode); it is idempotent.

mod epoch;
mod lease;
mod releaser;
mod write;

pub use epoch::{ClockError, DurabilityId, EpochClock, Protection, FIRST_EPOCH};
pub use lease::{FenceError, Lease, LeaseTerms};
pub use releaser::{OutputGate, Releaser};
pub use write::DiskWrite;
