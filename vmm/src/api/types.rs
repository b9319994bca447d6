//! What the API server hands to the VMM thread, and what it gets back.

pub use super::host::{HostOverrides, RestoreDisk, RestoreNet, WithHost};
use crate::config::VmConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One API call, already parsed and validated for shape (not for state).
#[derive(Debug)]
pub enum ApiRequest {
    /// `GET vmm.ping`: version and pid, a liveness check.
    VmmPing,
    /// `PUT vmm.shutdown`: stop the VM, if any, and exit the VMM.
    VmmShutdown,
    /// `PUT vm.create`: take a VM config, nothing started yet.
    VmCreate(Box<VmConfig>),
    /// `PUT vm.boot`: build and start the created VM.
    VmBoot,
    /// `GET vm.info`: the config and the VM's state.
    VmInfo,
    /// `PUT vm.pause`: stop the vCPUs.
    VmPause,
    /// `PUT vm.resume`: run a paused VM again.
    VmResume,
    /// `vm.resume` with `{"force": true}`: also a VM whose migration's outcome is unknown
    /// (the operator knows the destination does not run it); elsewhere the same as `VmResume`.
    VmResumeForced,
    /// `PUT vm.shutdown`: stop the VM, keeping its config for a later `vm.boot`.
    VmShutdown,
    /// `PUT vm.reboot`: a fresh VM from the same config.
    VmReboot,
    /// `PUT vm.delete`: stop the VM and forget its config.
    VmDelete,
    /// `GET vm.counters`: the devices' counters, by device.
    VmCounters,
    /// `PUT vm.snapshot`: save the paused VM to a directory.
    VmSnapshot(SnapshotConfig),
    /// `PUT vm.restore`: build a VM from a snapshot, with this host's resources.
    VmRestore(Box<RestoreConfig>),
    /// `PUT vm.send-migration`: move the running VM to a destination VMM.
    VmSendMigration(SendMigrationConfig),
    /// Prometheus text; the answer is a JSON string the server sends as text.
    Metrics,
    /// `PUT vm.receive-migration`: wait for a migrating VM and take it over.
    VmReceiveMigration(Box<ReceiveMigrationConfig>),
    /// `ft.receive`: become the backup of a pair.
    FtReceive(Box<FtReceiveConfig>),
    /// `ft.enable`: protect the running VM with a backup.
    FtEnable(Box<FtEnableConfig>),
    /// `GET ft.status`: this member's role, state and figures.
    FtStatus,
    /// `PUT ft.promote`: make a backup go live from its last checkpoint.
    FtPromote,
    /// `PUT ft.disable`: end the pair (a primary runs on alone), or clear a fenced member.
    FtDisable,
    /// `ft.verify`: one full replica scrub pass on a protected primary, answered when done.
    FtVerify(FtVerifyConfig),
}

/// Where the pair's arbiter lives: `{"path": DIR}` on storage both hosts see, or
/// `{"etcd": {...}}`; the same object wherever a member must win a generation.
pub use ft::arbiter::ArbiterConfig;

/// The key both ends hold (`ft.enable` / `ft.receive`, `vm.send-migration` /
/// `vm.receive-migration`): a file of at least 32 random bytes, readable by its owner only. With
/// it the stream (and an FT pair's heartbeats) is encrypted and authenticated; without it on both
/// sides it is neither; on one side only, the connection is refused.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FtKeyConfig {
    /// The key file: at least 32 random bytes, readable by its owner only.
    pub path: PathBuf,
}

/// How the pair shares each disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FtDiskMode {
    /// One image both hosts see; the primary writes it only after commit.
    Shared,
    /// One image per host; the backup applies committed writes to its own.
    Replicated,
}

/// `ft.receive`: on a VMM with no VM, wait for a primary and hold its replica; this host's taps,
/// disks and console (default: the primary's) sit beside these fields.
pub type FtReceiveConfig = WithHost<FtReceiveRequest>;

/// What `ft.receive` asks for, apart from this host's resources.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FtReceiveRequest {
    /// `tcp:ADDR:PORT` to listen on for the primary's stream.
    pub listen: String,
    /// Where the pair's arbiter lives (the primary must name the same store).
    pub arbiter: ArbiterConfig,
    /// How the disks are shared (default: the primary's); given and different from the
    /// primary's, its Hello is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mode: Option<FtDiskMode>,
    /// Silence from the primary after which it counts as failed (default: the primary's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_timeout_ms: Option<u64>,
    /// The pair key (default: none, unencrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<FtKeyConfig>,
    /// Without a key, listen on an address other hosts can reach anyway (default: refused).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// `udp:ADDR:PORT` to receive the primary's heartbeats on, over a second network path
    /// (with `peer_heartbeat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_listen: Option<String>,
    /// `udp:ADDR:PORT` where the primary receives this backup's heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_heartbeat: Option<String>,
}

