//! The endpoint table and the pure parser from (method, path, body) to an [`ApiRequest`].
//!
//! Nothing here touches sockets, so every input the server can see is testable as a table.

use super::types::{ApiError, ApiRequest, ReceiveMigrationConfig, RestoreConfig, ResumeConfig};
use crate::config::{ConfigError, VmConfig};

/// Prefix of every endpoint path.
pub const API_PREFIX: &str = "/api/v1/";
/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// HTTP methods the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`: a query; never changes anything.
    Get,
    /// `PUT`: an action, with or without a body.
    Put,
}

impl Method {
    /// The method as written on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }
}

/// What an endpoint expects as its request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body; an empty one is tolerated (curl -X PUT sends none, some clients send `Content-Length: 0`).
    None,
    /// A JSON [`VmConfig`].
    VmConfig,
    /// A JSON [`super::types::SnapshotConfig`].
    Snapshot,
    /// A JSON [`RestoreConfig`].
    Restore,
    /// A JSON [`super::types::SendMigrationConfig`].
    SendMigration,
    /// A JSON [`ReceiveMigrationConfig`].
    ReceiveMigration,
    /// A JSON [`super::types::FtReceiveConfig`].
    FtReceive,
    /// A JSON [`super::types::FtEnableConfig`].
    FtEnable,
    /// An optional JSON [`ResumeConfig`] (none: `{"force": false}`).
    Resume,
    /// An optional JSON [`super::types::FtVerifyConfig`] (empty: the defaults).
    FtVerify,
}

/// One endpoint: its name under [`API_PREFIX`], method and body.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// The endpoint's name, as clients write it (`vm.info`).
    pub name: &'static str,
    /// The one method the endpoint accepts.
    pub method: Method,
    /// What the request body must hold.
    pub body: Body,
}

const fn route(name: &'static str, method: Method, body: Body) -> Route {
    Route { name, method, body }
}

/// Every endpoint. The OpenAPI document is checked against this table in tests.
pub const ROUTES: &[Route] = &[
    route("vmm.ping", Method::Get, Body::None),
    route("vmm.shutdown", Method::Put, Body::None),
    route("vm.create", Method::Put, Body::VmConfig),
    route("vm.boot", Method::Put, Body::None),
    route("vm.info", Method::Get, Body::None),
    route("vm.pause", Method::Put, Body::None),
    route("vm.resume", Method::Put, Body::Resume),
    route("vm.shutdown", Method::Put, Body::None),
    route("vm.reboot", Method::Put, Body::None),
    route("vm.delete", Method::Put, Body::None),
    route("vm.counters", Method::Get, Body::None),
    route("vm.snapshot", Method::Put, Body::Snapshot),
    route("vm.restore", Method::Put, Body::Restore),
    route("vm.send-migration", Method::Put, Body::SendMigration),
    route("vm.receive-migration", Method::Put, Body::ReceiveMigration),
    route("metrics", Method::Get, Body::None),
    route("ft.receive", Method::Put, Body::FtReceive),
    route("ft.enable", Method::Put, Body::FtEnable),
    route("ft.status", Method::Get, Body::None),
    route("ft.promote", Method::Put, Body::None),
    route("ft.disable", Method::Put, Body::None),
    route("ft.verify", Method::Put, Body::FtVerify),
];

/// Why a request could not be turned into an [`ApiRequest`].
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The path is not under [`API_PREFIX`] or names no endpoint (the path, shortened).
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// The endpoint exists but takes another method.
    #[error("{name} does not accept {method}; use {allow}")]
    MethodNotAllowed {
        /// The endpoint's name.
        name: &'static str,
        /// The method the client used, shortened.
        method: String,
        /// The method the endpoint takes, for the `Allow` header.
        allow: &'static str,
    },
    /// The body exceeds [`MAX_BODY_BYTES`].
    #[error("request body is {len} bytes, the limit is {MAX_BODY_BYTES}")]
    BodyTooLarge {
        /// The body's length in bytes.
        len: usize,
    },
    /// An endpoint that needs a JSON body got none (its name).
    #[error("{0} needs a JSON body")]
    MissingBody(&'static str),
    /// An endpoint that takes no body got a non-blank one (its name).
    #[error("{0} takes no body")]
    UnexpectedBody(&'static str),
    /// The body is not UTF-8 (the endpoint's name).
    #[error("{0}: body is not valid UTF-8")]
    NotUtf8(&'static str),
    /// The body is not JSON of the endpoint's shape.
    #[error("{name}: invalid JSON body")]
    BadJson {
        /// The endpoint's name.
        name: &'static str,
        /// Where the JSON parser stopped.
        #[source]
        source: serde_json::Error,
    },
    /// The `vm.create` config parses but does not validate.
    #[error("{name}: invalid VM configuration")]
    BadConfig {
        /// The endpoint's name.
        name: &'static str,
        /// The check it fails.
        #[source]
        source: ConfigError,
    },
}

impl RouteError {
    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::NotFound(_) => 404,
            RouteError::MethodNotAllowed { .. } => 405,
            _ => 400,
        }
    }

    /// Value of the `Allow` header a 405 must carry.
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            RouteError::MethodNotAllowed { allow, .. } => Some(allow),
            _ => None,
        }
    }

    /// The error as the API answers it.
    pub fn to_api_error(&self) -> ApiError {
        ApiError::from_error(self.status(), self)
    }
}

