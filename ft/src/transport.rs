//! The byte stream under the frames: TCP between hosts, a Unix socket on one host (tests, local
//! upgrades). Endpoints are written `tcp:HOST:PORT` or `unix:PATH`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How often connect retries a peer that is not listening yet, and accept polls.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Transport errors.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The endpoint string does not parse.
    #[error("invalid endpoint {url:?}: {reason} (expected tcp:HOST:PORT or unix:PATH)")]
    InvalidUrl {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Host name resolution failed or gave no address.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host.
        host: String,
        /// Resolver error.
        #[source]
        source: io::Error,
    },
    /// Could not connect before the deadline.
    #[error("cannot connect to {endpoint} within {timeout:?}")]
    Connect {
        /// Where to.
        endpoint: Endpoint,
        /// The deadline given.
        timeout: Duration,
        /// The last attempt's error.
        #[source]
        source: io::Error,
    },
    /// Could not listen.
    #[error("cannot listen on {endpoint}")]
    Bind {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No peer connected before the deadline.
    #[error("no connection on {endpoint} within {timeout:?}")]
    AcceptTimeout {
        /// Where we listened.
        endpoint: Endpoint,
        /// The deadline given.
        timeout: Duration,
    },
    /// accept() or socket setup failed.
    #[error("cannot {what} on {endpoint}")]
    Socket {
        /// The operation.
        what: &'static str,
        /// Where.
        endpoint: Endpoint,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Where a stream goes: `tcp:HOST:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP host (name or address; IPv6 in brackets) and port.
    Tcp {
        /// Host name or address, without brackets.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix stream socket path.
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| TransportError::InvalidUrl {
            url: s.to_owned(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let rest = s
            .strip_prefix("tcp:")
            .ok_or_else(|| bad("unknown scheme"))?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| bad("port is not a number 0-65535"))?;
        let host = match host.strip_prefix('[') {
            Some(h) => h
                .strip_suffix(']')
                .ok_or_else(|| bad("unclosed '[' in host"))?,
            None if host.contains(':') => return Err(bad("IPv6 host must be in brackets")),
            None => host,
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        Ok(Endpoint::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl Endpoint {
    /// Whether only this host can reach it: a `unix:` path, or a TCP host whose every address is
    /// loopback. A name that does not resolve is not local (and would not bind either).
    pub fn is_local_only(&self) -> bool {
        match self {
            Endpoint::Unix(_) => true,
            Endpoint::Tcp { host, port } => match (host.as_str(), *port).to_socket_addrs() {
                Ok(addrs) => {
                    let ips: Vec<_> = addrs.map(|a| a.ip()).collect();
                    !ips.is_empty() && ips.iter().all(|ip| ip.is_loopback())
                }
                Err(_) => false,
            },
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A connected bidirectional byte stream.
pub trait Connection: Read + Write + Send {
    /// Bounds every read (`None`: block forever).
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// Bounds every write (`None`: block forever).
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// A second handle on the same stream, so that one thread can read while another writes.
    fn try_clone_box(&self) -> io::Result<Box<dyn Connection>>;
    /// Shuts down one or both directions.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl Connection for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, t)
    }
    fn try_clone_box(&self) -> io::Result<Box<dyn Connection>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
}

impl Connection for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, t)
    }
    fn try_clone_box(&self) -> io::Result<Box<dyn Connection>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }
}

/// Whether a connect error means "not listening yet" and is worth retrying until the deadline.
fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound | io::ErrorKind::TimedOut
    )
}

/// Connects to `endpoint`, retrying a peer that is not listening yet until `timeout` has passed.
pub fn connect(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<Box<dyn Connection>, TransportError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = match endpoint {
            Endpoint::Tcp { host, port } => {
                let addr = (host.as_str(), *port)
                    .to_socket_addrs()
                    .and_then(|mut a| {
                        a.next()
                            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
                    })
                    .map_err(|source| TransportError::Resolve {
                        host: host.clone(),
                        source,
                    })?;
                TcpStream::connect_timeout(&addr, left.max(POLL_INTERVAL)).and_then(|s| {
                    // Frames are written whole; waiting for more bytes only adds latency.
                    s.set_nodelay(true)?;
                    Ok(Box::new(s) as Box<dyn Connection>)
                })
            }
            Endpoint::Unix(path) => {
                UnixStream::connect(path).map(|s| Box::new(s) as Box<dyn Connection>)
            }
        };
        match attempt {
            Ok(c) => return Ok(c),
            Err(e) if retryable(&e) && Instant::now() + POLL_INTERVAL < deadline => {
                std::thread::sleep(POLL_INTERVAL)
            }
            Err(source) => {
                return Err(TransportError::Connect {
                    endpoint: endpoint.clone(),
                    timeout,
                    source,
                })
            }
        }
    }
}

enum Inner {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A listening socket; a Unix socket's file is removed when it is dropped.
pub struct Listener {
    inner: Inner,
    endpoint: Endpoint,
}

impl Listener {
    /// Listens on `endpoint` (TCP port 0 picks a free port; see `local_endpoint`). A Unix path that
    /// already exists is an error rather than silently replaced.
    pub fn bind(endpoint: &Endpoint) -> Result<Listener, TransportError> {
        let bind_err = |source| TransportError::Bind {
            endpoint: endpoint.clone(),
            source,
        };
        let (inner, endpoint) = match endpoint {
            Endpoint::Tcp { host, port } => {
                let l = TcpListener::bind((host.as_str(), *port)).map_err(bind_err)?;
                let port = l.local_addr().map_err(bind_err)?.port();
                let ep = Endpoint::Tcp {
                    host: host.clone(),
                    port,
                };
                (Inner::Tcp(l), ep)
            }
            Endpoint::Unix(p) => (
                Inner::Unix(UnixListener::bind(p).map_err(bind_err)?),
                endpoint.clone(),
            ),
        };
        Ok(Listener { inner, endpoint })
    }

    /// Where peers can connect (with the real port when bound to port 0).
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Waits for one peer, at most `timeout` (`None`: forever).
    pub fn accept(&self, timeout: Option<Duration>) -> Result<Box<dyn Connection>, TransportError> {
        let sock_err = |what| {
            let endpoint = self.endpoint.clone();
            move |source| TransportError::Socket {
                what,
                endpoint,
                source,
            }
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        self.set_nonblocking(deadline.is_some())
            .map_err(sock_err("set the listener's blocking mode"))?;
        loop {
            let r: io::Result<Box<dyn Connection>> = match &self.inner {
                Inner::Tcp(l) => l.accept().and_then(|(s, _)| {
                    s.set_nonblocking(false)?;
                    s.set_nodelay(true)?;
                    Ok(Box::new(s) as Box<dyn Connection>)
                }),
                Inner::Unix(l) => l.accept().and_then(|(s, _)| {
                    s.set_nonblocking(false)?;
                    Ok(Box::new(s) as Box<dyn Connection>)
                }),
            };
            match r {
                Ok(c) => return Ok(c),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    if let (Some(d), Some(t)) = (deadline, timeout) {
                        if Instant::now() >= d {
                            return Err(TransportError::AcceptTimeout {
                                endpoint: self.endpoint.clone(),
                                timeout: t,
                            });
                        }
                    }
                    std::thread::sleep(POLL_INTERVAL);
                }
                Err(e) => return Err(sock_err("accept")(e)),
            }
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match &self.inner {
            Inner::Tcp(l) => l.set_nonblocking(on),
            Inner::Unix(l) => l.set_nonblocking(on),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let (Inner::Unix(_), Endpoint::Unix(p)) = (&self.inner, &self.endpoint) {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Endpoint, TransportError> {
        s.parse()
    }

    #[test]
    fn parses_tcp_and_unix() {
        assert_eq!(
            parse("tcp:127.0.0.1:4000").ok(),
            Some(Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 4000
            })
        );
        assert_eq!(
            parse("tcp:[::1]:9").ok(),
            Some(Endpoint::Tcp {
                host: "::1".into(),
                port: 9
            })
        );
        assert_eq!(
            parse("unix:/run/x.sock").ok(),
            Some(Endpoint::Unix("/run/x.sock".into()))
        );
        for s in ["tcp:[::1]:9", "tcp:host:1", "unix:/a/b"] {
            assert_eq!(parse(s).map(|e| e.to_string()).ok().as_deref(), Some(s));
        }
    }

    #[test]
    fn rejects_bad_urls_with_reasons() {
        let reason = |s: &str| match parse(s) {
            Err(TransportError::InvalidUrl { reason, .. }) => reason,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(reason("http://x"), "unknown scheme");
        assert_eq!(reason("tcp:host"), "missing port");
        assert_eq!(reason("tcp:host:99999"), "port is not a number 0-65535");
        assert_eq!(reason("tcp::80"), "empty host");
        assert_eq!(reason("tcp:::1:80"), "IPv6 host must be in brackets");
        assert_eq!(reason("tcp:[::1:80"), "unclosed '[' in host");
        assert_eq!(reason("unix:"), "empty socket path");
    }

    #[test]
    fn tcp_round_trip_and_accept_timeout() {
        let l = Listener::bind(&parse("tcp:127.0.0.1:0").unwrap()).unwrap();
        let ep = l.local_endpoint().clone();
        let t = std::thread::spawn(move || {
            let mut c = connect(&ep, Duration::from_secs(5)).unwrap();
            c.write_all(b"ping").unwrap();
        });
        let mut s = l.accept(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        t.join().unwrap();
        assert!(matches!(
            l.accept(Some(Duration::from_millis(30))),
            Err(TransportError::AcceptTimeout { .. })
        ));
    }

    #[test]
    fn connect_to_nobody_fails_after_the_timeout() {
        let path =
            std::env::temp_dir().join(format!("ft-transport-none-{}.sock", std::process::id()));
        let start = Instant::now();
        let r = connect(&Endpoint::Unix(path), Duration::from_millis(100));
        assert!(
            matches!(r, Err(TransportError::Connect { .. })),
            "{:?}",
            r.err()
        );
        assert!(start.elapsed() >= Duration::from_millis(80));
    }

    #[test]
    fn unix_socket_file_is_removed_on_drop_and_not_clobbered() {
        let path = std::env::temp_dir().join(format!("ft-transport-{}.sock", std::process::id()));
        let ep = Endpoint::Unix(path.clone());
        let l = Listener::bind(&ep).unwrap();
        assert!(matches!(
            Listener::bind(&ep),
            Err(TransportError::Bind { .. })
        ));
        drop(l);
        assert!(!path.exists());
    }

    #[test]
    fn only_loopback_and_unix_endpoints_are_local() {
        for local in [
            "tcp:127.0.0.1:1",
            "tcp:127.9.9.9:1",
            "tcp:[::1]:1",
            "unix:/x",
        ] {
            assert!(parse(local).unwrap().is_local_only(), "{local}");
        }
        for open in [
            "tcp:0.0.0.0:1",
            "tcp:[::]:1",
            "tcp:10.99.0.2:1",
            "tcp:no-such-host.invalid:1",
        ] {
            assert!(!parse(open).unwrap().is_local_only(), "{open}");
        }
    }
}
