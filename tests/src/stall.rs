//! A disk that stalls on demand, for real: a small ext4 filesystem on a loop device whose writes
//! block in the kernel while it is frozen (`fsfreeze`), as they do behind a hung SAN path or NFS
//! server. Images put on it are ordinary files both hosts of the test network open.
//!
//! A frozen filesystem hangs every writer in uninterruptible sleep (not even SIGKILL ends it), so
//! [`Frozen`] thaws when dropped, also when a test panics: keep it declared after the processes
//! that write, so that it is dropped (thawed) before they are killed.

use crate::TempDir;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a command; `Err` with its output when it fails.
fn run(program: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<(), String> {
    let mut c = Command::new(program);
    for a in args {
        c.arg(a);
    }
    let out = c.output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{program} {:?}: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// An ext4 filesystem on a loop device, mounted in a scratch folder; unmounted when dropped.
pub struct StallableFs {
    mount: PathBuf,
    /// Holds the image and the mount point; removed last.
    _dir: TempDir,
}

/// Whether this host can make a [`StallableFs`] (root, loop devices, mkfs.ext4, fsfreeze):
/// the probe for `require!("stallable-fs" => tandem_tests::stall::probe())`.
pub fn probe() -> Result<(), String> {
    StallableFs::make(8).map(drop)
}

impl StallableFs {
    /// Makes and mounts a `size_mib` filesystem; panics where this host cannot (guard the test
    /// with [`probe`]).
    pub fn new(size_mib: u64) -> StallableFs {
        StallableFs::make(size_mib).unwrap_or_else(|e| panic!("stallable filesystem: {e}"))
    }

    fn make(size_mib: u64) -> Result<StallableFs, String> {
        let dir = TempDir::new("stallfs");
        let image = dir.path("fs.img");
        let mount = dir.path("mnt");
        let made = (|| {
            std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
            std::fs::File::create(&image)
                .and_then(|f| f.set_len(size_mib << 20))
                .map_err(|e| e.to_string())?;
            run("mkfs.ext4", &[&"-q", &"-F", &image])?;
            run("mount", &[&"-o", &"loop", &image, &mount])?;
            // The freeze itself must work here (some filesystems and containers refuse it).
            run("fsfreeze", &[&"-f", &mount])?;
            run("fsfreeze", &[&"-u", &mount])
        })();
        match made {
            Ok(()) => Ok(StallableFs { mount, _dir: dir }),
            Err(e) => {
                let _ = run("umount", &[&mount]);
                Err(format!(
                    "needs a loop-mounted ext4 that fsfreeze can freeze (root, \
                     /dev/loop-control, e2fsprogs, util-linux): {e}"
                ))
            }
        }
    }

    /// A path on the filesystem.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }

    /// Freezes the filesystem: from now on every write to it blocks until the guard is dropped.
    pub fn freeze(&self) -> Frozen<'_> {
        run("fsfreeze", &[&"-f", &self.mount]).expect("fsfreeze -f");
        Frozen { mount: &self.mount }
    }
}

impl Drop for StallableFs {
    fn drop(&mut self) {
        // A process of the test may still hold a file open for a moment; lazily detach then.
        if run("umount", &[&self.mount]).is_err() {
            let _ = run("umount", &[&"-l", &self.mount]);
        }
    }
}

/// A frozen [`StallableFs`]; thawed when dropped.
pub struct Frozen<'a> {
    mount: &'a Path,
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Err(e) = run("fsfreeze", &[&"-u", &self.mount]) {
            eprintln!("thawing {}: {e}", self.mount.display());
        }
    }
}
