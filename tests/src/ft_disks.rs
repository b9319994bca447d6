//! Replicated-disk test support: disk images with known contents, a block-by-block comparison of
//! a replica with the primary's image, a client that makes the guest write blocks while FT runs,
//! and a small tmpfs whose space runs out (ENOSPC) under a backup's image.

use crate::client::CounterConn;
use crate::ft::{Pair, GUEST_IP, T};
use crate::net::{Node, TestNet};
use crate::{Tandem, TempDir};
use serde_json::json;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The block the comparison (and the guest's `WRITE`) works in.
pub const BLOCK: u64 = 4096;

/// Writes a `size`-byte image whose block `i` is `fill(i)` repeated, or a hole where `fill`
/// says `None` (so the file is sparse there and reads as zeros).
pub fn make_image(path: &Path, size: u64, fill: impl Fn(u64) -> Option<u8>) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(size).expect("size image");
    for i in 0..size.div_ceil(BLOCK) {
        if let Some(b) = fill(i) {
            let len = BLOCK.min(size - i * BLOCK) as usize;
            f.write_all_at(&vec![b; len], i * BLOCK)
                .expect("write image");
        }
    }
    f.sync_all().expect("sync image");
}

/// The blocks in which two images differ (a block past the end of the shorter one differs).
pub fn differing_blocks(a: &Path, b: &Path) -> Vec<u64> {
    let (x, y) = (
        std::fs::read(a).expect("read image"),
        std::fs::read(b).expect("read image"),
    );
    let blocks = x.len().max(y.len()).div_ceil(BLOCK as usize);
    (0..blocks)
        .filter(|&i| {
            let r = i * BLOCK as usize..(i + 1) * BLOCK as usize;
            let get = |v: &[u8]| v.get(r.start..r.end.min(v.len())).map(<[u8]>::to_vec);
            get(&x) != get(&y)
        })
        .map(|i| i as u64)
        .collect()
}

/// Fails, naming how many 4 KiB blocks differ and the first of them, unless `replica` equals
/// `primary` byte for byte.
pub fn assert_same_image(what: &str, replica: &Path, primary: &Path) {
    let diff = differing_blocks(replica, primary);
    let total = std::fs::metadata(primary)
        .map_or(0, |m| m.len())
        .div_ceil(BLOCK);
    assert!(
        diff.is_empty(),
        "{what}: {} of {total} blocks of {} differ from {} (first: {:?})",
        diff.len(),
        replica.display(),
        primary.display(),
        &diff[..diff.len().min(16)]
    );
}

/// Two hosts with a counter guest on P (its disk `p_image`) and B waiting as its backup in
/// replicated mode with `b_image`; FT is not enabled yet (the caller may start writing first).
pub fn replicated_pair(tag: &str, store: TempDir, p_image: PathBuf, b_image: PathBuf) -> Pair {
    let net = TestNet::up_with_taps(tag);
    let p = Tandem::start_in_netns(&format!("{tag}-p"), &net.ns(Node::HostP));
    let b = Tandem::start_in_netns(&format!("{tag}-b"), &net.ns(Node::HostB));
    let arbiter = crate::ft::arbiter_dir(&store);
    p.boot_counter(128, GUEST_IP, &p_image);
    let pair = Pair {
        net,
        p,
        b,
        p_image,
        b_image,
        arbiter_config: json!({ "path": arbiter }),
        arbiter,
        disk_mode: "replicated".into(),
        failure_timeout_ms: 1000,
        store,
    };
    pair.b.put_ok(
        "ft.receive",
        Some(&pair.receive_body(&pair.b, &pair.b_image)),
    );
    pair
}

/// A client that has the guest write blocks `1..blocks` (a few at a time, spread by a fixed
/// pseudo-random walk) on one connection until `stop`, and at least `min` times however late
/// the connection comes up; returns how many `WRITE`s it made.
pub fn writer(
    net: &TestNet,
    stop: Arc<AtomicBool>,
    blocks: u64,
    min: u64,
) -> std::thread::JoinHandle<u64> {
    net.run_in(Node::Client, move || {
        let mut c = CounterConn::connect(&format!("{GUEST_IP}:7000"), T).expect("connect");
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut n = 0;
        while n < min || !stop.load(Ordering::Relaxed) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let count = 1 + x % 8;
            let first = 1 + (x >> 8) % (blocks - count);
            c.write_blocks(first, count).expect("WRITE");
            n += 1;
        }
        n
    })
}

/// Waits until `b` (a backup) has committed two more checkpoints than now: whatever the guest
/// wrote before this call has reached its copy.
pub fn wait_two_commits(b: &Tandem) {
    let epoch = |b: &Tandem| crate::ft::ft_status(b)["last_committed_epoch"].as_u64();
    let from = epoch(b).unwrap_or(0);
    let start = Instant::now();
    while epoch(b).unwrap_or(0) < from + 2 {
        assert!(
            start.elapsed() < T,
            "the backup committed nothing after epoch {from}: {}",
            crate::ft::ft_status(b)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A tmpfs of a few MiB mounted for one test in a folder of its own; unmounted (lazily, so that
/// a process still holding a file in it does not keep it mounted) and removed when dropped.
pub struct SmallFs {
    dir: TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` bytes.
    pub fn mount(name: &str, size: u64) -> SmallFs {
        let dir = TempDir::new(name);
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tandem-small"])
            .arg(&dir.0)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount a tmpfs on {}", dir.0.display());
        SmallFs { dir }
    }

    /// A path inside the filesystem.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Before the folder itself is removed (TempDir's drop, right after this).
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir.0)
            .status();
    }
}
