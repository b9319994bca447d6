use super::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

/// A fresh directory under the system temp dir, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> TestDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "tandem-arbiter-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn claim(role: Role, reason: &str) -> Claim {
    Claim::here(role, reason)
}

#[test]
fn first_claim_wins_and_the_second_learns_who() {
    let d = TestDir::new("basic");
    let a = FileArbiter::open(&d.0).unwrap();
    assert_eq!(a.current().unwrap(), None);
    let p = claim(Role::Primary, "backup silent");
    let b = claim(Role::Backup, "primary silent");
    assert_eq!(a.try_acquire(5, &p).unwrap(), Outcome::Won);
    let lost = a.try_acquire(5, &b).unwrap();
    assert_eq!(
        lost,
        Outcome::Lost(Holder {
            generation: 5,
            claim: Some(p.clone())
        })
    );
    assert!(format!(
        "{}",
        Holder {
            generation: 5,
            claim: Some(p.clone())
        }
    )
    .contains("backup silent"));
    // The same claim retried (after, say, an fsync error) is idempotent.
    assert_eq!(a.try_acquire(5, &p).unwrap(), Outcome::Won);
    assert_eq!(a.current().unwrap().map(|h| h.generation), Some(5));
    // The record is readable by an operator.
    let text = std::fs::read_to_string(d.0.join("gen-5")).unwrap();
    assert!(text.contains("\"role\": \"primary\""), "{text}");
}

#[test]
fn stale_generation_claim_is_refused() {
    let d = TestDir::new("stale");
    let a = FileArbiter::open(&d.0).unwrap();
    let newer = claim(Role::Backup, "moved on");
    assert_eq!(a.try_acquire(9, &newer).unwrap(), Outcome::Won);
    for g in [3, 8] {
        match a.try_acquire(g, &claim(Role::Primary, "late")).unwrap() {
            Outcome::Superseded(h) => {
                assert_eq!(h.generation, 9);
                assert_eq!(h.claim.as_ref(), Some(&newer));
            }
            o => panic!("generation {g}: {o:?}"),
        }
        // A refused claim leaves no record behind.
        assert!(!d.0.join(format!("gen-{g}")).exists());
    }
    assert_eq!(
        a.try_acquire(10, &claim(Role::Primary, "next")).unwrap(),
        Outcome::Won
    );
}

#[test]
fn empty_record_still_counts_as_taken() {
    // A claimant that crashed between create and write.
    let d = TestDir::new("empty");
    std::fs::File::create(d.0.join("gen-4")).unwrap();
    std::fs::write(d.0.join("gen-5"), b"{ garbled").unwrap();
    let a = FileArbiter::open(&d.0).unwrap();
    let c = claim(Role::Backup, "primary silent");
    assert_eq!(
        a.try_acquire(5, &c).unwrap(),
        Outcome::Lost(Holder {
            generation: 5,
            claim: None
        })
    );
    assert!(matches!(a.try_acquire(4, &c).unwrap(), Outcome::Superseded(h) if h.claim.is_none()));
    assert_eq!(
        a.current().unwrap(),
        Some(Holder {
            generation: 5,
            claim: None
        })
    );
}

#[test]
fn non_canonical_and_foreign_names_are_ignored() {
    let d = TestDir::new("names");
    for n in [
        "gen-007",
        "gen-+8",
        "gen-",
        "gen-x",
        "notes.txt",
        "gen-99999999999999999999",
    ] {
        std::fs::write(d.0.join(n), b"").unwrap();
    }
    let a = FileArbiter::open(&d.0).unwrap();
    assert_eq!(a.current().unwrap(), None);
    assert_eq!(
        a.try_acquire(7, &claim(Role::Primary, "x")).unwrap(),
        Outcome::Won
    );
    assert_eq!(parse_name_for_test("gen-0"), Some(0));
}

fn parse_name_for_test(n: &str) -> Option<u64> {
    // Through the public behaviour: a gen-0 record is seen by current().
    let d = TestDir::new("parse");
    std::fs::write(d.0.join(n), b"").unwrap();
    FileArbiter::open(&d.0)
        .unwrap()
        .current()
        .unwrap()
        .map(|h| h.generation)
}

