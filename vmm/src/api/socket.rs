//! Binding the API's Unix socket: a lock file (`<socket>.lock`, flock) makes one VMM the owner of
//! the path, so that two VMMs never fight over it and a stale socket (left by a crashed VMM) can be
//! removed safely by the new owner; live sockets and other files are never touched.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the socket path could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A live server answers on the socket path already.
    #[error("another server is already listening on {0}")]
    InUse(PathBuf),
    /// Another process holds `<path>.lock` (the path here is the socket's).
    #[error("another VMM owns {0} (its lock file is held)")]
    Locked(PathBuf),
    /// The lock file cannot be opened or flocked.
    #[error("cannot open or lock {path}")]
    Lock {
        /// The lock file, `<socket>.lock`.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The path exists and is not a socket; it is never deleted.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Reading the path's metadata, or probing it with a connect, failed.
    #[error("cannot inspect {path}")]
    Inspect {
        /// The socket path.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// A stale socket (nobody answering) cannot be removed.
    #[error("cannot remove stale socket {path}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// What `unlink(2)` said.
        #[source]
        source: std::io::Error,
    },
    /// Binding the listening socket failed.
    #[error("cannot bind {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What `bind(2)` said.
        #[source]
        source: std::io::Error,
    },
    /// Setting the socket's mode to 0600 failed (the socket is removed).
    #[error("cannot make {path} private (mode 0600)")]
    Chmod {
        /// The socket path.
        path: PathBuf,
        /// What `chmod(2)` said.
        #[source]
        source: std::io::Error,
    },
}

/// A bound API socket and the lock that makes this process its owner; keep both alive together.
pub struct BoundSocket {
    /// The listening socket, mode 0600, for the API server to accept on.
    pub listener: UnixListener,
    /// Held (flock) for as long as the server runs; closing it releases the path.
    pub lock: File,
}

/// Takes `<path>.lock`, then binds a listening socket at `path` with mode 0600.
///
/// An existing socket nobody answers on (left by a crashed VMM) is removed first; a live one is an
/// error, as is any other kind of file, which we never delete.
pub fn bind(path: &Path) -> Result<BoundSocket, SocketError> {
    let lock = take_lock(path)?;
    remove_if_stale(path)?;
    // No window in which the socket exists with the umask's mode: create it private. The umask is
    // process-wide, so this runs before the VMM starts any other thread that creates files.
    // SAFETY: umask only swaps the process's file mode mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    // Belt and braces: the mode must be 0600 whatever the filesystem made of the umask.
    if let Err(source) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        drop(listener);
        let _ = std::fs::remove_file(path);
        return Err(SocketError::Chmod {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(BoundSocket { listener, lock })
}

/// Opens and flocks `<path>.lock` without waiting.
fn take_lock(path: &Path) -> Result<File, SocketError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let err = |source| SocketError::Lock {
        path: lock_path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(err)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.kind() == ErrorKind::WouldBlock {
            SocketError::Locked(path.to_path_buf())
        } else {
            err(e)
        });
    }
    Ok(file)
}

fn remove_if_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Inspect {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(SocketError::Inspect {
            path: path.to_path_buf(),
            source,
        }),
    }
}
