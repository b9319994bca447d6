//! The file arbiter: a directory on shared storage; generation `G` is won by creating
//! `gen-<G>` with `O_CREAT|O_EXCL`.
//!
//! Winning is the create itself: the kernel (or NFSv3+/CephFS/etc. server) lets exactly one
//! `O_EXCL` create of a name succeed. The claim is then written into the file, the file fsync'd and
//! the directory fsync'd, so that the win survives a crash of the storage host. A claimant that
//! dies between create and write leaves an **empty** file: the generation is still taken (by an
//! unknown holder) — treating it as free would let a second claimant win a generation the first
//! may already be live in. An empty record also cannot prove who made it, so even its creator
//! counts as having lost; the pair then needs an operator (or a higher generation via ft.enable).
//!
//! Ordering against higher generations: a claim for `G` looks for anything above `G` before
//! creating and again after its record is durable. The second look closes the window where a
//! `G+1` appears meanwhile: then `G` is held but not won, so nobody is live in it.
//!
//! The store's [`Identity`] is the file `identity`: written in full to a private temporary file
//! (created `O_EXCL`), fsync'd, then hard-linked to its name. `link(2)` fails if the name exists,
//! so concurrent first users agree on one identity, and unlike create-then-write, nobody can ever
//! read a half-written or empty identity (a crash leaves only a stray temporary file).

use super::{Arbiter, ArbiterError, Claim, Holder, Identity, Outcome};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest claim record read back; a claim is a few hundred bytes, storage is not trusted.
const MAX_RECORD: u64 = 64 * 1024;
/// Reads of an empty/garbled record before calling its holder unknown, and the pause between.
const EMPTY_RECORD_RETRIES: u32 = 5;
const EMPTY_RECORD_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
/// The identity record's name, and the most of it read back.
const IDENTITY: &str = "identity";
const MAX_IDENTITY: u64 = 4096;

/// The file-based arbiter over one directory.
#[derive(Debug, Clone)]
pub struct FileArbiter {
    dir: PathBuf,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ArbiterError + 'a {
    move |source| ArbiterError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The generation a directory entry names, if it is a canonical `gen-<decimal>` (no sign, no
/// leading zeros, so that `gen-7` and `gen-007` can never be two records of one generation).
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("gen-")?;
    let g: u64 = digits.parse().ok()?;
    (g.to_string() == digits).then_some(g)
}

/// Checks up front (ft.enable/ft.receive) that `dir` exists, is a directory, and that a file can
/// be created, written, fsync'd and removed in it.
pub fn check_writable(dir: &Path) -> Result<(), ArbiterError> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(ArbiterError::Missing {
                path: dir.to_owned(),
            })
        }
        Err(e) => return Err(io("stat", dir)(e)),
    };
    if !meta.is_dir() {
        return Err(ArbiterError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    static PROBE: AtomicU64 = AtomicU64::new(0);
    let probe = dir.join(format!(
        ".probe-{}-{}",
        std::process::id(),
        PROBE.fetch_add(1, Ordering::Relaxed)
    ));
    let not_writable = |source| ArbiterError::NotWritable {
        path: dir.to_owned(),
        source,
    };
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| {
            f.write_all(b"probe")?;
            f.sync_all()
        });
    // Remove whatever was created, even if writing it failed; a failure to remove is reported.
    let removed = match std::fs::remove_file(&probe) {
        Err(e) if e.kind() == ErrorKind::NotFound && written.is_err() => Ok(()),
        r => r,
    };
    written.map_err(not_writable)?;
    removed.map_err(not_writable)
}

