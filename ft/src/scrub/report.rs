//! What the scrub reports: `ft.status`'s `scrub` object, `ft.verify`'s answer, and the figures
//! the metrics count.

/// A region the backup's copy had wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// The region: `memory gpa 0x…-0x… (pages a..b)`, `disk I ("id") bytes a..b (sectors c..d)`,
    /// `device state`, `vCPU N state`.
    pub region: String,
    /// `memory`, `disk` or `device`.
    pub kind: &'static str,
    /// The checkpoint at which it differed.
    pub epoch: u64,
    /// `Some(true)`: repaired and found equal since; `Some(false)`: still different after every
    /// repair attempt; `None`: the repair is under way.
    pub healed: Option<bool>,
    /// When it was found, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// The answer to `ft.verify`: one full pass over the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// The pass's number (background passes are not numbered).
    pub pass: u64,
    /// No region differed.
    pub clean: bool,
    /// Every region that differed was repaired and found equal afterwards.
    pub healed: bool,
    /// Checkpoints the pass compared at, first and last.
    pub first_epoch: Option<u64>,
    /// Last checkpoint compared at.
    pub last_epoch: Option<u64>,
    /// Regions compared (repairs re-checked included).
    pub regions: u64,
    /// Bytes of memory and disk compared.
    pub bytes: u64,
    /// Memory bytes covered by the pass (guest RAM).
    pub memory_bytes: u64,
    /// Disk bytes covered by the pass (replicated disks; 0 in shared mode).
    pub disk_bytes: u64,
    /// Regions that differed, with what became of them.
    pub mismatches: Vec<Mismatch>,
    /// Regions the primary could not read to hash (never expected; each names the region).
    pub errors: Vec<String>,
    /// From `ft.verify` to the last answer.
    pub duration_ms: u64,
}

/// `ft.status`'s `scrub` object (this pair's figures; the metrics count over the VMM's life).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScrubStatus {
    /// The background scrub covers everything once per this many seconds (`None`: off).
    pub period_s: Option<u64>,
    /// Background passes completed.
    pub background_passes: u64,
    /// Regions compared so far.
    pub regions_verified: u64,
    /// Bytes of memory and disk compared so far.
    pub bytes_verified: u64,
    /// Regions found different.
    pub mismatches: u64,
    /// Of those, repaired and found equal afterwards.
    pub healed: u64,
    /// Of those, still different after every repair attempt.
    pub unhealed: u64,
    /// The latest difference found.
    pub last_mismatch: Option<Mismatch>,
    /// An `ft.verify` pass is under way.
    pub verify_running: bool,
    /// The last `ft.verify` pass that finished.
    pub last_verify: Option<VerifyReport>,
}

/// One backup answer's figures, for the life-long metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubChecked {
    /// Regions compared.
    pub regions: u64,
    /// Bytes of memory and disk compared.
    pub bytes: u64,
    /// Regions found different for the first time (not re-checks of a repair), by kind.
    pub mismatches: Vec<&'static str>,
}
