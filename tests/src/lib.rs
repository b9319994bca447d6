//! Test support: start real `tandem` processes, talk to them over their API socket with
//! `api_client`, and watch the guest's serial console.
//!
//! A test first says what it needs from the host; where that is missing it is skipped (and
//! listed in the skip report), or fails where `.ci/run` declared it (`TANDEM_REQUIRE`):
//!
//! ```no_run
//! use tandem_tests::require;
//!
//! fn a_test() {
//!     require!(kvm, netns); // also: tap, gcc, curl, jq, etcd, prometheus, docker, tcpdump, hwvirt
//!     // Anything else: a name and a probe that does what the test will do.
//!     require!("minio" => tandem_tests::require::probe::command("minio", &["--version"]));
//! }
//! ```
//!
//! A test that can never run on our CI hosts gets `#[ignore = "why"]` on top (see
//! `tests/tests/linux_guest.rs`). Details: the `tandem_require` crate (tests/require).

pub mod bench;
pub mod capture;
pub mod client;
pub mod dashboard;
pub mod docker;
pub mod etcd;
pub mod ft;
pub mod ft_disks;
pub mod ft_pair;
pub mod guest;
pub mod handover_proxy;
pub mod metrics;
pub mod nemesis;
pub mod net;
pub mod pair;
pub mod process;
pub mod prometheus;
pub mod serial;
pub mod stall;
pub mod tamper;

pub use process::Tandem;
pub use serial::SerialLog;

use std::path::{Path, PathBuf};

/// Every metric family `tandem` exports (the metrics test fails on one not listed here, the
/// dashboard test on a query of one not listed here).
pub const METRIC_FAMILIES: &[&str] = &[
    "tandem_build_info",
    "tandem_vm_state",
    "tandem_vm_vcpus",
    "tandem_vm_memory_bytes",
    "tandem_vm_boots_total",
    "tandem_device_worker_panics_total",
    "tandem_log_lines_suppressed_total",
    "tandem_vcpu_exits_total",
    "tandem_vcpu_io_exits_total",
    "tandem_vcpu_mmio_exits_total",
    "tandem_vcpu_unhandled_io_total",
    "tandem_vcpu_unhandled_mmio_total",
    "tandem_net_rx_frames_total",
    "tandem_net_rx_dropped_total",
    "tandem_net_tx_frames_total",
    "tandem_net_tx_dropped_total",
    "tandem_serial_tx_bytes_total",
    "tandem_serial_tx_lost_bytes_total",
    "tandem_migration_active",
    "tandem_migration_bytes",
    "tandem_migration_round",
    "tandem_migration_dirty_rate_pages_per_second",
    "tandem_migration_downtime_seconds",
    "tandem_ft_role",
    "tandem_ft_state",
    "tandem_ft_generation",
    "tandem_ft_last_committed_epoch",
    "tandem_ft_checkpoints_total",
    "tandem_ft_checkpoint_pause_seconds",
    "tandem_ft_checkpoint_bytes",
    "tandem_ft_replicated_bytes_total",
    "tandem_ft_checkpoint_pages_total",
    "tandem_ft_backlog_checkpoints",
    "tandem_ft_backlog_bytes",
    "tandem_ft_backlog_limit_bytes",
    "tandem_ft_pause_step_seconds_total",
    "tandem_ft_throttle_ratio",
    "tandem_ft_hot_pages",
    "tandem_ft_epoch_interval_seconds",
    "tandem_ft_acks_total",
    "tandem_ft_ack_age_seconds",
    "tandem_ft_heartbeats_sent_total",
    "tandem_ft_heartbeats_received_total",
    "tandem_ft_heartbeat_age_seconds",
    "tandem_ft_failovers_total",
    "tandem_ft_disk_sync_size_bytes",
    "tandem_ft_disk_sync_copied_bytes",
    "tandem_ft_disk_sync_dirty_blocks",
    "tandem_ft_disk_sync_sent_bytes_total",
    "tandem_ft_scrub_regions_total",
    "tandem_ft_scrub_bytes_total",
    "tandem_ft_scrub_mismatches_total",
    "tandem_ft_scrub_unhealed_regions",
];

