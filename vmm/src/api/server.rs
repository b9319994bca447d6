//! The API thread: accepts HTTP/1.1 on a Unix socket. Read-only calls (`vm.info`, `vm.counters`,
//! `ft.status`, metrics, `vmm.ping`) are answered on this thread from the VMM's published
//! [`View`]; every other call goes, in order, through one caller thread that hands it to the VMM
//! thread and answers with what comes back. So a call the VMM is slow to answer (`ft.enable`
//! reaching for a silent peer) never holds up a dashboard's reads.

// Host-side: API clients and the server's life decide these lines.
#![allow(clippy::disallowed_macros)]

use super::routes::{self, RouteError, MAX_BODY_BYTES};
use super::socket::{self, SocketError};
use super::types::{ApiError, ApiRequest, ApiResponse};
use crate::config;
use crate::controller::{View, VmmEvent};
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
    /// The API socket cannot be bound.
    #[error("cannot prepare API socket")]
    Socket(#[source] SocketError),
    /// tiny_http cannot serve on the bound socket.
    #[error("cannot start the HTTP server")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Spawning the API server or accept thread failed.
    #[error("cannot spawn the API thread")]
    Spawn(#[source] std::io::Error),
    /// The API thread panicked (seen at startup or when joined).
    #[error("the API thread panicked")]
    Panicked,
    /// Accepting on the API socket failed; the server stops.
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
/// on a thread named `tandem_api`, sending each request that changes something to the VMM
/// thread through `tx`, and answering reads from `view` (without one, reads go to the VMM thread
/// too).
pub fn start_server(
    socket: &Path,
    tx: Sender<VmmEvent>,
    view: Option<View>,
) -> Result<ApiServerHandle, ApiServerError> {
    start_server_with_timeout(socket, tx, view, RESPONSE_TIMEOUT)
}

/// [`start_server`] with another limit on how long to wait for the VMM's answer.
pub fn start_server_with_timeout(
    socket: &Path,
    tx: Sender<VmmEvent>,
    view: Option<View>,
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
            let result = serve(&server, tx, view, &thread_stopping, timeout);
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
    server: &Arc<Server>,
    tx: Sender<VmmEvent>,
    view: Option<View>,
    stopping: &Arc<AtomicBool>,
    timeout: Duration,
) -> Result<(), ApiServerError> {
    let caller = Caller::spawn(
        tx.clone(),
        Arc::downgrade(server),
        stopping.clone(),
        timeout,
    )
    .map_err(ApiServerError::Spawn)?;
    let reads = match view {
        Some(v) => Reads::View(v),
        None => Reads::Vmm(tx),
    };
    let result = loop {
        if stopping.load(Ordering::SeqCst) {
            break Ok(());
        }
        let request = match server.recv() {
            Ok(r) => r,
            // recv fails after unblock() (our stop) or when the accept thread died.
            Err(_) if stopping.load(Ordering::SeqCst) => break Ok(()),
            Err(e) => break Err(ApiServerError::Accept(e)),
        };
        if let Some((request, call)) = parse(request) {
            if let Some((request, call)) = reads.answer(request, call, timeout) {
                caller.call(request, call);
            }
        }
    };
    // The caller thread answers what it holds, then lets go of the server (and the socket).
    caller.join();
    result
}

/// Reads the request's route and body; answers it at once when they are bad.
fn parse(mut request: Request) -> Option<(Request, ApiRequest)> {
    if let Some(len) = request.body_length() {
        if len > MAX_BODY_BYTES {
            let err = RouteError::BodyTooLarge { len }.to_api_error();
            if len > MAX_DRAIN_BYTES {
                refuse_without_draining(request, &err);
            } else {
                respond(request, error_response(&err, None));
            }
            return None;
        }
    }
    let method = request.method().as_str().to_string();
    let url = request.url().to_string();
    // Find the route first so a 404/405 does not depend on the body.
    if let Err(e) = routes::find_route(&method, &url) {
        respond(request, error_response(&e.to_api_error(), e.allow()));
        return None;
    }
    let mut body = Vec::new();
    let limit = MAX_BODY_BYTES as u64 + 1; // one more, so that "too large" is seen
    if let Err(e) = request.as_reader().take(limit).read_to_end(&mut body) {
        let err = ApiError::from_error(400, &BodyReadError(e));
        respond(request, error_response(&err, None));
        return None;
    }
    match routes::parse_request(&method, &url, &body, config::host_memory_limit()) {
        Ok(r) => Some((request, r)),
        Err(e) => {
            respond(request, error_response(&e.to_api_error(), e.allow()));
            None
        }
    }
}

/// Where the read-only calls are answered from.
enum Reads {
    /// The VMM's published view, on the API thread.
    View(View),
    /// The VMM thread, like every other call.
    Vmm(Sender<VmmEvent>),
}

impl Reads {
    /// Answers `call` if it is a read this source serves; hands it back otherwise.
    fn answer(
        &self,
        request: Request,
        call: ApiRequest,
        timeout: Duration,
    ) -> Option<(Request, ApiRequest)> {
        let Reads::View(view) = self else {
            // Metrics still come back as text, whoever answers.
            if matches!(call, ApiRequest::Metrics) {
                if let Reads::Vmm(tx) = self {
                    let (answer, _) = ask_vmm(call, tx, timeout);
                    respond(request, answer_response(answer, true));
                    return None;
                }
            }
            return Some((request, call));
        };
        let response = match call {
            ApiRequest::VmmPing => answer_response(Ok(Some(view.ping())), false),
            ApiRequest::VmInfo => {
                answer_response(view.info().map(Some).map_err(ApiError::from), false)
            }
            ApiRequest::VmCounters => {
                answer_response(view.counters().map(Some).map_err(ApiError::from), false)
            }
            ApiRequest::FtStatus => answer_response(Ok(Some(view.ft_status())), false),
            ApiRequest::Metrics => metrics_response(view.metrics()),
            other => return Some((request, other)),
        };
        respond(request, response);
        None
    }
}

/// The thread that takes calls to the VMM thread, in order, and answers each.
struct Caller {
    calls: Option<Sender<(Request, ApiRequest)>>,
    thread: Option<JoinHandle<()>>,
}

impl Caller {
    fn spawn(
        tx: Sender<VmmEvent>,
        server: Weak<Server>,
        stopping: Arc<AtomicBool>,
        timeout: Duration,
    ) -> std::io::Result<Caller> {
        let (calls, rx) = mpsc::channel::<(Request, ApiRequest)>();
        // Built on the API thread, it inherits the API thread's seccomp filter.
        let thread = std::thread::Builder::new()
            .name("tandem_api_call".into())
            .spawn(move || {
                while let Ok((request, call)) = rx.recv() {
                    let is_vmm_shutdown = matches!(call, ApiRequest::VmmShutdown);
                    let is_metrics = matches!(call, ApiRequest::Metrics);
                    let (answer, flow) = ask_vmm(call, &tx, timeout);
                    let stop = flow == Flow::Stop || (is_vmm_shutdown && answer.is_ok());
                    respond(request, answer_response(answer, is_metrics));
                    if stop {
                        stopping.store(true, Ordering::SeqCst);
                        if let Some(s) = server.upgrade() {
                            s.unblock();
                        }
                        return;
                    }
                }
            })?;
        Ok(Caller {
            calls: Some(calls),
            thread: Some(thread),
        })
    }

    /// Queues `call`; its answer goes to `request` once the VMM thread gives it.
    fn call(&self, request: Request, call: ApiRequest) {
        let Some(calls) = &self.calls else { return };
        if let Err(mpsc::SendError((request, _))) = calls.send((request, call)) {
            let err = ApiError::new(503, "the VMM is shutting down");
            respond(request, error_response(&err, None));
        }
    }

    fn join(mut self) {
        self.calls = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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

fn answer_response(answer: ApiResponse, metrics: bool) -> Response<Cursor<Vec<u8>>> {
    match answer {
        Ok(Some(serde_json::Value::String(text))) if metrics => metrics_response(text),
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
