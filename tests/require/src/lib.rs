//! What a test needs from the host, checked the way the test will use it, with one rule for
//! every guard in the workspace:
//!
//! * A test starts with `require!(kvm, netns);` (or calls [`kvm`], [`netns`]... itself). Each
//!   probe really does the thing: opens `/dev/kvm` read-write and creates a VM, builds a network
//!   namespace with a veth pair, a bridge and a tap, runs `etcd --version`, ...
//! * Where a requirement is missing, the test is **skipped**: a loud `SKIPPED` line on stderr and
//!   a line appended to the skip report (`TANDEM_SKIP_REPORT`, a file path), which `.ci/run`
//!   prints at the end with a count. nextest hides a passing test's stderr; the report does not.
//! * Where the requirement is **declared** in `TANDEM_REQUIRE` (a comma list of requirement
//!   names, or `all`), a missing one **fails** the test instead: CI declares what its machine
//!   must run, so a broken `/dev/kvm` cannot turn the KVM tests green without running them.
//!
//! Requirement names: `kvm`, `netns`, `tap`, `gcc`, `curl`, `jq`, `etcd`, `prometheus`, `docker`,
//! `tcpdump`, `hwvirt` (see [`probe`]), and any other name a test gives to [`named`] with its own
//! probe:
//!
//! ```no_run
//! # fn my_test() {
//! use tandem_require::require;
//! require!(kvm, netns); // returns from the test when one is missing (and not declared)
//! require!("minio" => tandem_require::probe::command("minio", &["--version"]));
//! # }
//! ```
//!
//! A test that can never run on the CI machines (it needs hardware virtualization) is marked
//! `#[ignore = "why"]` on top, so nextest counts it as skipped, not passed; `.ci/run` runs it
//! where `/proc/cpuinfo` has vmx/svm.

pub mod declared;
pub mod probe;
pub mod report;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The environment variable that declares what this machine must run.
pub const REQUIRE_ENV: &str = "TANDEM_REQUIRE";
/// The environment variable naming the skip report file.
pub const REPORT_ENV: &str = "TANDEM_SKIP_REPORT";

/// Whether `requirement` is met for the calling test; probes once per process.
///
/// Missing and undeclared: prints `SKIPPED`, appends to the skip report, returns false (the test
/// should return). Missing and declared in `TANDEM_REQUIRE`: appends to the report and panics,
/// failing the test.
pub fn named(requirement: &str, probe: impl FnOnce() -> Result<(), String>) -> bool {
    named_for(&report::current_test(), requirement, probe)
}

/// [`named`], for a test whose name the caller gives (a helper thread, a benchmark binary).
pub fn named_for(
    test: &str,
    requirement: &str,
    probe: impl FnOnce() -> Result<(), String>,
) -> bool {
    let report = std::env::var_os(REPORT_ENV).map(std::path::PathBuf::from);
    let outcome = cached(requirement, probe);
    match decide(
        test,
        requirement,
        outcome,
        declared::is_declared(requirement),
        report.as_deref(),
    ) {
        Ok(run) => run,
        Err(failure) => panic!("{failure}"),
    }
}

/// What a probe's `outcome` means for `test`: `Ok(true)` run it, `Ok(false)` skip it (said
/// loudly and reported), `Err` fail it (the requirement is declared; reported too).
pub fn decide(
    test: &str,
    requirement: &str,
    outcome: Result<(), String>,
    declared: bool,
    report: Option<&std::path::Path>,
) -> Result<bool, String> {
    let Err(why) = outcome else {
        return Ok(true);
    };
    if declared {
        report::append(
            report,
            report::Kind::RequiredMissing,
            test,
            requirement,
            &why,
        );
        return Err(format!(
            "{requirement} is required here ({REQUIRE_ENV}={}) but not usable: {why}",
            std::env::var(REQUIRE_ENV).unwrap_or_default()
        ));
    }
    report::append(report, report::Kind::Skipped, test, requirement, &why);
    report::loud(test, requirement, &why);
    Ok(false)
}

/// A probe's outcome, run at most once per requirement per process (tests of one binary share
/// it under `cargo test`; nextest runs each test in its own process anyway).
fn cached(requirement: &str, probe: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    static SEEN: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Mutex::default);
    if let Some(r) = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(requirement)
    {
        return r.clone();
    }
    let r = probe();
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(requirement.to_string(), r.clone());
    r
}

macro_rules! requirement {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub fn $name() -> bool {
            named(stringify!($name), probe::$name)
        }
    };
}

requirement!(
    /// `/dev/kvm` opens read-write and creates a VM.
    kvm
);
requirement!(
    /// Network namespaces with veth pairs, bridges and taps in them, as `resources/testnet.sh`
    /// builds them (root, iproute2).
    netns
);
requirement!(
    /// A tap device can be created in this namespace.
    tap
);
requirement!(
    /// `gcc` runs (tests that build a tiny guest kernel).
    gcc
);
requirement!(
    /// `curl` runs (the operator's curl scripts).
    curl
);
requirement!(
    /// `jq` runs (the operator's curl scripts).
    jq
);
requirement!(
    /// `etcd` and `etcdctl` run (Debian's etcd-server and etcd-client).
    etcd
);
requirement!(
    /// `prometheus` and `promtool` run.
    prometheus
);
requirement!(
    /// A Docker engine answers `docker version`.
    docker
);
requirement!(
    /// `tcpdump` runs.
    tcpdump
);
requirement!(
    /// Hardware virtualization: vmx or svm in `/proc/cpuinfo`, and a usable `/dev/kvm`.
    hwvirt
);

/// Returns from the calling test unless every listed requirement is met (see the crate docs).
/// Every requirement is probed, so the report lists each missing one.
///
/// `require!(kvm, netns)` uses the probes of this crate; `require!("name" => probe)` takes any
/// `Result<(), String>` (the probe runs once per process).
#[macro_export]
macro_rules! require {
    ($name:literal => $probe:expr) => {
        if !$crate::named($name, || $probe) {
            return;
        }
    };
    ($($req:ident),+ $(,)?) => {
        if ![$($crate::$req()),+].iter().all(|ok| *ok) {
            return;
        }
    };
}