/// The families of [`METRIC_FAMILIES`] that are histograms: their series are `<family>_bucket`,
/// `<family>_sum` and `<family>_count`.
pub const HISTOGRAM_FAMILIES: &[&str] = &["tandem_ft_checkpoint_pause_seconds"];

/// Whether `series` is one Tandem exports: a family's own name, or a histogram family's
/// `_bucket`, `_sum` or `_count` series.
pub fn is_exported_series(series: &str) -> bool {
    METRIC_FAMILIES.contains(&series)
        || ["_bucket", "_sum", "_count"].iter().any(|sfx| {
            series
                .strip_suffix(sfx)
                .is_some_and(|base| HISTOGRAM_FAMILIES.contains(&base))
        })
}

/// What a test needs from the host: `require!(kvm, netns);` at the top of a test returns from it
/// (reported as skipped) where one is missing, and fails it where `.ci/run` declared it in
/// `TANDEM_REQUIRE`. Every guard goes through it; see the `tandem_require` crate's docs for
/// the names, the generic `require!("name" => probe)` form and the skip report.
pub use tandem_require as require;
pub use tandem_require::require;

/// Whether this host can run KVM guests (see [`require`]); `who` names a caller that is not a
/// test (a benchmark binary).
pub fn kvm_available(who: &str) -> bool {
    require::named_for(&caller(who), "kvm", require::probe::kvm)
}

/// The calling test, or `who` where the caller is not a test's thread.
pub(crate) fn caller(who: &str) -> String {
    let t = require::report::current_test();
    if t.contains("::") {
        t
    } else {
        format!("{t}: {who}")
    }
}

/// The older spelling of `require!(kvm)` (the name is not needed any more).
#[macro_export]
macro_rules! require_kvm {
    ($name:expr) => {
        let _ = $name;
        $crate::require!(kvm);
    };
}

/// The older spelling of `require!(kvm, netns)` (the name is not needed any more).
#[macro_export]
macro_rules! require_kvm_and_netns {
    ($name:expr) => {
        let _ = $name;
        $crate::require!(kvm, netns);
    };
}

/// The `tandem` binary of this build: `TANDEM_BIN`, else beside the test executable's folder
/// (`target/<profile>/tandem`, as `cargo test --workspace` and nextest lay them out). Panics with
/// the fix when that binary is missing or older than the sources it is built from, since
/// `cargo test -p tandem-tests` alone does not rebuild it.
pub fn tandem_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANDEM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe
        .parent()
        .expect("test executable has a folder")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("tandem");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build --workspace`",
                bin.display()
            )
        });
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for src in ["vmm/src", "devices/src", "resources/guest/src"] {
        if let Some(newer) = newest_file(&root.join(src)).filter(|(t, _)| *t > built) {
            panic!(
                "{} is older than {}: run `cargo build --workspace`",
                bin.display(),
                newer.1.display()
            );
        }
    }
    bin
}

/// The `tandem-remote` binary of this build, beside [`tandem_bin`]; panics with the fix when it
/// is missing or older than api_client's sources.
pub fn tandem_remote_bin() -> PathBuf {
    let bin = tandem_bin().with_file_name("tandem-remote");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build --workspace`",
                bin.display()
            )
        });
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api_client/src");
    if let Some(newer) = newest_file(&src).filter(|(t, _)| *t > built) {
        panic!(
            "{} is older than {}: run `cargo build --workspace`",
            bin.display(),
            newer.1.display()
        );
    }
    bin
}

/// The most recently modified file under `dir`, with its time.
fn newest_file(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let cand = if p.is_dir() {
            newest_file(&p)
        } else {
            e.metadata().ok()?.modified().ok().map(|t| (t, p))
        };
        if let Some(c) = cand {
            if newest.as_ref().is_none_or(|n| c.0 > n.0) {
                newest = Some(c);
            }
        }
    }
    newest
}

/// A fresh scratch folder for one test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/tandem-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("tandem-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// A path inside the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
