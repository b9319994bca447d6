//! A protected FT pair of two real `tandem` processes on this host, over loopback TCP, with an
//! idle built-in guest (no NIC, no disk): for tests of the operator's view of a pair, not of the
//! network path (tests/tests/ft.rs has those).

use crate::metrics::free_port;
use crate::{Tandem, TempDir};
use serde_json::{json, Value};
use std::time::Duration;

/// How long a pair gets to reach a state.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(60);

/// Two VMMs, the primary's VM running, and the storage both see (the arbiter directory).
pub struct LocalPair {
    /// The primary's VMM, running an idle guest.
    pub p: Tandem,
    /// The backup's VMM, with no VM until `ft.receive`.
    pub b: Tandem,
    /// `tcp:127.0.0.1:PORT`, where the backup listens.
    pub url: String,
    /// The arbiter's directory, in `store`.
    pub arbiter: std::path::PathBuf,
    /// The scratch folder both members see; removed when dropped.
    pub store: TempDir,
}

impl LocalPair {
    /// Starts both VMMs (the primary with `p_args`) and boots an idle guest on the primary;
    /// FT is not enabled yet.
    pub fn start(tag: &str, p_args: &[&str]) -> Self {
        let p = Tandem::start_with_args(&format!("{tag}-p"), p_args);
        let b = Tandem::start(&format!("{tag}-b"));
        p.boot_builtin(1, 64, "workload=idle");
        let store = TempDir::new(&format!("{tag}-store"));
        let arbiter = store.path("arbiter");
        std::fs::create_dir(&arbiter).expect("arbiter directory");
        LocalPair {
            p,
            b,
            url: format!("tcp:127.0.0.1:{}", free_port()),
            arbiter,
            store,
        }
    }

    /// `ft.receive` on the backup and `ft.enable` on the primary (with `enable_extra` merged into
    /// its body), then waits until both say protected.
    pub fn protect(&self, enable_extra: Value) {
        self.b.put_ok(
            "ft.receive",
            Some(&json!({
                "listen": self.url,
                "serial": {"mode": "File", "file": self.b.serial_path},
                "arbiter": {"path": self.arbiter},
                "failure_timeout_ms": 1000,
            })),
        );
        let mut enable = json!({
            "peer": self.url,
            "disk_mode": "shared",
            "arbiter": {"path": self.arbiter},
            "failure_timeout_ms": 1000,
        });
        if let (Some(e), Some(x)) = (enable.as_object_mut(), enable_extra.as_object()) {
            e.extend(x.clone());
        }
        self.p.put_ok("ft.enable", Some(&enable));
        wait_ft(&self.p, "primary", "protected");
        wait_ft(&self.b, "backup", "protected");
    }
}

pub use crate::ft::ft_status;

/// Waits until `t`'s ft.status says `role`/`state` (`crate::ft::wait_status`); panics with its
/// log after [`crate::ft::T`].
pub fn wait_ft(t: &Tandem, role: &str, state: &str) -> Value {
    crate::ft::wait_status(t, &format!("{role}/{state}"), |s| {
        s["role"] == role && s["state"] == state
    })
}