#[test]
fn missing_and_non_directory_paths_are_clear_errors() {
    let d = TestDir::new("errs");
    let missing = d.0.join("nope");
    assert!(
        matches!(check_writable(&missing), Err(ArbiterError::Missing { path }) if path == missing)
    );
    let file = d.0.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        FileArbiter::open(&file),
        Err(ArbiterError::NotADirectory { .. })
    ));
    check_writable(&d.0).unwrap();
    // The probe leaves nothing behind.
    assert_eq!(std::fs::read_dir(&d.0).unwrap().count(), 1);
}

/// A directory this process cannot write: a 0500 directory, or, when running as root (who
/// ignores modes), a directory of procfs, which nobody can create files in.
fn unwritable_dir(d: &TestDir) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let ro = d.0.join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    if std::fs::write(ro.join("t"), b"").is_err() {
        return ro;
    }
    let _ = std::fs::remove_file(ro.join("t"));
    PathBuf::from("/proc/self")
}

#[test]
fn unwritable_directory_is_a_clear_error() {
    let d = TestDir::new("ro");
    let ro = unwritable_dir(&d);
    let e = FileArbiter::open(&ro).unwrap_err();
    assert!(matches!(e, ArbiterError::NotWritable { .. }), "{e}");
    assert!(e.to_string().contains("not writable"), "{e}");
    assert!(std::error::Error::source(&e).is_some());
    // An arbiter whose directory became unwritable errors instead of answering.
    if ro != Path::new("/proc/self") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).unwrap();
        let a = FileArbiter::open(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        assert!(a.try_acquire(1, &claim(Role::Primary, "x")).is_err());
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

#[test]
fn threads_racing_for_one_generation_have_exactly_one_winner() {
    const THREADS: usize = 6;
    const ROUNDS: u64 = 200;
    let d = TestDir::new("race");
    let a = Arc::new(FileArbiter::open(&d.0).unwrap());
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (a, barrier) = (a.clone(), barrier.clone());
            std::thread::spawn(move || {
                let me = Claim {
                    reason: format!("thread {t}"),
                    ..Claim::here(Role::Backup, "")
                };
                (1..=ROUNDS)
                    .map(|g| {
                        barrier.wait();
                        a.try_acquire(g, &me).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<Outcome>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // A late claimant of an old generation is refused: everything up to ROUNDS is decided.
    assert!(matches!(
        a.try_acquire(1, &claim(Role::Primary, "late")),
        Ok(Outcome::Superseded(h)) if h.generation == ROUNDS
    ));
    for g in 0..ROUNDS as usize {
        let winners: Vec<usize> = (0..THREADS)
            .filter(|&t| results[t][g] == Outcome::Won)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "generation {}: winners {winners:?}",
            g + 1
        );
        // Everyone else lost to the recorded winner (or, if the winner's write was slower than
        // the loser's grace re-reads, to an unknown holder: still a loss).
        for per_thread in &results {
            if let Outcome::Lost(h) = &per_thread[g] {
                if let Some(c) = &h.claim {
                    assert_eq!(c.reason, format!("thread {}", winners[0]));
                }
            }
        }
    }
}

const CHILD_DIR: &str = "TANDEM_ARBITER_RACE_DIR";
const CHILD_START: &str = "TANDEM_ARBITER_RACE_START_MS";
const PROC_ROUNDS: u64 = 150;

/// Child side of the cross-process race: claims 1..=PROC_ROUNDS as fast as it can once the
/// common start time comes, printing one line per generation. Runs only when spawned.
#[test]
#[ignore = "spawned by processes_racing_never_both_win"]
fn race_child() {
    let (Ok(dir), Ok(start)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_START)) else {
        return;
    };
    let start: u64 = start.parse().unwrap();
    while crate::status::unix_ms() < start {
        std::thread::yield_now();
    }
    let a = FileArbiter::open(dir).unwrap();
    let me = Claim::here(Role::Backup, "race");
    for g in 1..=PROC_ROUNDS {
        let o = match a.try_acquire(g, &me).unwrap() {
            Outcome::Won => "won",
            Outcome::Lost(_) => "lost",
            Outcome::Superseded(_) => "superseded",
        };
        println!("RACE {} {g} {o}", std::process::id());
    }
}

#[test]
fn processes_racing_never_both_win() {
    const PROCS: usize = 4;
    let d = TestDir::new("procs");
    let exe = std::env::current_exe().unwrap();
    let start = crate::status::unix_ms() + 500;
    let children: Vec<_> = (0..PROCS)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "arbiter::tests::race_child",
                    "--ignored",
                    "--nocapture",
                ])
                .args(["--test-threads", "1"])
                .env(CHILD_DIR, &d.0)
                .env(CHILD_START, start.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut wins = vec![Vec::new(); PROC_ROUNDS as usize + 1];
    let mut others = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        // libtest may print its own prefix on the first line.
        let lines: Vec<_> = text
            .lines()
            .filter_map(|l| l.find("RACE ").map(|i| &l[i..]))
            .collect();
        assert_eq!(lines.len(), PROC_ROUNDS as usize, "{text}");
        for l in lines {
            let f: Vec<_> = l.split(' ').collect();
            let (pid, g): (u32, usize) = (f[1].parse().unwrap(), f[2].parse().unwrap());
            match f[3] {
                "won" => wins[g].push(pid),
                _ => others += 1,
            }
        }
    }
    let a = FileArbiter::open(&d.0).unwrap();
    for (g, w) in wins.iter().enumerate().skip(1) {
        assert!(w.len() <= 1, "generation {g} won by {w:?}");
        if let [pid] = w[..] {
            // The record names the winner.
            let probe = a
                .try_acquire(g as u64, &claim(Role::Primary, "probe"))
                .unwrap();
            let holder = match probe {
                Outcome::Lost(h) => h,
                Outcome::Superseded(_) => {
                    let text = std::fs::read_to_string(d.0.join(format!("gen-{g}"))).unwrap();
                    let c: Claim = serde_json::from_str(&text).unwrap();
                    Holder {
                        generation: g as u64,
                        claim: Some(c),
                    }
                }
                Outcome::Won => panic!("generation {g} was free"),
            };
            assert_eq!(holder.claim.map(|c| c.pid), Some(pid));
        }
    }
    let won: usize = wins.iter().map(Vec::len).sum();
    assert!(won > 0);
    // Children ran concurrently and collided: most claims found the generation taken.
    assert!(others > 0, "no collisions: the children did not race");
}

#[test]
fn identity_is_created_once_and_read_back_by_everyone() {
    let d = TestDir::new("identity");
    let other = TestDir::new("identity-other");
    const THREADS: usize = 6;
    let barrier = Arc::new(Barrier::new(THREADS));
    // First users racing on one directory, each with its own arbiter (like two hosts).
    let ids: Vec<Identity> = (0..THREADS)
        .map(|_| {
            let (dir, barrier) = (d.0.clone(), barrier.clone());
            std::thread::spawn(move || {
                let a = FileArbiter::open(&dir).unwrap();
                barrier.wait();
                a.identity().unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let a = FileArbiter::open(&d.0).unwrap();
    assert_eq!(a.identity().unwrap(), ids[0]);
    // Through the trait object the VMM holds, too.
    let shared: Arc<dyn Arbiter> = open(&ArbiterConfig::Path(d.0.clone())).unwrap();
    assert_eq!(shared.identity().unwrap(), ids[0]);
    // The record is one line an operator can read; no temporary file is left behind.
    let text = std::fs::read_to_string(d.0.join("identity")).unwrap();
    assert_eq!(text, format!("{}\n", ids[0]));
    let names: Vec<_> = std::fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["identity"]);
    // Other storage, another identity: what lets a pair refuse members that disagree.
    let b = FileArbiter::open(&other.0).unwrap();
    assert_ne!(b.identity().unwrap(), ids[0]);
    // The record does not disturb the generations.
    assert_eq!(a.current().unwrap(), None);
    assert_eq!(
        a.try_acquire(1, &claim(Role::Primary, "x")).unwrap(),
        Outcome::Won
    );
}

#[test]
fn a_garbled_identity_is_an_error_not_replaced() {
    let d = TestDir::new("identity-bad");
    std::fs::write(d.0.join("identity"), "not an id\n").unwrap();
    let a = FileArbiter::open(&d.0).unwrap();
    let e = a.identity().unwrap_err();
    assert!(matches!(e, ArbiterError::BadIdentity { .. }), "{e}");
    assert!(e.to_string().contains("not an id"), "{e}");
    assert_eq!(
        std::fs::read_to_string(d.0.join("identity")).unwrap(),
        "not an id\n"
    );
}
