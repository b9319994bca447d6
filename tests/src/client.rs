//! Clients of the built-in guest's network services, run from the client namespace.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The `counter` service port.
pub const COUNTER_PORT: u16 = 7000;
/// The `echo` service port (TCP and UDP).
pub const ECHO_PORT: u16 = 7001;

/// A line-protocol connection to the `counter` service.
pub struct CounterConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl CounterConn {
    /// Connects, retrying until `timeout` (the guest may still be bringing its stack up).
    pub fn connect(addr: &str, timeout: Duration) -> std::io::Result<Self> {
        let sa = addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let start = std::time::Instant::now();
        let stream = loop {
            match TcpStream::connect_timeout(&sa, Duration::from_secs(1)) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > timeout => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(CounterConn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one command line and returns the reply's number.
    pub fn call(&mut self, cmd: &str) -> std::io::Result<u64> {
        self.writer.write_all(format!("{cmd}\n").as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.trim().parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("reply {line:?} to {cmd} is not a number"),
            )
        })
    }

    /// Sends one command line without waiting for its reply (pipelining: read it later with
    /// [`CounterConn::reply`]).
    pub fn send(&mut self, cmd: &str) -> std::io::Result<()> {
        self.writer.write_all(format!("{cmd}\n").as_bytes())
    }

    /// The next reply's number.
    pub fn reply(&mut self) -> std::io::Result<u64> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.trim().parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("reply {line:?} is not a number"),
            )
        })
    }

    /// `INC`.
    pub fn inc(&mut self) -> std::io::Result<u64> {
        self.call("INC")
    }

    /// `GET`.
    pub fn get(&mut self) -> std::io::Result<u64> {
        self.call("GET")
    }

    /// `WRITE <first> <count>`: the guest fills those 4 KiB blocks of its disks with a new
    /// pattern and flushes them before it answers.
    pub fn write_blocks(&mut self, first: u64, count: u64) -> std::io::Result<()> {
        let n = self.call(&format!("WRITE {first} {count}"))?;
        if n != count {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("WRITE {first} {count} answered {n}"),
            ));
        }
        Ok(())
    }
}

/// The counter value the guest stored in block 0 of a disk image, if the block holds one:
/// magic `TNDMCNT1`, then the value as little-endian u64.
pub fn counter_on_disk(image: &std::path::Path) -> Option<u64> {
    let b = std::fs::read(image).ok()?;
    if b.get(..8)? != b"TNDMCNT1" {
        return None;
    }
    Some(u64::from_le_bytes(b.get(8..16)?.try_into().ok()?))
}

/// Waits until the counter on `image` is `want` and returns what it read last: after a failover
/// or a release the guest's last writes may still be on their way to the disk, so one read is
/// not enough. Gives up after 60 s, or at once past `want` (the counter never goes back).
pub fn wait_counter_on_disk(image: &std::path::Path, want: Option<u64>) -> Option<u64> {
    let start = std::time::Instant::now();
    loop {
        let v = counter_on_disk(image);
        if v >= want || start.elapsed() > Duration::from_secs(60) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
