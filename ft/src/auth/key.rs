//! The pair key: a file of at least 32 random bytes both members hold (e.g.
//! `head -c 32 /dev/urandom > ft.key; chmod 600 ft.key`), refused like ssh refuses a private key
//! that others can read.

use super::AuthError;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Fewest key bytes accepted: the full 256-bit strength of the keys derived from it.
pub const MIN_KEY_LEN: usize = 32;
/// Most key bytes read; a larger file is a mistake (a wrong path), not a key.
pub const MAX_KEY_LEN: usize = 4096;

/// The secret shared by the two members of a pair. Its bytes never appear in `Debug` output and
/// are overwritten when it is dropped.
#[derive(Clone)]
pub struct PairKey(Vec<u8>);

impl std::fmt::Debug for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PairKey({} bytes)", self.0.len())
    }
}

impl Drop for PairKey {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference; a volatile write keeps the
            // compiler from dropping the wipe of memory that is about to be freed.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl PairKey {
    /// A key from bytes (tests, and callers that hold the key elsewhere).
    pub fn from_bytes(bytes: &[u8]) -> Result<PairKey, AuthError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(AuthError::KeyTooShort {
                path: "<bytes>".into(),
                len: bytes.len(),
            });
        }
        Ok(PairKey(bytes.to_vec()))
    }

    /// Reads the key file at `path`: a regular file, not accessible by group or others, of
    /// `MIN_KEY_LEN..=MAX_KEY_LEN` bytes, used as they are.
    pub fn load(path: &Path) -> Result<PairKey, AuthError> {
        let io = |source| AuthError::KeyFile {
            path: path.to_owned(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(AuthError::KeyNotAFile {
                path: path.to_owned(),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AuthError::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = Vec::new();
        (&mut f)
            .take(MAX_KEY_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let key = PairKey(bytes);
        if key.0.len() < MIN_KEY_LEN {
            return Err(AuthError::KeyTooShort {
                path: path.to_owned(),
                len: key.0.len(),
            });
        }
        if key.0.len() > MAX_KEY_LEN {
            return Err(AuthError::KeyTooLong {
                path: path.to_owned(),
            });
        }
        Ok(key)
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.0
    }
}
