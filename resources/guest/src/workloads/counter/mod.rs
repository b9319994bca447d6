//! Counter: a durable 64-bit counter on TCP port 7000, one request per line.
//!
//! * `INC` adds one, stores the value on the first disk and flushes it, and
//!   only then answers `<value>`.
//! * `GET` answers the value.
//!
//! Requests of all connections are taken in rounds: every complete line the
//! sockets hold is answered into the sockets' send buffers, then — if any
//! INC came — the value is written and flushed once (a group commit), and
//! only after that does the stack get to transmit the answers.

mod lines;
mod record;

use core::fmt::Write;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use super::service::{self, Service};
use crate::net::sockets::MAX_TCP;
use crate::say;
use lines::{Line, Lines};
use record::Store;

const PORT: u16 = 7000;
/// The longest answer: u64::MAX and a newline.
const MAX_ANSWER: usize = 21;
/// Answers produced per socket per batch (they are staged on the stack).
const BATCH_LINES: usize = 24;

struct Connection {
    handle: SocketHandle,
    lines: Lines,
}

struct Counter {
    value: u64,
    /// The value on disk (what INC rolls back to if storing fails).
    saved: u64,
    store: Store,
    connections: [Option<Connection>; MAX_TCP],
}

pub fn run() -> ! {
    service::run(|devices, pool, sockets| {
        let (store, value) = match Store::load(devices.first_disk()) {
            Ok(loaded) => loaded,
            Err(e) => {
                say!("tandem-guest: error: counter: cannot read disk 0: {}", e);
                return None;
            }
        };
        match store {
            Store::None => say!(
                "tandem-guest: warning: counter: no disk, the value will not survive a restart"
            ),
            Store::ReadOnly => {
                say!("tandem-guest: warning: counter: disk 0 is read-only, INC is refused")
            }
            Store::Disk(_) => {}
        }
        say!("tandem-guest: counter value={}", value);
        let mut connections = [const { None }; MAX_TCP];
        for slot in connections.iter_mut() {
            let mut socket = pool.tcp()?;
            if let Err(e) = socket.listen(PORT) {
                say!("tandem-guest: error: counter: listen: {:?}", e);
                return None;
            }
            *slot = Some(Connection {
                handle: sockets.add(socket),
                lines: Lines::new(),
            });
        }
        Some(Counter {
            value,
            saved: value,
            store,
            connections,
        })
    })
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
            Line::Text(b"") => Ok(()),
            Line::Text(_) => out.write_str("ERR unknown\n"),
            Line::TooLong => out.write_str("ERR too long\n"),
        };
    }

    /// Answer the complete lines one socket holds, as far as its send buffer
    /// has room.  Returns (did anything, answered an INC).
    fn serve_socket(&mut self, i: usize, sockets: &mut SocketSet<'static>) -> (bool, bool) {
        let Some(mut conn) = self.connections[i].take() else {
            return (false, false);
        };
        let socket = sockets.get_mut::<tcp::Socket>(conn.handle);
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
    fn serve(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let mut worked = false;
        let mut inc_sockets = 0u32; // bit i: socket i got an INC's answer
        for i in 0..MAX_TCP {
            let (w, inc) = self.serve_socket(i, sockets);
            worked |= w;
            if inc {
                inc_sockets |= 1 << i;
            }
        }
        if self.value != self.saved {
            match self.store.save(self.value) {
                Ok(()) => self.saved = self.value,
                Err(e) => {
                    // The answers claim values that are not durable: they
                    // must not leave.  Resetting those connections drops them.
                    say!(
                        "tandem-guest: error: counter: storing {} failed: {}",
                        self.value,
                        e
                    );
                    self.value = self.saved;
                    for (i, conn) in self.connections.iter().enumerate() {
                        if let Some(conn) = conn.as_ref().filter(|_| inc_sockets & (1 << i) != 0) {
                            sockets.get_mut::<tcp::Socket>(conn.handle).abort();
                        }
                    }
                }
            }
        }
        worked
    }
}
