//! Who answers for the guest on the wire: a `tcpdump` on each host's tap records every frame the
//! guest sends out there (its IP as the source, ARP included). Held output never reaches the tap,
//! so only a member that runs the guest on its own, or releases a committed epoch's output, shows
//! up. Two live VMs answer the client's INCs from both hosts at once; a failover hands over from
//! one host to the other once. The check: no host sends again after the other has sent, within
//! [`WINDOW`] of its own earlier frame (A … B … A inside a second).

use crate::net::{Node, TestNet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Interleaving this close is two hosts answering at once, not a hand-over.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Frames seen: (capture time in seconds, host slot).
type Seen = Arc<Mutex<Vec<(f64, usize)>>>;

/// The two captures.
pub struct Wire {
    children: Vec<Child>,
    seen: Seen,
}

impl Wire {
    /// Starts a capture on `tap` in each of `nodes` (slot 0 and 1) for frames from `guest_ip`;
    /// returns once both listen.
    pub fn start(net: &TestNet, nodes: [Node; 2], tap: &str, guest_ip: &str) -> Wire {
        let seen: Seen = Arc::default();
        let mut children = Vec::new();
        for (slot, node) in nodes.into_iter().enumerate() {
            let mut child = net
                .command(node, "tcpdump")
                // Frames the guest sent (into the host from the tap), one line each as they
                // come, with epoch timestamps, no name lookups.
                .args(["-i", tap, "-Q", "in", "-l", "-n", "-tt", "-B", "4096"])
                .arg(format!("src host {guest_ip}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start tcpdump");
            let out = child.stdout.take().expect("tcpdump stdout");
            let s = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let t = line.split_whitespace().next().and_then(|w| w.parse().ok());
                    if let (Some(t), Ok(mut v)) = (t, s.lock()) {
                        v.push((t, slot));
                    }
                }
            });
            crate::capture::wait_listening(&mut child, false, &format!("{tap} of host {slot}"));
            children.push(child);
        }
        Wire { children, seen }
    }

    /// Frames seen so far from each host.
    pub fn counts(&self) -> [usize; 2] {
        let v = self.seen.lock().map(|v| v.clone()).unwrap_or_default();
        let mut n = [0, 0];
        for (_, slot) in v {
            n[slot] += 1;
        }
        n
    }

    /// Every time a host sent again within [`WINDOW`] of its own earlier frame with the other
    /// host's frame in between.
    pub fn violations(&self) -> Vec<String> {
        let mut v = self.seen.lock().map(|v| v.clone()).unwrap_or_default();
        interleavings(&mut v)
    }

    /// Stops both captures.
    pub fn finish(mut self) -> ([usize; 2], Vec<String>) {
        // Lines already read stay; give the readers a moment for the last ones.
        std::thread::sleep(Duration::from_millis(300));
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        (self.counts(), self.violations())
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The A … B … A patterns within [`WINDOW`] in `seen` (sorted here by time).
fn interleavings(seen: &mut [(f64, usize)]) -> Vec<String> {
    seen.sort_by(|a, b| a.0.total_cmp(&b.0));
    let window = WINDOW.as_secs_f64();
    let mut found = Vec::new();
    // The last frame of each host so far, and the last switch from one host to the other.
    let mut last = [None::<f64>; 2];
    for &(t, host) in seen.iter() {
        let other = 1 - host;
        if let (Some(mine), Some(theirs)) = (last[host], last[other]) {
            if theirs > mine && t - mine <= window {
                found.push(format!(
                    "host {host} sent at {mine:.6} and again at {t:.6}, host {other} at {theirs:.6} in between"
                ));
            }
        }
        last[host] = Some(t);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_passes_and_two_hosts_answering_do_not() {
        let mut handover = vec![(1.0, 0), (1.1, 0), (2.5, 1), (2.6, 1), (9.0, 0)];
        assert!(interleavings(&mut handover).is_empty());
        let mut both = vec![(1.0, 0), (1.2, 1), (1.4, 0), (1.6, 1)];
        let v = interleavings(&mut both);
        assert_eq!(v.len(), 2, "{v:?}");
    }
}