/// `ft.enable`: on a Running VM, start protecting it with the backup at `peer`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FtEnableConfig {
    /// `tcp:HOST:PORT` where the backup's `ft.receive` listens.
    pub peer: String,
    /// How the disks are shared; the backup must say the same (or nothing).
    pub disk_mode: FtDiskMode,
    /// Where the pair's arbiter lives (the backup must name the same store).
    pub arbiter: ArbiterConfig,
    /// Longest epoch (default 25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval_ms: Option<u64>,
    /// Heartbeat on the stream when idle (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Bound on the staged bytes of checkpoints captured but not acked (default 64 MiB, at
    /// least 1 MiB); flow control throttles the guest to stay under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backlog_bytes: Option<u64>,
    /// The checkpoint pause flow control aims at (default 4): larger lets a guest that
    /// rewrites a large working set run longer epochs, faster, at the cost of longer pauses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pause_ms: Option<u64>,
    /// Silence from the backup after which it counts as failed (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_timeout_ms: Option<u64>,
    /// The pair key (default: none, unencrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<FtKeyConfig>,
    /// `udp:ADDR:PORT` to receive the backup's heartbeats on, over a second network path
    /// (with `peer_heartbeat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_listen: Option<String>,
    /// `udp:ADDR:PORT` where the backup receives this primary's heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_heartbeat: Option<String>,
    /// The background replica scrub compares all of guest memory and the replicated disks with
    /// the backup's copy once per this many seconds (default 300; 0 turns it off, `ft.verify`
    /// still works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrub_period_s: Option<u64>,
}

/// `ft.verify`: how long to wait for the pass; the body may be left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FtVerifyConfig {
    /// Longest wait for the pass, milliseconds (default 30000, at most 50000: the API gives up
    /// on the VMM after 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `vm.send-migration`: where the destination listens, and the pause we accept.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SendMigrationConfig {
    /// `tcp:HOST:PORT` or `unix:PATH`, where a `vm.receive-migration` listens.
    pub destination_url: String,
    /// Longest acceptable guest pause in milliseconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Hand over through this arbiter (the destination must name the same): the VM then runs
    /// on whichever side wins the hand-over's generation, also when the final ack is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arbiter: Option<ArbiterConfig>,
    /// The key the destination holds too (default: none, unencrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<FtKeyConfig>,
}

/// `vm.resume`'s optional body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeConfig {
    /// Resume a VM whose migration's outcome is unknown: the operator checked that the
    /// destination does not run it (default false).
    #[serde(default)]
    pub force: bool,
}

/// `vm.receive-migration`: where to listen; this host's taps, disks and console (default: the
/// source's) sit beside it.
pub type ReceiveMigrationConfig = WithHost<ReceiveMigrationRequest>;

/// What `vm.receive-migration` asks for, apart from this host's resources.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveMigrationRequest {
    /// `tcp:ADDR:PORT` or `unix:PATH` to listen on.
    pub receiver_url: String,
    /// Take the VM over only by winning the source's generation at this arbiter (the source
    /// must name the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arbiter: Option<ArbiterConfig>,
    /// The key the source holds too (default: none, unencrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<FtKeyConfig>,
    /// Without a key, listen on an address other hosts can reach anyway (default: refused).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// `vm.snapshot`: where to write the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// `file:///dir`; the directory must exist.
    pub destination_url: String,
}

/// `vm.restore`: which snapshot; this host's taps, disks and console (default: the saved ones)
/// sit beside it.
pub type RestoreConfig = WithHost<RestoreRequest>;

/// What `vm.restore` asks for, apart from this host's resources.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// `file:///dir` as `vm.snapshot` wrote it.
    pub source_url: String,
    /// Run the VM at once instead of leaving it Paused.
    #[serde(default)]
    pub resume: bool,
}

/// An API call that failed: the HTTP status to answer with and the error chain, outermost first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// The HTTP status to answer with (not in the body).
    #[serde(skip)]
    pub status: u16,
    /// The error's message followed by each `source()` in turn.
    pub error: Vec<String>,
}

impl ApiError {
    /// Builds an API error from any error, walking its `source()` chain.
    pub fn from_error(status: u16, err: &dyn std::error::Error) -> Self {
        ApiError {
            status,
            error: errors::messages(err),
        }
    }

    /// An API error with a single message.
    pub fn new(status: u16, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            error: vec![msg.into()],
        }
    }
}

/// Successful answer: `None` is 204 No Content, `Some` is 200 with that JSON body.
pub type ApiResponse = Result<Option<serde_json::Value>, ApiError>;
