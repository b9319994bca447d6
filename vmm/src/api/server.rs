//! The API thread: accepts HTTP/1.1 on a Unix socket, hands each request to the VMM thread and
//! answers with what comes back. Requests are served one at a time, as the VMM handles them.

use super::routes::{self, RouteError, MAX_BODY_BYTES};
use super::socket::{self, SocketError};
use super::types::{ApiError, ApiRequest, ApiResponse, VmmEvent};
use crate::config;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;
use tiny_http::{Header, Request, Response, Server};

/// How long the API waits for the VMM thread to answer one request.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Declared bodies above this are refused without letting tiny_http drain them: its drain
/// allocates the whole remaining length at once, which a hostile `Content-Length` turns into an
/// allocation failure (abort) or a capacity-overflow panic.
const MAX_DRAIN_BYTES: usize = 1 << 20;

/// Why the API server could not start, or why it stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("cannot prepare API socket")]
    Socket(#[source] SocketError),
    #[error("cannot start the HTTP server")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot spawn the API thread")]
    Spawn(#[source] std::io::Error),
    #[error("the API thread panicked")]
    Panicked,
    #[error("the API socket stopped accepting connections")]
    Accept(#[source] std::io::Error),
}

/// A running API server. Dropping it leaves the thread running; use [`ApiServerHandle::stop`].
pub struct ApiServerHandle {
    thread: JoinHandle<Result<(), ApiServerError>>,
    // Weak: the API thread owns the server, so the socket goes away as soon as that thread ends.
    server: Weak<Server>,
    stopping: Arc<AtomicBool>,
    socket: PathBuf,
}

impl ApiServerHandle {
    /// Path of the socket the server listens on.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Waits for the API thread to end (after `vmm.shutdown` or [`ApiServerHandle::stop`]).
    pub fn join(self) -> Result<(), ApiServerError> {
        self.thread.join().map_err(|_| ApiServerError::Panicked)?
    }

    /// Stops serving after the request in progress, removes the socket and waits for the thread.
    pub fn stop(self) -> Result<(), ApiServerError> {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(server) = self.server.upgrade() {
            server.unblock();
        }
        self.join()
    }
}

impl std::fmt::Debug for ApiServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerHandle")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// Binds `socket` (mode 0600, replacing a stale socket, refusing a live one) and serves the API
/// on a thread named `tandem_api`, sending each request to the VMM thread through `tx`.
pub fn start_server(
    socket: &Path,
    tx: Sender<VmmEvent>,
) -> Result<ApiServerHandle, ApiServerError> {
    start_server_with_timeout(socket, tx, RESPONSE_TIMEOUT)
}

/// [`start_server`] with another limit on how long to wait for the VMM's answer.
pub fn start_server_with_timeout(
    socket: &Path,
    tx: Sender<VmmEvent>,
    timeout: Duration,
) -> Result<ApiServerHandle, ApiServerError> {
    let socket::BoundSocket { listener, lock } =
        socket::bind(socket).map_err(ApiServerError::Socket)?;
    let stopping = Arc::new(AtomicBool::new(false));
    let thread_stopping = stopping.clone();
    // tiny_http starts its accept thread when the server is built: build it on the API thread,
    // after its seccomp filter is on, so that the accept thread inherits the API filter.
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let thread_socket = socket.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("tandem_api".into())
        .spawn(move || {
            crate::seccomp::apply(crate::seccomp::ThreadKind::Api);
            let server = match Server::from_listener(listener, None) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    let _ = std::fs::remove_file(&thread_socket);
                    let _ = ready_tx.send(Err(ApiServerError::Http(e)));
                    return Ok(());
                }
            };
            if ready_tx.send(Ok(Arc::downgrade(&server))).is_err() {
                return Ok(());
            }
            let result = serve(&server, &tx, &thread_stopping, timeout);
            // Dropping the last Arc closes the listener and removes the socket file; only then
            // is the path released to another VMM.
            drop(server);
            drop(lock);
            result
        })
        .map_err(ApiServerError::Spawn)?;
    let weak = match ready_rx.recv() {
        Ok(Ok(weak)) => weak,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            return Err(ApiServerError::Panicked);
        }
    };
    Ok(ApiServerHandle {
        thread,
        server: weak,
        stopping,
        socket: socket.to_path_buf(),
    })
}

/// Whether the API thread goes on after a request.
#[derive(PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

fn serve(
    server: &Server,
    tx: &Sender<VmmEvent>,
    stopping: &AtomicBool,
    timeout: Duration,
) -> Result<(), ApiServerError> {
    loop {
        if stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let request = match server.recv() {
            Ok(r) => r,
            // recv fails after unblock() (our stop) or when the accept thread died.
            Err(_) if stopping.load(Ordering::SeqCst) => return Ok(()),
            Err(e) => return Err(ApiServerError::Accept(e)),
        };
        if handle(request, tx, timeout) == Flow::Stop {
            return Ok(());
        }
    }
}