/// Finds the route for `path` (query string ignored), or says why there is none.
pub fn find_route(method: &str, path: &str) -> Result<&'static Route, RouteError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let name = path
        .strip_prefix(API_PREFIX)
        .ok_or_else(|| RouteError::NotFound(shorten(path)))?;
    let route = ROUTES
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| RouteError::NotFound(shorten(path)))?;
    if !route.method.as_str().eq_ignore_ascii_case(method) {
        return Err(RouteError::MethodNotAllowed {
            name: route.name,
            method: shorten(method),
            allow: route.method.as_str(),
        });
    }
    Ok(route)
}

/// Parses a whole request. `host_memory_limit` bounds `memory.size` for `vm.create`.
pub fn parse_request(
    method: &str,
    path: &str,
    body: &[u8],
    host_memory_limit: u64,
) -> Result<ApiRequest, RouteError> {
    let route = find_route(method, path)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(RouteError::BodyTooLarge { len: body.len() });
    }
    match route.body {
        Body::None if !body.iter().all(u8::is_ascii_whitespace) => {
            return Err(RouteError::UnexpectedBody(route.name))
        }
        Body::None => {}
        Body::VmConfig => {
            let config = parse_config(route.name, body)?;
            config
                .validate(host_memory_limit)
                .map_err(|source| RouteError::BadConfig {
                    name: route.name,
                    source,
                })?;
            return Ok(ApiRequest::VmCreate(Box::new(config)));
        }
        Body::Snapshot => return Ok(ApiRequest::VmSnapshot(parse_json(route.name, body)?)),
        Body::Restore => {
            return Ok(ApiRequest::VmRestore(Box::new(
                parse_json::<RestoreConfig>(route.name, body)?,
            )))
        }
        Body::SendMigration => {
            return Ok(ApiRequest::VmSendMigration(parse_json(route.name, body)?))
        }
        Body::ReceiveMigration => {
            return Ok(ApiRequest::VmReceiveMigration(Box::new(parse_json::<
                ReceiveMigrationConfig,
            >(
                route.name, body,
            )?)))
        }
        Body::FtReceive => {
            return Ok(ApiRequest::FtReceive(Box::new(parse_json(
                route.name, body,
            )?)))
        }
        Body::FtEnable => {
            return Ok(ApiRequest::FtEnable(Box::new(parse_json(
                route.name, body,
            )?)))
        }
        Body::Resume => {
            let forced = !body.iter().all(u8::is_ascii_whitespace)
                && parse_json::<ResumeConfig>(route.name, body)?.force;
            return Ok(if forced {
                ApiRequest::VmResumeForced
            } else {
                ApiRequest::VmResume
            });
        }
        Body::FtVerify if body.iter().all(u8::is_ascii_whitespace) => {
            return Ok(ApiRequest::FtVerify(Default::default()))
        }
        Body::FtVerify => return Ok(ApiRequest::FtVerify(parse_json(route.name, body)?)),
    }
    Ok(match route.name {
        "vmm.ping" => ApiRequest::VmmPing,
        "vmm.shutdown" => ApiRequest::VmmShutdown,
        "vm.boot" => ApiRequest::VmBoot,
        "vm.info" => ApiRequest::VmInfo,
        "vm.pause" => ApiRequest::VmPause,
        "vm.shutdown" => ApiRequest::VmShutdown,
        "vm.reboot" => ApiRequest::VmReboot,
        "vm.delete" => ApiRequest::VmDelete,
        "vm.counters" => ApiRequest::VmCounters,
        "metrics" => ApiRequest::Metrics,
        "ft.status" => ApiRequest::FtStatus,
        "ft.promote" => ApiRequest::FtPromote,
        "ft.disable" => ApiRequest::FtDisable,
        // Only reachable if ROUTES gains an entry this match lacks; the table test catches that.
        other => return Err(RouteError::NotFound(other.to_string())),
    })
}

fn parse_config(name: &'static str, body: &[u8]) -> Result<VmConfig, RouteError> {
    parse_json(name, body)
}

fn parse_json<T: serde::de::DeserializeOwned>(
    name: &'static str,
    body: &[u8],
) -> Result<T, RouteError> {
    let text = std::str::from_utf8(body).map_err(|_| RouteError::NotUtf8(name))?;
    if text.trim().is_empty() {
        return Err(RouteError::MissingBody(name));
    }
    serde_json::from_str(text).map_err(|source| RouteError::BadJson { name, source })
}

/// Caps client-supplied text echoed in errors, so a huge path cannot make a huge answer.
fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
