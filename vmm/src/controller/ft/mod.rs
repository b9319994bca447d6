//! Pair members on the VMM thread: `ft.enable` and `ft.receive` check and connect here (a wrong
//! call is an immediate 4xx with nothing changed), then a pair thread (`crate::ft::pair`) owns the
//! VM and reports back once it ends.
//!
//! Synchronised operations on a protected primary (the pair thread carries them, the API call
//! waits; refused with 409 while the pair is still syncing):
//! * `vm.pause`: the guest pauses after one last checkpoint that tells the backup so; it stays
//!   protected (a backup that goes live from it comes up Paused). `vm.resume` resumes it.
//! * `vm.shutdown`, and `vmm.shutdown` on a pair member: the pair ends on purpose, like a guest
//!   power-off: the backup is told with an Abort and discards its copy (as vSphere powers off
//!   the secondary with the primary), unlike a crash, which closes the stream without one.
//!   `vmm.shutdown` on a backup leaves the pair; its primary goes on unprotected.
//! * `vm.reboot`: the backup is told to discard its copy and wait for a fresh sync on the same
//!   listener; the guest reboots and FT is enabled again with the same settings.
//!
//! `vm.delete`, `vm.snapshot` and migrations stay refused with 409 "FT is enabled; ft.disable
//! first"; every VM call on a backup is refused too.
//!
//! `ft.verify` on a protected primary: one full replica scrub pass, answered with its report
//! (`verify.rs`); refused with 409 on a backup, while syncing, or on a primary not protected.
//!
//! Re-protect: a primary running unprotected (after a failover, or after losing its backup) takes
//! `ft.enable` to a new backup; it keeps the generation it holds (or the arbiter's, if higher),
//! which the next failover's claim goes above.

mod enable;
mod ops;
mod receive;
mod reports;
mod verify;

pub(super) use verify::{status as verify_status, PendingVerify};

use super::{Vmm, VmmError, VmmEvent};
use crate::api::types::{FtDiskMode, FtKeyConfig};
use crate::ft::pair::{start_generation, ReportSink};
use crate::ft::second_path::HeartbeatPaths;
use devices::virtio::block::gate::DiskMode;
use ft::arbiter::{Arbiter, ArbiterConfig};
use ft::auth::PairKey;
use ft::checkpoint::PairDiskMode;
use std::time::Duration;

/// How long `ft.enable` tries to reach the backup (and to finish the handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn mode(m: FtDiskMode) -> DiskMode {
    match m {
        FtDiskMode::Shared => DiskMode::Shared,
        FtDiskMode::Replicated => DiskMode::Replicated,
    }
}

/// The disk mode as the Hello's pair settings name it.
fn pair_disk_mode(m: FtDiskMode) -> PairDiskMode {
    match m {
        FtDiskMode::Shared => PairDiskMode::Shared,
        FtDiskMode::Replicated => PairDiskMode::Replicated,
    }
}

/// Reads the pair key a call names (400 when the file is missing, short or readable by others).
fn load_key(c: Option<&FtKeyConfig>) -> Result<Option<PairKey>, VmmError> {
    c.map(|k| PairKey::load(&k.path).map_err(VmmError::FtKey))
        .transpose()
}

fn heartbeat_paths(
    listen: Option<&String>,
    peer: Option<&String>,
) -> Result<Option<HeartbeatPaths>, VmmError> {
    HeartbeatPaths::from_api(listen.map(String::as_str), peer.map(String::as_str))
        .map_err(VmmError::FtHeartbeat)
}

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default).max(1))
}

/// Opens the arbiter a call names and the generation a pair starts in.
fn open_arbiter(c: &ArbiterConfig) -> Result<OpenArbiter, VmmError> {
    let arbiter = ft::arbiter::open(c).map_err(VmmError::FtArbiter)?;
    let generation = start_generation(arbiter.as_ref()).map_err(VmmError::FtArbiter)?;
    // Compared at the Hello: two members naming different storage must not pair.
    let identity = arbiter.identity().map_err(VmmError::FtArbiter)?;
    Ok(OpenArbiter {
        arbiter,
        generation,
        identity: identity.to_string(),
    })
}

/// An arbiter a pair will use, the generation it starts in and the store's identity.
struct OpenArbiter {
    arbiter: std::sync::Arc<dyn Arbiter>,
    generation: u64,
    identity: String,
}

impl Vmm {
    /// Where a pair thread reports: the VMM thread's inbox.
    fn report_sink(&self) -> ReportSink {
        let events = self.events.clone();
        Box::new(move |r| {
            let _ = events.send(VmmEvent::Pair(r));
        })
    }
}