fn handle(mut request: Request, tx: &Sender<VmmEvent>, timeout: Duration) -> Flow {
    if let Some(len) = request.body_length() {
        if len > MAX_BODY_BYTES {
            let err = RouteError::BodyTooLarge { len }.to_api_error();
            if len > MAX_DRAIN_BYTES {
                refuse_without_draining(request, &err);
            } else {
                respond(request, error_response(&err, None));
            }
            return Flow::Continue;
        }
    }
    let method = request.method().as_str().to_string();
    let url = request.url().to_string();
    // Find the route first so a 404/405 does not depend on the body.
    if let Err(e) = routes::find_route(&method, &url) {
        respond(request, error_response(&e.to_api_error(), e.allow()));
        return Flow::Continue;
    }
    let mut body = Vec::new();
    let limit = MAX_BODY_BYTES as u64 + 1; // one more, so that "too large" is seen
    if let Err(e) = request.as_reader().take(limit).read_to_end(&mut body) {
        let err = ApiError::from_error(400, &BodyReadError(e));
        respond(request, error_response(&err, None));
        return Flow::Continue;
    }
    let api_request = match routes::parse_request(&method, &url, &body, config::host_memory_limit())
    {
        Ok(r) => r,
        Err(e) => {
            respond(request, error_response(&e.to_api_error(), e.allow()));
            return Flow::Continue;
        }
    };
    let is_vmm_shutdown = matches!(api_request, ApiRequest::VmmShutdown);
    let is_metrics = matches!(api_request, ApiRequest::Metrics);
    let (answer, flow) = ask_vmm(api_request, tx, timeout);
    let flow = match (&answer, is_vmm_shutdown) {
        (Ok(_), true) => Flow::Stop,
        _ => flow,
    };
    let response = match answer {
        Ok(Some(serde_json::Value::String(text))) if is_metrics => metrics_response(text),
        other => answer_response(other),
    };
    respond(request, response);
    flow
}

/// The Prometheus exposition as text, not JSON.
pub(crate) fn metrics_response(text: String) -> Response<Cursor<Vec<u8>>> {
    let mut resp = Response::from_data(text.into_bytes()).with_status_code(200);
    if let Ok(h) = Header::from_bytes("Content-Type", super::metrics::CONTENT_TYPE) {
        resp.add_header(h);
    }
    resp
}

/// Sends one request to the VMM thread and waits for its answer.
pub(crate) fn ask_vmm(
    req: ApiRequest,
    tx: &Sender<VmmEvent>,
    timeout: Duration,
) -> (ApiResponse, Flow) {
    let (resp_tx, resp_rx) = mpsc::channel();
    if tx.send(VmmEvent::Api(req, resp_tx)).is_err() {
        // Nobody will ever answer: say so, and stop serving.
        return (
            Err(ApiError::new(503, "the VMM is not running")),
            Flow::Stop,
        );
    }
    match resp_rx.recv_timeout(timeout) {
        Ok(answer) => (answer, Flow::Continue),
        Err(RecvTimeoutError::Timeout) => {
            let msg = format!("the VMM did not answer within {} s", timeout.as_secs_f32());
            (Err(ApiError::new(504, msg)), Flow::Continue)
        }
        Err(RecvTimeoutError::Disconnected) => (
            Err(ApiError::new(500, "the VMM dropped the request")),
            Flow::Continue,
        ),
    }
}

/// The request body could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read request body")]
struct BodyReadError(#[source] std::io::Error);

fn answer_response(answer: ApiResponse) -> Response<Cursor<Vec<u8>>> {
    match answer {
        Ok(Some(value)) => json_response(200, &value),
        Ok(None) => Response::from_data(Vec::new()).with_status_code(204),
        Err(e) => error_response(&e, None),
    }
}

fn error_response(err: &ApiError, allow: Option<&str>) -> Response<Cursor<Vec<u8>>> {
    // A status outside 100..=599 from the VMM would make an invalid status line.
    let status = if (100..=599).contains(&err.status) {
        err.status
    } else {
        500
    };
    let mut resp = json_response(status, &error_body(err));
    if let Some(allow) = allow.and_then(|a| Header::from_bytes("Allow", a).ok()) {
        resp.add_header(allow);
    }
    resp
}

fn error_body(err: &ApiError) -> serde_json::Value {
    serde_json::json!({ "error": err.error })
}

fn json_response(status: u16, value: &serde_json::Value) -> Response<Cursor<Vec<u8>>> {
    // Serializing a Value cannot fail (its map keys are strings).
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::from_data(bytes).with_status_code(status);
    if let Ok(h) = Header::from_bytes("Content-Type", "application/json") {
        resp.add_header(h);
    }
    resp
}

fn respond(request: Request, response: Response<Cursor<Vec<u8>>>) {
    if let Err(e) = request.respond(response) {
        log::warn!("API: cannot send response: {e}");
    }
}

/// Answers a request whose declared body is too large to drain, then leaks the connection: letting
/// tiny_http drop it would allocate the declared length (see [`MAX_DRAIN_BYTES`]). Only a client
/// that can open the 0600 socket can cause this leak, one thread and descriptor per request.
fn refuse_without_draining(request: Request, err: &ApiError) {
    let body = serde_json::to_vec(&error_body(err)).unwrap_or_default();
    let mut resp = Response::empty(400);
    if let Ok(h) = Header::from_bytes("Content-Type", "application/json") {
        resp.add_header(h);
    }
    // upgrade() is the only tiny_http call that hands back the stream without dropping the body
    // reader. It sends no body and drops any Content-Length we add, so the length rides in its
    // protocol string, which becomes the `Upgrade` header's value. tiny_http unwraps that header's
    // construction, so check it here and fall back to no length (the client then reads to its
    // timeout) rather than ever reach that unwrap.
    let framed = format!("none\r\nContent-Length: {}", body.len());
    let protocol = if Header::from_bytes("Upgrade", framed.as_str()).is_ok() {
        framed.as_str()
    } else {
        "none"
    };
    let mut stream = request.upgrade(protocol, resp);
    let _ = stream.write_all(&body).and_then(|_| stream.flush());
    std::mem::forget(stream);
}