impl FileArbiter {
    /// An arbiter over `dir`, checked with [`check_writable`] first.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileArbiter, ArbiterError> {
        let dir = dir.into();
        check_writable(&dir)?;
        Ok(FileArbiter { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn record(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("gen-{generation}"))
    }

    /// The highest generation named in the directory.
    fn highest(&self) -> Result<Option<u64>, ArbiterError> {
        let mut best = None;
        let entries = std::fs::read_dir(&self.dir).map_err(io("list", &self.dir))?;
        for e in entries {
            let e = e.map_err(io("list", &self.dir))?;
            if let Some(g) = e.file_name().to_str().and_then(parse_name) {
                best = best.max(Some(g));
            }
        }
        Ok(best)
    }

    /// Reads who holds `generation` (whose record is known to exist).
    fn holder(&self, generation: u64) -> Result<Holder, ArbiterError> {
        let path = self.record(generation);
        let mut tries = 0;
        loop {
            let mut text = Vec::new();
            File::open(&path)
                .and_then(|f| f.take(MAX_RECORD).read_to_end(&mut text))
                .map_err(io("read", &path))?;
            if let Ok(claim) = serde_json::from_slice(&text) {
                return Ok(Holder {
                    generation,
                    claim: Some(claim),
                });
            }
            // The winner may be between its create and its write: give it a moment so that the
            // loser can name it. Still empty or garbled after that: taken, by an unknown holder.
            tries += 1;
            if tries >= EMPTY_RECORD_RETRIES {
                return Ok(Holder {
                    generation,
                    claim: None,
                });
            }
            std::thread::sleep(EMPTY_RECORD_PAUSE);
        }
    }

    fn superseded_above(&self, generation: u64) -> Result<Option<Outcome>, ArbiterError> {
        match self.highest()? {
            Some(h) if h > generation => Ok(Some(Outcome::Superseded(self.holder(h)?))),
            _ => Ok(None),
        }
    }

    /// The identity record, if there is one.
    fn read_identity(&self) -> Result<Option<Identity>, ArbiterError> {
        let path = self.dir.join(IDENTITY);
        let mut text = String::new();
        match File::open(&path).and_then(|f| f.take(MAX_IDENTITY).read_to_string(&mut text)) {
            Ok(_) => Identity::parse_at(&text, path.display().to_string()).map(Some),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Writes a fresh identity under its name unless one is there already.
    fn create_identity(&self) -> Result<(), ArbiterError> {
        static TMP: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".identity-{}-{}",
            std::process::id(),
            TMP.fetch_add(1, Ordering::Relaxed)
        ));
        let fresh = Identity::random()?;
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(format!("{fresh}\n").as_bytes())?;
                f.sync_all()
            })
            .map_err(io("write", &tmp));
        let path = self.dir.join(IDENTITY);
        let linked = written.and_then(|()| match std::fs::hard_link(&tmp, &path) {
            Ok(()) => File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io("fsync directory", &self.dir)),
            // Another member was first: its identity stands.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io("link", &path)(e)),
        });
        let removed = match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            r => r.map_err(io("remove", &tmp)),
        };
        linked.and(removed)
    }

    fn write_claim(&self, path: &Path, mut f: File, claim: &Claim) -> Result<(), ArbiterError> {
        let mut text = serde_json::to_vec_pretty(claim).map_err(ArbiterError::Encode)?;
        text.push(b'\n');
        f.write_all(&text).map_err(io("write", path))?;
        f.sync_all().map_err(io("fsync", path))?;
        // The new name must be durable too, not just the file's data.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", &self.dir))
    }
}

impl Arbiter for FileArbiter {
    fn try_acquire(&self, generation: u64, claimant: &Claim) -> Result<Outcome, ArbiterError> {
        if let Some(o) = self.superseded_above(generation)? {
            return Ok(o);
        }
        let path = self.record(generation);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => self.write_claim(&path, f, claimant)?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let holder = self.holder(generation)?;
                // A retry after an error past the create (write, fsync) finds its own record.
                if holder.claim.as_ref() == Some(claimant) {
                    return Ok(self.superseded_above(generation)?.unwrap_or(Outcome::Won));
                }
                return Ok(Outcome::Lost(holder));
            }
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                return Err(ArbiterError::NotWritable {
                    path: self.dir.clone(),
                    source: e,
                })
            }
            Err(e) => return Err(io("create", &path)(e)),
        }
        Ok(self.superseded_above(generation)?.unwrap_or(Outcome::Won))
    }

    fn current(&self) -> Result<Option<Holder>, ArbiterError> {
        self.highest()?.map(|g| self.holder(g)).transpose()
    }

    fn identity(&self) -> Result<Identity, ArbiterError> {
        if let Some(id) = self.read_identity()? {
            return Ok(id);
        }
        self.create_identity()?;
        self.read_identity()?.ok_or_else(|| ArbiterError::Io {
            op: "read",
            path: self.dir.join(IDENTITY),
            source: std::io::Error::new(
                ErrorKind::NotFound,
                "the identity vanished right after it was created",
            ),
        })
    }
}
