//! TEST ONLY: corrupts a backup's copy of guest memory on purpose, so that the replica scrub's
//! tests (`tests/tests/ft_verify.rs`) can check that `ft.verify` finds a difference, names it
//! and heals it. Never set it outside a test.
//!
//! `TANDEM_TEST_CORRUPT_REPLICA=<gpa>:<len>` (each decimal or `0x` hex), read once when the
//! process starts ([`init_from_env`]): a backup flips (XOR 0xff) `len` bytes of its replica's
//! guest memory from guest-physical address `gpa`, once per process, right after it committed the
//! initial sync, behind the checkpoint engine's back. A malformed value is logged and ignored.
//!
//! Off unless the variable is set, and only honoured by debug builds (`debug_assertions`, what
//! `cargo build` and the acceptance tests use): a release build logs that it ignores the
//! variable, so a production binary can never corrupt a replica on purpose.

// Host-side: an environment variable decides this line, once, not the guest.
#![allow(clippy::disallowed_macros)]

use crate::vm::memory::GuestMemoryMmap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use vm_memory::{Bytes, GuestAddress};

/// The environment variable.
pub const ENV: &str = "TANDEM_TEST_CORRUPT_REPLICA";

/// Longest range the hook flips (the guest's whole image fits).
const MAX_LEN: u64 = 16 << 20;

/// A range of guest memory to flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault {
    gpa: u64,
    len: u64,
}

static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
static FIRED: AtomicBool = AtomicBool::new(false);

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse(v: &str) -> Option<Fault> {
    let (gpa, len) = v.split_once(':')?;
    let f = Fault {
        gpa: number(gpa)?,
        len: number(len)?,
    };
    (f.len > 0 && f.len <= MAX_LEN).then_some(f)
}

/// Reads [`ENV`] once, at start (later calls change nothing).
pub fn init_from_env() {
    FAULT.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        if !cfg!(debug_assertions) {
            log::error!("{ENV} is set, but only debug builds honour it (a test hook); ignored");
            return None;
        }
        let f = parse(&v);
        match f {
            Some(f) => log::warn!(
                "{ENV}: TEST ONLY: a backup of this process will corrupt {} bytes of its replica \
                 at guest-physical {:#x}",
                f.len,
                f.gpa
            ),
            None => log::error!("{ENV}={v:?} is not <gpa>:<len> (1 to {MAX_LEN} bytes); ignored"),
        }
        f
    });
}

/// The hook for one replica's memory; `None` when the variable is not set.
pub fn arm(memory: GuestMemoryMmap) -> Option<Armed> {
    let f = (*FAULT.get()?)?;
    Some(Armed { fault: f, memory })
}

/// A replica's memory, to corrupt once.
pub struct Armed {
    fault: Fault,
    memory: GuestMemoryMmap,
}

impl Armed {
    /// Flips the range, the first time any replica of this process calls it. Only on the
    /// backup's receiving thread, between checkpoints, where nothing else writes the replica.
    pub fn fire(&self) {
        if FIRED.swap(true, Ordering::SeqCst) {
            return;
        }
        let Fault { gpa, len } = self.fault;
        let mut buf = vec![0u8; len as usize];
        let at = GuestAddress(gpa);
        let flipped = self.memory.read_slice(&mut buf, at).and_then(|()| {
            buf.iter_mut().for_each(|b| *b ^= 0xff);
            self.memory.write_slice(&buf, at)
        });
        match flipped {
            Ok(()) => log::warn!(
                "{ENV}: TEST ONLY: flipped {len} bytes of the replica at guest-physical {gpa:#x}"
            ),
            Err(e) => log::error!("{ENV}: cannot flip {len} bytes at {gpa:#x}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_a_range() {
        assert_eq!(
            parse("0x200000:0x40000"),
            Some(Fault {
                gpa: 0x200000,
                len: 0x40000
            })
        );
        assert_eq!(parse("4096:1"), Some(Fault { gpa: 4096, len: 1 }));
        for bad in ["", "0x200000", "1:0", "x:1", "1:0x2000000", "1:2:3"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
