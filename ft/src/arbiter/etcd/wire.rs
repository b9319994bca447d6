//! The few messages of etcd's v3 JSON gateway (grpc-gateway over `etcdserverpb`, served at
//! `/v3/...` by etcd 3.4 and later) that the arbiter sends and reads. Keys and values travel as
//! base64; 64-bit integers as decimal strings; fields left at their defaults are omitted from
//! answers (hence the `default`s). Unknown answer fields are ignored: etcd adds some over time.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// `key` in the gateway's encoding.
pub fn b64(key: &[u8]) -> String {
    STANDARD.encode(key)
}

/// `KV.Txn`: if every `compare` holds, run `success`, else `failure`, atomically.
#[derive(Debug, Serialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

/// One condition of a transaction. The arbiter only ever asks "no key here": the creation
/// revision of `key` (or of every key in `[key, range_end)`) is 0.
#[derive(Debug, Serialize)]
pub struct Compare {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    range_end: Option<String>,
    target: &'static str,
    result: &'static str,
    create_revision: &'static str,
}

impl Compare {
    /// Holds while `key` does not exist.
    pub fn absent(key: &[u8]) -> Compare {
        Compare {
            key: b64(key),
            range_end: None,
            target: "CREATE",
            result: "EQUAL",
            create_revision: "0",
        }
    }

    /// Holds while no key in `[start, end)` exists (etcd 3.3+ compares every key of a range;
    /// an empty range compares as one absent key).
    pub fn none_in(start: &[u8], end: &[u8]) -> Compare {
        Compare {
            range_end: Some(b64(end)),
            ..Compare::absent(start)
        }
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Serialize)]
pub enum RequestOp {
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_range")]
    Range(RangeRequest),
}

/// `KV.Put`.
#[derive(Debug, Serialize)]
pub struct PutRequest {
    key: String,
    value: String,
}

impl RequestOp {
    /// Puts `value` at `key`.
    pub fn put(key: &[u8], value: &[u8]) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: b64(key),
            value: b64(value),
        })
    }

    /// Reads `key`.
    pub fn get(key: &[u8]) -> RequestOp {
        RequestOp::Range(RangeRequest::key(key))
    }

    /// Reads the last key of `[start, end)` in key order.
    pub fn last_in(start: &[u8], end: &[u8]) -> RequestOp {
        RequestOp::Range(RangeRequest::last_in(start, end))
    }
}

/// `KV.Range` (linearizable: etcd's default).
#[derive(Debug, Serialize)]
pub struct RangeRequest {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    range_end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sort_order: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sort_target: Option<&'static str>,
}

impl RangeRequest {
    /// One key.
    pub fn key(key: &[u8]) -> RangeRequest {
        RangeRequest {
            key: b64(key),
            range_end: None,
            limit: None,
            sort_order: None,
            sort_target: None,
        }
    }

    /// The last key of `[start, end)`.
    pub fn last_in(start: &[u8], end: &[u8]) -> RangeRequest {
        RangeRequest {
            range_end: Some(b64(end)),
            limit: Some("1"),
            sort_order: Some("DESCEND"),
            sort_target: Some("KEY"),
            ..RangeRequest::key(start)
        }
    }
}

/// The answer to a [`TxnRequest`]: which branch ran, and its operations' answers in order.
#[derive(Debug, Deserialize)]
pub struct TxnResponse {
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

/// One operation's answer; only ranges carry anything the arbiter reads.
#[derive(Debug, Deserialize)]
pub struct ResponseOp {
    #[serde(default)]
    pub response_range: Option<RangeResponse>,
}

/// The keys a range found.
#[derive(Debug, Default, Deserialize)]
pub struct RangeResponse {
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
}

/// A key and its value, base64.
#[derive(Debug, Deserialize)]
pub struct KeyValue {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

impl KeyValue {
    /// The key's bytes.
    pub fn key(&self) -> Result<Vec<u8>, base64::DecodeError> {
        STANDARD.decode(&self.key)
    }

    /// The value's bytes.
    pub fn value(&self) -> Result<Vec<u8>, base64::DecodeError> {
        STANDARD.decode(&self.value)
    }
}

/// `Auth.Authenticate`: a user's name and password for a token.
#[derive(Serialize)]
pub struct AuthenticateRequest<'a> {
    pub name: &'a str,
    pub password: &'a str,
}

/// The token to send as `Authorization` on later requests (simple tokens are valid only on the
/// member that issued them; JWTs on every member).
#[derive(Deserialize)]
pub struct AuthenticateResponse {
    #[serde(default)]
    pub token: String,
}

/// What the gateway answers on an error: the gRPC status code and etcd's message.
#[derive(Debug, Default, Deserialize)]
pub struct GatewayError {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error: String,
}

/// gRPC `UNAUTHENTICATED`: etcd's "invalid auth token" (expired, or issued by another member).
pub const CODE_UNAUTHENTICATED: i64 = 16;
