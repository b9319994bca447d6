//! Counter: a durable 64-bit counter on TCP port 7000, one request per line.
//!
//! * `INC` adds one, stores the value on every writable disk and flushes
//!   them, and only then answers `<value>`.
//! * `GET` answers the value.
//! * `WRITE <first> <count>` fills 4 KiB blocks `first..first + count` (not
//!   block 0, at most 256) of every writable disk with a pattern new to this
//!   command, flushes them, and answers `<count>` (`ERR ...` otherwise): disk
//!   traffic a test can place, e.g. to check a replica block by block.
//!
//! It listens on every configured NIC; all share the one value.  Requests of
//! all connections (on all NICs) are taken in rounds: every complete line
//! the sockets hold is answered into the sockets' send buffers, then — if
//! any INC came — the value is written and flushed once (a group commit),
//! and only after that does the stack get to transmit the answers.

mod lines;
mod record;

use core::fmt::Write;

use super::service::{self, Service};
use crate::net::sockets::{Handle, Sockets, MAX_TCP};
use crate::say;
use crate::virtio::MAX_NICS;
use lines::{Line, Lines};
use record::Store;

const PORT: u16 = 7000;
/// The longest answer: u64::MAX and a newline.
const MAX_ANSWER: usize = 21;
/// Answers produced per socket per batch (they are staged on the stack).
const BATCH_LINES: usize = 24;
/// Most blocks one `WRITE` fills (it runs before the next request is read).
const MAX_FILL_BLOCKS: u64 = 256;

/// Listening sockets on all NICs together.
const MAX_CONNECTIONS: usize = MAX_TCP * MAX_NICS;
// `serve` marks the sockets that answered an INC in a u32.
const _: () = assert!(MAX_CONNECTIONS <= 32);

struct Connection {
    handle: Handle,
    lines: Lines,
}

struct Counter {
    value: u64,
    /// The value on disk (what INC rolls back to if storing fails).
    saved: u64,
    store: Store,
    /// `WRITE` commands so far: each one's pattern differs from the last.
    fills: u64,
    connections: [Option<Connection>; MAX_CONNECTIONS],
}

pub fn run() -> ! {
    service::run(|devices, sockets| {
        let (mut store, loaded) = match Store::load(devices.disks.iter_mut().flatten()) {
            Ok(loaded) => loaded,
            Err((i, e)) => {
                say!(
                    "tandem-guest: error: counter: cannot read disk {}: {}",
                    i,
                    e
                );
                return None;
            }
        };
        let value = loaded.value;
        match (store.count(), store.written()) {
            (0, _) => say!(
                "tandem-guest: warning: counter: no disk, the value will not survive a restart"
            ),
            (1, 0) => {
                say!("tandem-guest: warning: counter: disk 0 is read-only, INC is refused")
            }
            (n, 0) => say!(
                "tandem-guest: warning: counter: all {} disks are read-only, INC is refused",
                n
            ),
            _ => {
                for i in store.read_only() {
                    say!(
                        "tandem-guest: warning: counter: disk {} is read-only, it is not written",
                        i
                    );
                }
            }
        }
        say!("tandem-guest: counter value={}", value);
        say!(
            "tandem-guest: counter source={} disks={} written={}",
            Source(loaded.from),
            store.count(),
            store.written()
        );
        if loaded.from.is_some() {
            // A disk that missed INCs (or a new one) must not hand out an
            // old value if it is the first with a record next time.
            let mut resync = false;
            for (i, record, writable) in store.stale(value) {
                say!(
                    "tandem-guest: warning: counter: disk {} held {}{}",
                    i,
                    Record(record),
                    if writable {
                        "; rewritten"
                    } else {
                        "; read-only, left as it is"
                    }
                );
                resync |= writable;
            }
            if resync {
                if let Err((i, e)) = store.save(value) {
                    say!(
                        "tandem-guest: error: counter: cannot write disk {}: {}",
                        i,
                        e
                    );
                    return None;
                }
            }
        }
        let mut connections = [const { None }; MAX_CONNECTIONS];
        let mut slots = connections.iter_mut();
        for nic in 0..MAX_NICS {
            if !sockets.has(nic) {
                continue;
            }
            for _ in 0..MAX_TCP {
                let handle = sockets.add_tcp(nic)?;
                if let Err(e) = sockets.tcp(handle).listen(PORT) {
                    say!("tandem-guest: error: counter: listen: {:?}", e);
                    return None;
                }
                *slots.next()? = Some(Connection {
                    handle,
                    lines: Lines::new(),
                });
            }
        }
        Some(Counter {
            value,
            saved: value,
            store,
            fills: 0,
            connections,
        })
    })
}

/// `disk<i>`, or `none` when no disk holds a record.
struct Source(Option<usize>);

impl core::fmt::Display for Source {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self.0 {
            Some(i) => write!(f, "disk{i}"),
            None => f.write_str("none"),
        }
    }
}

/// A record read at start: `<value>`, or `no record`.
struct Record(Option<u64>);

impl core::fmt::Display for Record {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("no record"),
        }
    }
}

/// Answers staged on the stack until they go into a socket.
struct Answers {
    buf: [u8; BATCH_LINES * MAX_ANSWER],
    len: usize,
}

