//! Watches both hosts' VMMs for the whole run: the moment both run the guest on their own, that
//! is a violation of "at most one live VM", recorded with both answers.
//!
//! "Runs on its own" is what an outside observer could see: the VM is Running or Paused and
//! nothing holds its output back — a standalone VMM, or an unprotected primary. A syncing or
//! protected primary's output waits for its backup's acks, and a stopped (SIGSTOP) or dead
//! process answers nothing and sends nothing.

use api_client::ApiClient;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The API sockets of the VMMs on the two hosts now (a slot is `None` between processes).
pub type Sockets = Arc<Mutex<[Option<PathBuf>; 2]>>;

/// What one poll of a VMM found, when it answered in time.
fn runs_alone(socket: &PathBuf) -> Option<(bool, String)> {
    let c = ApiClient::new(socket).with_timeout(Duration::from_millis(300));
    let info = c.get("vm.info").ok()?;
    let status = c.get("ft.status").ok()?;
    let info: Value = info.into_result().ok().flatten().unwrap_or(Value::Null);
    let status: Value = status.into_result().ok().flatten().unwrap_or(Value::Null);
    let running = matches!(info["state"].as_str(), Some("Running" | "Paused"));
    let alone = status["role"] == "standalone" || status["state"] == "unprotected";
    let seen = format!(
        "vm.info {} / ft.status {}/{} gen {}",
        info["state"], status["role"], status["state"], status["generation"]
    );
    Some((running && alone, seen))
}

/// A running watcher; stop it with [`Watcher::finish`].
pub struct Watcher {
    stop: Arc<AtomicBool>,
    polls: Arc<AtomicU64>,
    violations: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Starts polling `sockets` every few milliseconds.
    pub fn start(sockets: Sockets, run_start: Instant) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(AtomicU64::new(0));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let (s, p, v) = (stop.clone(), polls.clone(), violations.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let now: [Option<PathBuf>; 2] =
                    sockets.lock().map(|g| g.clone()).unwrap_or_default();
                let seen: Vec<Option<(bool, String)>> = now
                    .iter()
                    .map(|sock| sock.as_ref().and_then(runs_alone))
                    .collect();
                p.fetch_add(1, Ordering::Relaxed);
                if seen.iter().all(|x| matches!(x, Some((true, _)))) {
                    let what: Vec<String> = seen.into_iter().flatten().map(|x| x.1).collect();
                    if let Ok(mut v) = v.lock() {
                        v.push(format!(
                            "at {:?}: both hosts run the guest: P [{}], B [{}]",
                            run_start.elapsed(),
                            what.first().cloned().unwrap_or_default(),
                            what.get(1).cloned().unwrap_or_default()
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(15));
            }
        });
        Watcher {
            stop,
            polls,
            violations,
            thread: Some(thread),
        }
    }

    /// The violations so far.
    pub fn violations(&self) -> Vec<String> {
        self.violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// How many times both hosts were polled.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Stops it; every violation seen.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.violations()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
