//! A packet capture of a link of the test network with Debian's `tcpdump`, and the TCP byte
//! streams in it reassembled from the pcap file, so a test can look for what crossed the link
//! whole (a string cut between two segments is still found).

use crate::net::{Node, TestNet};
use crate::TempDir;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `tcpdump` runs here; installs Debian's package when missing and we are root. Prints a
/// loud SKIPPED line for `test` when it cannot.
pub fn tcpdump_available(test: &str) -> bool {
    let runs = || {
        Command::new("tcpdump")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if runs() {
        return true;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("[{test}] tcpdump missing: installing Debian's package");
        let installed = Command::new("sh")
            .args([
                "-c",
                "apt-get install -y -qq tcpdump >/dev/null 2>&1 || \
                 (apt-get update -qq >/dev/null 2>&1 && \
                  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcpdump >/dev/null 2>&1)",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        if installed && runs() {
            return true;
        }
    }
    eprintln!(
        "\n*** SKIPPED: {test}: needs tcpdump (Debian package tcpdump), not installable here ***\n"
    );
    false
}

/// Waits (at most 30 s) until the tcpdump `child` (its stderr piped) says it listens on `what`,
/// reading its standard error on a thread from then on (echoed to the test's log when `echo`);
/// kills it and panics when it never does.
pub fn wait_listening(child: &mut Child, echo: bool, what: &str) {
    let stderr = child.stderr.take().expect("tcpdump stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if echo {
                eprintln!("tcpdump: {line}");
            }
            if line.contains("listening on") {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        panic!("tcpdump never said it was listening on {what}");
    }
}

/// A running capture; stopped (and its file read) by [`Capture::stop`].
pub struct Capture {
    child: Child,
    file: PathBuf,
    _dir: TempDir,
}

impl Capture {
    /// Captures whole packets matching `filter` (tcpdump syntax) on `iface` in `node`'s
    /// namespace; returns once tcpdump listens.
    pub fn start(net: &TestNet, node: Node, iface: &str, filter: &str) -> Capture {
        let dir = TempDir::new("capture");
        let file = dir.path("link.pcap");
        let mut child = net
            .command(node, "tcpdump")
            // Whole packets (GSO super-packets included), handed over and written as they come
            // (not held in a kernel block that a stop would lose), a large buffer so that a
            // burst is not dropped, no name lookups.
            .args([
                "-i",
                iface,
                "-s",
                "0",
                "--immediate-mode",
                "-U",
                "-B",
                "16384",
                "-n",
            ])
            .arg("-w")
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        // Its summary (packets captured, dropped by the kernel) goes to the test's log.
        wait_listening(&mut child, true, iface);
        Capture {
            child,
            file,
            _dir: dir,
        }
    }

    /// Stops tcpdump (SIGTERM, so that it flushes) once its file has stopped growing, and
    /// returns the pcap file's bytes.
    pub fn stop(mut self) -> Vec<u8> {
        let size = || std::fs::metadata(&self.file).map_or(0, |m| m.len());
        let mut last = size();
        let start = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = size();
            if now == last || start.elapsed() > Duration::from_secs(10) {
                break;
            }
            last = now;
        }
        // SAFETY: kill(2) on the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        std::fs::read(&self.file).expect("read the capture")
    }
}

/// One direction of a TCP connection: source and destination ports.
pub type Flow = (u16, u16);

/// The payload of one direction of a TCP connection, as far as the capture saw it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stream {
    /// The bytes in order, gaps left out.
    pub bytes: Vec<u8>,
    /// Bytes the capture missed between the first and the last it saw.
    pub missing: u64,
}

fn u16_be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The TCP payload of each flow to `port` in an Ethernet/IPv4 pcap, reassembled by sequence
/// number (retransmissions and overlaps once); a gap the capture missed is skipped and counted.
/// Panics on a file that is not a pcap of Ethernet frames.
pub fn tcp_streams_to(pcap: &[u8], port: u16) -> BTreeMap<Flow, Stream> {
    assert!(pcap.len() >= 24, "not a pcap file: {} bytes", pcap.len());
    let le = match pcap[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a pcap file (magic {:02x?})", &pcap[..4]),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = pcap.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    assert_eq!(u32_at(20), Some(1), "pcap link type is not Ethernet");
    // Per flow: payload by sequence number relative to the flow's first segment.
    let mut segments: BTreeMap<Flow, (u32, BTreeMap<u64, Vec<u8>>)> = BTreeMap::new();
    let mut at = 24;
    while let (Some(incl), Some(_)) = (u32_at(at + 8), u32_at(at + 12)) {
        let start = at + 16;
        let Some(frame) = pcap.get(start..start + incl as usize) else {
            break;
        };
        at = start + incl as usize;
        if u16_be(frame, 12) != Some(0x0800) {
            continue;
        }
        let ip = &frame[14..];
        let (Some(&vihl), Some(&proto), Some(total)) = (ip.first(), ip.get(9), u16_be(ip, 2))
        else {
            continue;
        };
        if vihl >> 4 != 4 || proto != 6 {
            continue;
        }
        let ihl = usize::from(vihl & 0xf) * 4;
        let Some(tcp) = ip.get(ihl..usize::from(total).min(ip.len())) else {
            continue;
        };
        let (Some(src), Some(dst), Some(seq), Some(&off)) =
            (u16_be(tcp, 0), u16_be(tcp, 2), u32_be(tcp, 4), tcp.get(12))
        else {
            continue;
        };
        let data = &tcp[(usize::from(off >> 4) * 4).min(tcp.len())..];
        if dst != port || data.is_empty() {
            continue;
        }
        let (isn, segs) = segments
            .entry((src, dst))
            .or_insert_with(|| (seq, BTreeMap::new()));
        let rel = u64::from(seq.wrapping_sub(*isn));
        let e = segs.entry(rel).or_default();
        if data.len() > e.len() {
            *e = data.to_vec();
        }
    }
    segments
        .into_iter()
        .map(|(flow, (_, segs))| {
            let mut s = Stream::default();
            let mut end = None;
            for (rel, data) in segs {
                let at = end.unwrap_or(rel);
                s.missing += rel.saturating_sub(at);
                let skip = at.saturating_sub(rel) as usize;
                if skip < data.len() {
                    s.bytes.extend_from_slice(&data[skip..]);
                    end = Some(rel + data.len() as u64);
                }
            }
            (flow, s)
        })
        .collect()
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IPv4/TCP frame from port 40000 to `dst` carrying `data` at sequence `seq`.
    fn frame(dst: u16, seq: u32, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = (20 + 20 + data.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 64, 6, 0, 0, 10, 99, 0, 1, 10, 99, 0, 2]);
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&40000u16.to_be_bytes());
        tcp.extend_from_slice(&dst.to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x18, 0, 0, 0, 0, 0, 0]);
        f.extend(ip);
        f.extend(tcp);
        f.extend_from_slice(data);
        f
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        p.extend_from_slice(&[0; 8]);
        p.extend_from_slice(&262144u32.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        for f in frames {
            p.extend_from_slice(&[0; 8]);
            p.extend_from_slice(&(f.len() as u32).to_le_bytes());
            p.extend_from_slice(&(f.len() as u32).to_le_bytes());
            p.extend_from_slice(f);
        }
        p
    }

    #[test]
    fn streams_are_reassembled_across_segments_retransmissions_and_wraps() {
        let isn = u32::MAX - 3;
        let p = pcap(&[
            frame(7600, isn, b"the secret "),
            frame(9999, isn, b"other port"),
            // A retransmission of the first segment, then the rest, across the wrap of u32.
            frame(7600, isn, b"the secret "),
            frame(7600, isn.wrapping_add(11), b"text"),
        ]);
        let streams = tcp_streams_to(&p, 7600);
        assert_eq!(streams.len(), 1);
        let s = &streams[&(40000, 7600)];
        assert_eq!((&s.bytes[..], s.missing), (&b"the secret text"[..], 0));
        assert!(contains(&s.bytes, b"secret text") && !contains(&s.bytes, b"other"));
        // A segment the capture missed is a counted gap.
        let p = pcap(&[frame(7600, 100, b"abc"), frame(7600, 110, b"xyz")]);
        let s = &tcp_streams_to(&p, 7600)[&(40000, 7600)];
        assert_eq!((&s.bytes[..], s.missing), (&b"abcxyz"[..], 7));
    }
}
