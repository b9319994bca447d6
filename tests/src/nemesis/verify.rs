//! After every step of the soak: `ft.verify` on the protected primary must find the backup's copy
//! equal to the primary's (guest memory, device state and, replicated, the disk), issue 11 item 10.

use super::cluster::Cluster;
use serde_json::json;

/// What one check did.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// A full pass compared everything and found no difference.
    Clean,
    /// Nothing was compared: no protected pair, or it changed under the call (a late effect of
    /// the fault); why.
    Skipped(String),
}

/// Runs `ft.verify` on the protected primary; `Err` names a difference (or an answer that is
/// neither a report nor a clean refusal).
pub fn replica_equal(c: &Cluster) -> Result<Verified, String> {
    let Some(p) = c.protected_primary() else {
        return Ok(Verified::Skipped("no protected pair".into()));
    };
    let (code, r) = c
        .member(p)
        .put("ft.verify", Some(&json!({"timeout_ms": 45_000})));
    match code {
        200 if r["clean"] == true => Ok(Verified::Clean),
        200 => Err(format!("ft.verify found the backup's copy different: {r}")),
        409 => Ok(Verified::Skipped(r.to_string())),
        _ => Err(format!("ft.verify answered {code}: {r}")),
    }
}
