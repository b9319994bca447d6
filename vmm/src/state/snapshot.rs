//! Snapshot directories as `vm.snapshot` writes them and `vm.restore` reads them: the VM config
//! (`config.json`), the encoded state (`state.bin`) and guest memory (`memory.bin`, sparse).

use super::format::{self, FormatError};
use super::VmSnapshot;
use crate::config::VmConfig;
use std::path::{Path, PathBuf};

/// The VM config as JSON, as `vm.create` takes it.
pub const CONFIG_FILE: &str = "config.json";
/// The encoded [`VmSnapshot`].
pub const STATE_FILE: &str = "state.bin";
/// Guest RAM, every region back to back.
pub const MEMORY_FILE: &str = "memory.bin";
/// Largest state or config file we read (real ones are a few KiB per vCPU).
const MAX_FILE: u64 = 64 << 20;

/// Snapshot directory errors.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The URL is not `file://` followed by an absolute path.
    #[error("{url:?} is not a file:// URL of an absolute path")]
    Url {
        /// The URL as given.
        url: String,
    },
    /// A snapshot directory or file cannot be opened, read, written or synced.
    #[error("cannot {what} {path}")]
    Io {
        /// What the VMM was doing (`open directory`, `write`, ...).
        what: &'static str,
        /// The directory or file.
        path: String,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// A config or state file is larger than a snapshot file may be (64 MiB).
    #[error("{path} is {len} bytes, more than the {MAX_FILE} a snapshot file may have")]
    TooLarge {
        /// The file.
        path: String,
        /// Its length in bytes.
        len: u64,
    },
    /// `config.json` cannot be encoded, or does not parse as a VM config.
    #[error("invalid {CONFIG_FILE}")]
    Config(#[source] serde_json::Error),
    /// `state.bin` cannot be encoded, or fails its header checks or decoding.
    #[error("invalid {STATE_FILE}")]
    Format(#[source] FormatError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.display().to_string();
    move |source| SnapshotError::Io { what, path, source }
}

/// The directory a `file:///dir` URL names (the only scheme we serve).
pub fn dir_from_url(url: &str) -> Result<PathBuf, SnapshotError> {
    match url.strip_prefix("file://") {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        _ => Err(SnapshotError::Url {
            url: url.chars().take(200).collect(),
        }),
    }
}

/// Checks that `dir` exists and is a directory.
pub fn check_dir(dir: &Path) -> Result<(), SnapshotError> {
    let meta = std::fs::metadata(dir).map_err(io_err("open directory", dir))?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(SnapshotError::Io {
            what: "use as a directory",
            path: dir.display().to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        })
    }
}

/// Writes the config and the encoded state into `dir` (memory is written by the VM itself).
pub fn write(dir: &Path, config: &VmConfig, state: &VmSnapshot) -> Result<(), SnapshotError> {
    let cfg = serde_json::to_vec_pretty(config).map_err(SnapshotError::Config)?;
    let path = dir.join(CONFIG_FILE);
    std::fs::write(&path, cfg).map_err(io_err("write", &path))?;
    let bytes = format::encode(state).map_err(SnapshotError::Format)?;
    let path = dir.join(STATE_FILE);
    std::fs::write(&path, bytes).map_err(io_err("write", &path))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let len = std::fs::metadata(path).map_err(io_err("open", path))?.len();
    if len > MAX_FILE {
        return Err(SnapshotError::TooLarge {
            path: path.display().to_string(),
            len,
        });
    }
    std::fs::read(path).map_err(io_err("read", path))
}

/// Reads the config saved in `dir`.
pub fn read_config(dir: &Path) -> Result<VmConfig, SnapshotError> {
    let bytes = read_bounded(&dir.join(CONFIG_FILE))?;
    serde_json::from_slice(&bytes).map_err(SnapshotError::Config)
}

/// Reads and verifies the state saved in `dir`.
pub fn read_state(dir: &Path) -> Result<VmSnapshot, SnapshotError> {
    let bytes = read_bounded(&dir.join(STATE_FILE))?;
    format::decode(&bytes).map_err(SnapshotError::Format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_file_urls() {
        assert_eq!(
            dir_from_url("file:///tmp/x").unwrap(),
            PathBuf::from("/tmp/x")
        );
        for bad in ["http://x/y", "file://relative", "/tmp/x", ""] {
            assert!(dir_from_url(bad).is_err(), "{bad}");
        }
    }
}
