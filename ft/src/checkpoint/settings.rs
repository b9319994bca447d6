//! The pair's settings, carried in the FT Hello (protocol 5) so that the two members cannot
//! silently disagree: a backup left at the default failure timeout behind a primary set to
//! 300 ms would take over a second late; a backup applying writes to its own image while the
//! primary writes a shared one would go live from a disk nobody wrote; two members naming
//! different arbiter storage (an unmounted mount point is writable on both) could both win.
//!
//! The backup adopts the primary's timing unless `ft.receive` set its own; a disk-mode or
//! arbiter mismatch refuses the Hello, and the primary's `ft.enable` fails with the reason
//! before its VM is touched.

use std::time::Duration;

/// How the pair shares each disk, as the Hello names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairDiskMode {
    /// One image both hosts see.
    Shared,
    /// One image per host; the backup applies committed writes to its own.
    Replicated,
}

/// What the primary's `ft.enable` set, sent to the backup in the Hello.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PairSettings {
    /// How the disks are shared.
    pub disk_mode: PairDiskMode,
    /// Silence after which a member counts its peer as failed.
    pub failure_timeout_ms: u64,
    /// Heartbeat on the stream when nothing else was sent for this long.
    pub heartbeat_interval_ms: u64,
    /// Longest epoch.
    pub checkpoint_interval_ms: u64,
    /// The identity of the arbiter's store, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arbiter_id: Option<String>,
}

impl PairSettings {
    /// The JSON the Hello carries.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// From the Hello's JSON.
    pub fn from_json(json: &str) -> Result<PairSettings, SettingsError> {
        serde_json::from_str(json).map_err(SettingsError::Parse)
    }
}

/// What the backup's own `ft.receive` said; `None`: take the primary's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupWants {
    /// The disk mode `ft.receive` named.
    pub disk_mode: Option<PairDiskMode>,
    /// The failure timeout `ft.receive` set.
    pub failure_timeout: Option<Duration>,
    /// The identity of the arbiter store this backup uses.
    pub arbiter_id: Option<String>,
}

/// The settings both members run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// How the disks are shared.
    pub disk_mode: PairDiskMode,
    /// The backup's failure timeout.
    pub failure_timeout: Duration,
    /// How often the backup sends heartbeats on an idle stream.
    pub heartbeat_interval: Duration,
}

/// Why the two members' settings cannot make a pair.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The Hello's settings are not readable.
    #[error("the primary's pair settings are not readable")]
    Parse(#[source] serde_json::Error),
    /// An FT Hello without settings (a peer that predates them).
    #[error("the primary sent no pair settings")]
    Missing,
    /// The two sides name different disk modes.
    #[error(
        "disk mode mismatch: the primary uses {primary:?} disks, this backup was set to {backup:?}"
    )]
    DiskMode {
        /// The primary's.
        primary: PairDiskMode,
        /// This backup's.
        backup: PairDiskMode,
    },
    /// The two sides use different arbiter storage.
    #[error(
        "arbiter mismatch: the primary's arbiter store is {primary}, this backup's is {backup}: \
         the two members must name the same arbiter"
    )]
    Arbiter {
        /// The primary's store identity.
        primary: String,
        /// This backup's.
        backup: String,
    },
}

/// Checks the primary's settings against what this backup was told, and what both run with.
pub fn agree(primary: &PairSettings, backup: &BackupWants) -> Result<Agreed, SettingsError> {
    if let Some(b) = backup.disk_mode {
        if b != primary.disk_mode {
            return Err(SettingsError::DiskMode {
                primary: primary.disk_mode,
                backup: b,
            });
        }
    }
    if let (Some(p), Some(b)) = (&primary.arbiter_id, &backup.arbiter_id) {
        if p != b {
            return Err(SettingsError::Arbiter {
                primary: p.clone(),
                backup: b.clone(),
            });
        }
    }
    let ms = |v: u64| Duration::from_millis(v.max(1));
    Ok(Agreed {
        disk_mode: primary.disk_mode,
        failure_timeout: backup
            .failure_timeout
            .unwrap_or(ms(primary.failure_timeout_ms)),
        heartbeat_interval: ms(primary.heartbeat_interval_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary() -> PairSettings {
        PairSettings {
            disk_mode: PairDiskMode::Replicated,
            failure_timeout_ms: 300,
            heartbeat_interval_ms: 50,
            checkpoint_interval_ms: 25,
            arbiter_id: Some("a1".into()),
        }
    }

    #[test]
    fn the_backup_adopts_the_primarys_timing_unless_it_set_its_own() {
        let a = agree(&primary(), &BackupWants::default()).unwrap();
        assert_eq!(a.failure_timeout, Duration::from_millis(300));
        assert_eq!(a.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(a.disk_mode, PairDiskMode::Replicated);
        let own = BackupWants {
            failure_timeout: Some(Duration::from_secs(2)),
            ..BackupWants::default()
        };
        assert_eq!(
            agree(&primary(), &own).unwrap().failure_timeout,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn disk_mode_and_arbiter_mismatches_are_refused_with_both_sides_named() {
        let shared = BackupWants {
            disk_mode: Some(PairDiskMode::Shared),
            ..BackupWants::default()
        };
        let e = agree(&primary(), &shared).unwrap_err().to_string();
        assert!(e.contains("Replicated") && e.contains("Shared"), "{e}");
        let other = BackupWants {
            arbiter_id: Some("b2".into()),
            ..BackupWants::default()
        };
        let e = agree(&primary(), &other).unwrap_err().to_string();
        assert!(e.contains("a1") && e.contains("b2"), "{e}");
    }

    #[test]
    fn settings_round_trip_and_garbage_is_an_error() {
        let p = primary();
        assert_eq!(PairSettings::from_json(&p.to_json()).unwrap(), p);
        assert!(PairSettings::from_json("{").is_err());
        assert!(PairSettings::from_json("{\"disk_mode\":\"raid\"}").is_err());
    }
}
