//! The guest's serial console as a file the VMM appends to; tests wait for lines in it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A serial output file.
pub struct SerialLog {
    path: PathBuf,
}

impl SerialLog {
    /// Watches `path` (it may not exist yet).
    pub fn new(path: &Path) -> Self {
        SerialLog {
            path: path.to_path_buf(),
        }
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        std::fs::read(&self.path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until at least `n` lines contain `needle`; panics with the console on timeout.
    pub fn wait_count(&self, needle: &str, n: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.count(needle) >= n {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {n} x {needle:?}; console:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for one more line containing `needle` than there are now... callers pass the count
    /// they saw; this is the common single-line case.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Duration {
        self.wait_count(needle, 1, timeout)
    }
}
