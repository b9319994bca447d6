//! The thread that moves held output out of the gates whenever the epoch clock moves.

use super::epoch::EpochClock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the releaser sleeps without a clock change before pumping anyway, so that a gate
/// whose last attempt failed (e.g. a disk error) is retried.
const RETRY: Duration = Duration::from_millis(200);

/// A gate the releaser drives.
pub trait OutputGate: Send + Sync {
    /// Name for logs, e.g. `"net0 tx"`.
    fn name(&self) -> &str;
    /// Whether the gate reports durability (a disk gate); these are pumped before the others,
    /// so that the network sees the new release bound in the same round.
    fn is_durability_source(&self) -> bool;
    /// Releases whatever `clock` now allows; errors are the gate's to log and retry.
    fn pump(&self, clock: &EpochClock);
}

/// A running releaser thread; dropping it stops and joins the thread.
pub struct Releaser {
    stop: Arc<AtomicBool>,
    clock: Arc<EpochClock>,
    thread: Option<JoinHandle<()>>,
}

impl Releaser {
    /// Starts the thread that pumps `gates` (disks first) on every clock change.
    pub fn spawn(
        clock: Arc<EpochClock>,
        mut gates: Vec<Arc<dyn OutputGate>>,
    ) -> std::io::Result<Self> {
        gates.sort_by_key(|g| !g.is_durability_source());
        let stop = Arc::new(AtomicBool::new(false));
        let (t_stop, t_clock) = (stop.clone(), clock.clone());
        let thread = std::thread::Builder::new()
            .name("tandem_ft_release".into())
            .spawn(move || {
                crate::thread_hook::thread_started();
                let mut seen = t_clock.generation();
                // One last pump after the stop: the pair's end (unprotect) must move what it
                // releases now, not at the guest's next I/O.
                loop {
                    let last = t_stop.load(Ordering::Acquire);
                    for g in &gates {
                        g.pump(&t_clock);
                    }
                    if last {
                        break;
                    }
                    seen = t_clock.wait_change(seen, RETRY);
                }
            })?;
        Ok(Releaser {
            stop,
            clock,
            thread: Some(thread),
        })
    }
}

impl Drop for Releaser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.clock.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recorder {
        name: &'static str,
        disk: bool,
        log: Arc<Mutex<Vec<(&'static str, u64)>>>,
    }

    impl OutputGate for Recorder {
        fn name(&self) -> &str {
            self.name
        }
        fn is_durability_source(&self) -> bool {
            self.disk
        }
        fn pump(&self, clock: &EpochClock) {
            self.log
                .lock()
                .unwrap()
                .push((self.name, clock.committed()));
        }
    }

    #[test]
    fn pumps_disks_first_on_every_commit() {
        let clock = Arc::new(EpochClock::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        let gate = |name, disk| -> Arc<dyn OutputGate> {
            Arc::new(Recorder {
                name,
                disk,
                log: log.clone(),
            })
        };
        let r =
            Releaser::spawn(clock.clone(), vec![gate("net", false), gate("disk", true)]).unwrap();
        clock.capture().unwrap();
        clock.commit(1).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !log.lock().unwrap().iter().any(|&(_, c)| c == 1) {
            assert!(
                std::time::Instant::now() < deadline,
                "releaser never pumped"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(r);
        let log = log.lock().unwrap();
        for pair in log.chunks(2) {
            assert_eq!(pair[0].0, "disk");
        }
    }

    #[test]
    fn a_releaser_dropped_right_after_the_clock_moved_still_pumps_that_change() {
        for _ in 0..50 {
            let clock = Arc::new(EpochClock::new());
            let log = Arc::new(Mutex::new(Vec::new()));
            let gate: Arc<dyn OutputGate> = Arc::new(Recorder {
                name: "net",
                disk: false,
                log: log.clone(),
            });
            let r = Releaser::spawn(clock.clone(), vec![gate]).unwrap();
            clock.protect().unwrap();
            clock.capture().unwrap();
            clock.commit(1).unwrap();
            // The pair ends: the last release is this one, and nobody pumps afterwards.
            drop(r);
            let pumped = log.lock().unwrap().iter().any(|&(_, c)| c == 1);
            assert!(pumped, "the last clock change was never pumped");
        }
    }
}
