//! Where the guest's transmitted frames leave the VM: the one place FT will hold TX per epoch
//! (DESIGN.md, output rule), by wrapping a [`TxSink`] in a gate.

use super::tap::VNET_HDR_LEN;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Receives every Ethernet frame the guest sends, in order.
pub trait TxSink: Send {
    /// Sends one complete frame (no virtio-net header).
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Whether the sink takes another frame now; when it does not, the device stops taking TX
    /// descriptors until `room_fd` becomes readable (backpressure, never a drop).
    fn has_room(&self) -> bool {
        true
    }

    /// An eventfd that becomes readable when a full sink has room again.
    fn room_fd(&self) -> Option<RawFd> {
        None
    }
}

/// Writes frames to a tap, each behind an all-zero virtio-net header (no offloads requested).
pub struct TapTxSink {
    fd: OwnedFd,
}

impl TapTxSink {
    /// Sends through `fd`, a tap opened with a 12-byte vnet header.
    pub fn new(fd: OwnedFd) -> Self {
        TapTxSink { fd }
    }
}

impl TxSink for TapTxSink {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let hdr = [0u8; VNET_HDR_LEN];
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs point at live buffers of the stated lengths, which writev only
        // reads; the fd is owned by `self`.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // A tap takes a frame whole or not at all.
        Ok(())
    }
}
