//! Client for the Tandem REST API over a Unix socket. Standalone: it does not link the VMM.

pub mod ft_view;
pub mod http;

use serde_json::Value;
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of every endpoint path.
pub const API_PREFIX: &str = "/api/v1/";
/// Default limit on one call; longer than the server's own 60 s wait for the VMM.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API socket cannot be connected to (no VMM listening, or no permission).
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket the client was made for.
        path: PathBuf,
        /// What `connect(2)` said.
        #[source]
        source: std::io::Error,
    },
    /// Setting the timeouts or writing the request failed, and no answer could be read.
    #[error("I/O error talking to the API")]
    Io(#[source] std::io::Error),
    /// The method or path is empty or holds a byte that is not printable ASCII.
    #[error("invalid endpoint {0:?}")]
    BadEndpoint(String),
    /// The server's answer is not a well-formed HTTP/1.1 response.
    #[error("malformed HTTP response")]
    Parse(#[source] http::ParseError),
    /// The answer has a non-blank body that does not parse as JSON.
    #[error("response body (HTTP {status}) is not JSON")]
    BadJson {
        /// The answer's HTTP status code.
        status: u16,
        /// Where the JSON parser stopped.
        #[source]
        source: serde_json::Error,
    },
    /// A query endpoint answered 2xx with an empty body.
    #[error("{endpoint} answered without a body")]
    MissingBody {
        /// The endpoint as the caller named it (`"vm.info"`).
        endpoint: String,
    },
    /// The API answered a non-2xx status.
    #[error("API error {status}: {}", error.join(": "))]
    Api {
        /// The answer's HTTP status code.
        status: u16,
        /// The API's error chain, outermost cause first (`["HTTP 500"]` when the body is empty).
        error: Vec<String>,
    },
}

impl ClientError {
    /// `tandem-remote`'s exit code: 1 when the API answered an error, 3 for transport failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Api { .. } => 1,
            ClientError::BadEndpoint(_) => 2,
            _ => 3,
        }
    }
}

/// One answer: status, headers and JSON body (`None` when empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The header lines as `(name, value)`, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The parsed JSON body; `None` when the body was empty or only whitespace.
    pub body: Option<Value>,
}

impl Response {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body of a 2xx answer, or the API's error chain as [`ClientError::Api`].
    pub fn into_result(self) -> Result<Option<Value>, ClientError> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        let error = match &self.body {
            Some(Value::Object(m)) => match m.get("error") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect(),
                Some(other) => vec![other.to_string()],
                None => vec![Value::Object(m.clone()).to_string()],
            },
            Some(other) => vec![other.to_string()],
            None => vec![format!("HTTP {}", self.status)],
        };
        Err(ClientError::Api {
            status: self.status,
            error,
        })
    }
}

/// A client bound to one API socket; each call opens its own connection.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client for the API listening on `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        ApiClient {
            socket: socket.as_ref().to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the limit on each read and write.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET` an endpoint (`"vm.info"`, or a full path starting with `/`).
    pub fn get(&self, endpoint: &str) -> Result<Response, ClientError> {
        self.request("GET", endpoint, None)
    }

    /// `PUT` an endpoint with an optional JSON body.
    pub fn put(&self, endpoint: &str, body: Option<&Value>) -> Result<Response, ClientError> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        // A PUT always states its length, so an empty one reads as "no body".
        self.request("PUT", endpoint, Some(bytes.as_deref().unwrap_or_default()))
    }

    /// Sends any method with raw body bytes; for tests and tools that need malformed input.
    pub fn request(
        &self,
        method: &str,
        endpoint: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let path = if endpoint.starts_with('/') {
            endpoint.to_string()
        } else {
            format!("{API_PREFIX}{endpoint}")
        };
        let clean = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !clean(&path) || !clean(method) {
            return Err(ClientError::BadEndpoint(format!("{method} {path}")));
        }
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|_| stream.set_write_timeout(Some(self.timeout)))
            .map_err(ClientError::Io)?;
        let write_result = stream
            .write_all(&http::format_request(method, &path, body))
            .and_then(|_| stream.flush());
        // A server may answer (e.g. "body too large") and close before reading all we sent: the
        // answer is still worth reading, so only report the write error if there is none.
        let raw = match (
            write_result,
            http::read_response(&mut BufReader::new(&stream)),
        ) {
            (_, Ok(raw)) => raw,
            (Err(e), Err(_)) => return Err(ClientError::Io(e)),
            (_, Err(e)) => return Err(ClientError::Parse(e)),
        };
        let body = if raw.body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(
                serde_json::from_slice(&raw.body).map_err(|source| ClientError::BadJson {
                    status: raw.status,
                    source,
                })?,
            )
        };
        Ok(Response {
            status: raw.status,
            headers: raw.headers,
            body,
        })
    }

    /// `PUT` an endpoint; any 2xx answer is success.
    fn action(&self, endpoint: &str, body: Option<&Value>) -> Result<(), ClientError> {
        self.put(endpoint, body)?.into_result().map(|_| ())
    }

    /// `GET` an endpoint that must answer with a body.
    fn query(&self, endpoint: &str) -> Result<Value, ClientError> {
        self.get(endpoint)?
            .into_result()?
            .ok_or_else(|| ClientError::MissingBody {
                endpoint: endpoint.to_string(),
            })
    }

    /// `GET vmm.ping`: `{version, pid, ...}`.
    pub fn ping(&self) -> Result<Value, ClientError> {
        self.query("vmm.ping")
    }

    /// `PUT vmm.shutdown`: stops the VMM and its API server.
    pub fn shutdown_vmm(&self) -> Result<(), ClientError> {
        self.action("vmm.shutdown", None)
    }

    /// `PUT vm.create` with a VM config.
    pub fn create(&self, config: &Value) -> Result<(), ClientError> {
        self.action("vm.create", Some(config))
    }

    /// `PUT vm.boot`.
    pub fn boot(&self) -> Result<(), ClientError> {
        self.action("vm.boot", None)
    }

    /// `GET vm.info`: `{config, state}`.
    pub fn info(&self) -> Result<Value, ClientError> {
        self.query("vm.info")
    }

    /// `PUT vm.pause`.
    pub fn pause(&self) -> Result<(), ClientError> {
        self.action("vm.pause", None)
    }

    /// `PUT vm.resume`.
    pub fn resume(&self) -> Result<(), ClientError> {
        self.action("vm.resume", None)
    }

    /// `PUT vm.shutdown`.
    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.action("vm.shutdown", None)
    }

    /// `PUT vm.reboot`.
    pub fn reboot(&self) -> Result<(), ClientError> {
        self.action("vm.reboot", None)
    }

    /// `PUT vm.delete`.
    pub fn delete(&self) -> Result<(), ClientError> {
        self.action("vm.delete", None)
    }

    /// `GET vm.counters`: an object of objects of integers.
    pub fn counters(&self) -> Result<Value, ClientError> {
        self.query("vm.counters")
    }
}
