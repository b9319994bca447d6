//! A Linux tap interface opened through /dev/net/tun: one Ethernet frame per read or write, each
//! preceded by a 12-byte virtio-net header (IFF_VNET_HDR), with no offloads (so the kernel hands
//! us only complete, checksummed frames of at most the tap's MTU).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

/// Longest interface name Linux accepts (IFNAMSIZ minus the NUL).
pub const MAX_TAP_NAME_LEN: usize = 15;
/// Size of the virtio-net header on the tap: `struct virtio_net_hdr_v1` (virtio 1.x always has
/// `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

// vmm-sys-util's macro makes each request a `pub fn` that no doc comment can reach; a private
// module keeps them out of the crate's documented surface.
mod nr {
    use vmm_sys_util::ioctl_iow_nr;
    const TUNTAP: u32 = b'T' as u32;
    ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, libc::c_int);
    ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, libc::c_uint);
    ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, libc::c_int);
}
use nr::{TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ};

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// `struct ifreq` with the union member we use (flags); 40 bytes as the kernel's.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut r = IfReq {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
}

/// Tap errors.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, longer than [`MAX_TAP_NAME_LEN`], or holds a NUL or `/`.
    #[error("tap name {0:?} must be 1 to {MAX_TAP_NAME_LEN} bytes without NUL or '/'")]
    BadName(String),
    /// `/dev/net/tun` cannot be opened (missing, or no permission).
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` refused the name (no such tap, or it belongs to another user).
    #[error("cannot attach to tap {name}")]
    Attach {
        /// The tap interface's name.
        name: String,
        /// What `TUNSETIFF` said.
        #[source]
        source: io::Error,
    },
    /// Setting the vnet header size, turning offloads off or bringing the link up failed.
    #[error("cannot configure tap {name} ({what})")]
    Configure {
        /// The tap interface's name.
        name: String,
        /// The step that failed: `vnet header size`, `offloads` or `link up`.
        what: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// Whether `name` can name a network interface.
pub fn valid_tap_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TAP_NAME_LEN
        && !name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
}

/// An open tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to tap `name` (creating it if it does not exist and we may), non-blocking,
    /// with a 12-byte vnet header and no offloads, and brings the link up.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_tap_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq::new(name);
        req.flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        // SAFETY: TUNSETIFF reads (and writes back) a `struct ifreq`; `req` is one, with a
        // NUL-terminated name, and lives across the call.
        let ret = unsafe { ioctl_with_mut_ref(&file, TUNSETIFF(), &mut req) };
        if ret < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let cfg_err = |what| {
            let name = name.to_string();
            move |source| TapError::Configure { name, what, source }
        };
        let hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        let ret = unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &hdr_len) };
        if ret < 0 {
            return Err(cfg_err("vnet header size")(io::Error::last_os_error()));
        }
        // No offloads: we offer the guest none, so the kernel must give us finished frames.
        // SAFETY: TUNSETOFFLOAD takes its flags by value and touches no memory.
        let ret = unsafe { ioctl_with_val(&file, TUNSETOFFLOAD(), 0) };
        if ret < 0 {
            return Err(cfg_err("offloads")(io::Error::last_os_error()));
        }
        set_link_up(name).map_err(cfg_err("link up"))?;
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another descriptor for the same queue (for a worker thread).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        Ok(OwnedFd::from(self.file.try_clone()?))
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Brings interface `name` up if it is not (a tap we just created starts down).
fn set_link_up(name: &str) -> io::Result<()> {
    // SAFETY: plain socket creation; the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq::new(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of a valid `struct ifreq` that outlives the call.
    if unsafe { ioctl_with_mut_ref(&sock, libc::SIOCGIFFLAGS as libc::c_ulong, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if req.flags & libc::IFF_UP as i16 != 0 {
        return Ok(());
    }
    req.flags |= libc::IFF_UP as i16;
    // SAFETY: SIOCSIFFLAGS reads a valid `struct ifreq` that outlives the call.
    if unsafe { ioctl_with_ref(&sock, libc::SIOCSIFFLAGS as libc::c_ulong, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_tap_name("tap0"));
        assert!(valid_tap_name("a23456789012345"));
        assert!(!valid_tap_name("a234567890123456"));
        assert!(!valid_tap_name(""));
        assert!(!valid_tap_name("a/b"));
        assert!(!valid_tap_name("a b"));
        assert!(matches!(Tap::open(""), Err(TapError::BadName(_))));
    }

    #[test]
    fn opens_a_tap_where_allowed() {
        let name = format!("tndt{}", std::process::id() % 100_000);
        let opened = Tap::open(&name);
        let usable = tandem_require::named("tap", || match &opened {
            Ok(_) => Ok(()),
            Err(e @ (TapError::OpenTun(_) | TapError::Attach { .. })) => Err(e.to_string()),
            Err(e) => panic!("{e:?}"),
        });
        if usable {
            let tap = opened.expect("the probe saw it open");
            assert_eq!(tap.name(), name);
            assert!(tap.try_clone_fd().is_ok());
        }
    }

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