impl Write for Answers {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl Counter {
    fn answer(&mut self, line: Line, out: &mut Answers, incremented: &mut bool) {
        let _ = match line {
            Line::Text(b"INC") if self.store.writable() => {
                self.value += 1;
                *incremented = true;
                writeln!(out, "{}", self.value)
            }
            Line::Text(b"INC") => out.write_str("ERR read-only\n"),
            Line::Text(b"GET") => writeln!(out, "{}", self.value),
            Line::Text(cmd) if cmd.starts_with(b"WRITE ") => self.fill(&cmd[6..], out),
            // Powers the VM off (for the VMM's power-off paths, e.g. under FT).
            Line::Text(b"OFF") => crate::workloads::power::power_off(),
            Line::Text(b"") => Ok(()),
            Line::Text(_) => out.write_str("ERR unknown\n"),
            Line::TooLong => out.write_str("ERR too long\n"),
        };
    }

    /// `WRITE <first> <count>`: fills the blocks now (durable before the
    /// answer is queued) and answers the count.
    fn fill(&mut self, args: &[u8], out: &mut Answers) -> core::fmt::Result {
        let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let (Some(first), Some(count), None) = (
            words.next().and_then(parse_u64),
            words.next().and_then(parse_u64),
            words.next(),
        ) else {
            return out.write_str("ERR usage: WRITE <first> <count>\n");
        };
        if count > MAX_FILL_BLOCKS {
            return out.write_str("ERR too many blocks\n");
        }
        self.fills += 1;
        let seed = self.fills.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        match self.store.fill(first, count, seed) {
            Ok(()) => writeln!(out, "{count}"),
            Err((disk, e)) => {
                say!(
                    "tandem-guest: warning: counter: WRITE {} {} on disk {}: {}",
                    first,
                    count,
                    disk,
                    e
                );
                out.write_str("ERR write failed\n")
            }
        }
    }

    /// Answer the complete lines one socket holds, as far as its send buffer
    /// has room.  Returns (did anything, answered an INC).
    fn serve_socket(&mut self, i: usize, sockets: &mut Sockets) -> (bool, bool) {
        let Some(mut conn) = self.connections[i].take() else {
            return (false, false);
        };
        let socket = sockets.tcp(conn.handle);
        let mut worked = false;
        let mut incremented = false;
        if !socket.is_open() {
            // Closed (or in TIME-WAIT): listen again for the next client.
            conn.lines.clear();
            if socket.listen(PORT).is_err() {
                say!("tandem-guest: warning: counter: cannot listen again");
            }
            worked = true;
        }
        loop {
            let room = socket.send_capacity() - socket.send_queue();
            let max_lines = (room / MAX_ANSWER).min(BATCH_LINES);
            if max_lines == 0 || !socket.can_recv() {
                break;
            }
            let mut out = Answers {
                buf: [0; BATCH_LINES * MAX_ANSWER],
                len: 0,
            };
            let mut lines_seen = 0;
            let taken = socket.recv(|data| {
                let taken = conn.lines.feed(data, max_lines, |line| {
                    lines_seen += 1;
                    self.answer(line, &mut out, &mut incremented);
                });
                (taken, taken)
            });
            let Ok(taken) = taken else { break };
            // `room` was checked: the answers fit.
            let _ = socket.send_slice(&out.buf[..out.len]);
            worked = true;
            if taken == 0 || lines_seen < max_lines && !socket.can_recv() {
                break;
            }
        }
        if !socket.may_recv() && socket.may_send() && socket.recv_queue() == 0 {
            // The client closed its side: close ours once the answers are out.
            socket.close();
            worked = true;
        }
        self.connections[i] = Some(conn);
        (worked, incremented)
    }
}

impl Service for Counter {
    fn serve(&mut self, sockets: &mut Sockets) -> bool {
        let mut worked = false;
        let mut inc_sockets = 0u32; // bit i: socket i got an INC's answer
        for i in 0..MAX_CONNECTIONS {
            let (w, inc) = self.serve_socket(i, sockets);
            worked |= w;
            if inc {
                inc_sockets |= 1 << i;
            }
        }
        if self.value != self.saved {
            match self.store.save(self.value) {
                Ok(()) => self.saved = self.value,
                Err((disk, e)) => {
                    // The answers claim values that are not durable: they
                    // must not leave.  Resetting those connections drops them.
                    say!(
                        "tandem-guest: error: counter: storing {} failed: disk {}: {}",
                        self.value,
                        disk,
                        e
                    );
                    self.value = self.saved;
                    for (i, conn) in self.connections.iter().enumerate() {
                        if let Some(conn) = conn.as_ref().filter(|_| inc_sockets & (1 << i) != 0) {
                            sockets.tcp(conn.handle).abort();
                        }
                    }
                }
            }
        }
        worked
    }
}

/// A decimal number of at most 19 digits.
fn parse_u64(word: &[u8]) -> Option<u64> {
    if word.is_empty() || word.len() > 19 {
        return None;
    }
    word.iter().try_fold(0u64, |v, &d| {
        d.is_ascii_digit().then(|| v * 10 + u64::from(d - b'0'))
    })
}
