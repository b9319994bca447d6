//! The etcd arbiter: generations are won by a compare-and-swap transaction on an etcd cluster.
//!
//! A claim of generation `G` is one transaction (layout in [`layout`]):
//!
//! ```text
//! if   K/gen/G does not exist  and  no key exists in [K/gen/G+1, K/gen/:)
//! then put K/gen/G = claim                                      → Won
//! else get K/gen/G, get the last key of [K/gen/G+1, K/gen/:)    → Superseded (a higher one
//!                                                                  exists), else Won if the
//!                                                                  record is this very claim
//!                                                                  (a retry), else Lost
//! ```
//!
//! etcd applies a transaction atomically through its raft log, so the rules are the file
//! arbiter's, with no window between the checks and the write: one winner per generation, ever;
//! nothing below the highest generation can be won; a retry with an equal claim (after a
//! timeout whose request did reach etcd) finds its own record and wins again. Records are never
//! deleted or overwritten. Every error (no member answered, a refused request, an answer that
//! does not parse) is an [`EtcdError`], never a win: callers retry and stay as they are.
//!
//! **Why the JSON gateway over a blocking HTTP client, not a gRPC crate.** The arbiter is called
//! from the FT threads, which run under a seccomp filter, and from the VMM thread. The maintained
//! etcd client crates (`etcd-client`, over tonic) need a tokio runtime: its worker and blocking
//! threads, epoll and eventfds on every call path, and protobuf code generation at build time.
//! The gateway (`POST /v3/kv/txn`, served by etcd 3.4 and later) speaks the same transactions as
//! JSON; `ureq` sends them from the calling thread with plain socket calls and bounded
//! timeouts, through rustls for TLS. Four small requests cover the arbiter; the gRPC API would add
//! nothing it needs.
//!
//! **Timeouts.** Every request gives up after [`REQUEST_TIMEOUT`] ([`CONNECT_TIMEOUT`] to
//! connect), and a whole arbiter call — every endpoint tried, a token fetched — after
//! [`OPERATION_TIMEOUT`]. A pair thread blocked in a claim therefore answers its commands
//! (`ft.disable`, `vm.pause`, each waited on for 5 s) in time, and the failover coordinator
//! retries an unanswered claim about a second later.

mod client;
mod config;
mod layout;
#[cfg(test)]
mod tests;
mod tls;
mod wire;

pub use config::EtcdConfig;

use super::{Arbiter, ArbiterError, Claim, Holder, Identity, Outcome};
use client::Client;
use layout::Layout;
use std::path::PathBuf;
use std::time::Duration;
use wire::{Compare, KeyValue, RequestOp, TxnRequest, TxnResponse};

/// Longest wait for a TCP connection to one member (a member on a LAN connects in well under a
/// millisecond; one that is down or cut off is given up on quickly, for the next).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest one request may take, connection and TLS included (an etcd write waits for a raft
/// commit and an fsync: milliseconds, much more on a loaded host).
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// Longest one arbiter call may take, across every endpoint: under the 5 s a pair thread's
/// commands are waited on.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors of the etcd arbiter: its configuration, and talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// `endpoints` is empty.
    #[error("endpoints is empty")]
    NoEndpoints,
    /// More endpoints than any cluster has.
    #[error("{count} endpoints given, at most {max}")]
    TooManyEndpoints {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An endpoint is not `http(s)://HOST:PORT`.
    #[error("endpoint {endpoint:?}: {why}")]
    BadEndpoint {
        /// As given.
        endpoint: String,
        /// What is wrong.
        why: &'static str,
    },
    /// TLS files were given for a plain-http endpoint.
    #[error("endpoint {endpoint}: ca_file/cert_file/key_file given, but the endpoint is http, not https")]
    TlsOverHttp {
        /// The endpoint.
        endpoint: String,
    },
    /// The key prefix is unusable.
    #[error("key {key:?}: {why}")]
    BadKey {
        /// As given.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
    /// One of two fields that go together is missing.
    #[error("{given} is given without {missing}")]
    Missing {
        /// The field given.
        given: &'static str,
        /// The field it needs.
        missing: &'static str,
    },
    /// `user` is the empty string.
    #[error("user is empty")]
    EmptyUser,
    /// A file the config names cannot be read.
    #[error("cannot read {what} {path}")]
    ReadFile {
        /// The field naming it.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file does not parse.
    #[error("{what} {path} is not valid PEM")]
    Pem {
        /// The field naming it.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: ureq::Error,
    },
    /// A PEM file lacks what it should hold.
    #[error("{what} {path} holds no {expected}")]
    NoPem {
        /// The field naming it.
        what: &'static str,
        /// What it should hold.
        expected: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The password file may be read by others.
    #[error(
        "password_file {path} has mode {mode:o}; it must be readable by its owner only (chmod 600)"
    )]
    PasswordPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The password file's first line is empty.
    #[error("password_file {path} is empty")]
    EmptyPassword {
        /// The file.
        path: PathBuf,
    },
    /// A request could not be encoded.
    #[error("cannot encode a request")]
    Encode(#[source] serde_json::Error),
    /// A request got no answer: connection refused or timed out, TLS failed.
    #[error("request to {url} failed")]
    Transport {
        /// The request's URL.
        url: String,
        /// Why (boxed: ureq's error is large).
        #[source]
        source: Box<ureq::Error>,
    },
    /// etcd answered with an error (permission denied, invalid token, no leader, ...).
    #[error("{url} answered HTTP {status}{}: {message}", code.map(|c| format!(" (gRPC code {c})")).unwrap_or_default())]
    Refused {
        /// The request's URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// gRPC status code, when the answer carried one.
        code: Option<i64>,
        /// etcd's message.
        message: String,
    },
    /// An answer is not the JSON it should be.
    #[error("the answer of {url} does not parse")]
    Decode {
        /// The request's URL.
        url: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An answer's key or value is not valid base64.
    #[error("an answer holds invalid base64")]
    Base64(#[source] base64::DecodeError),
    /// An answer lacks what the request implies it must hold.
    #[error("{url} answered {what}")]
    Unexpected {
        /// The request's URL (or what was asked).
        url: String,
        /// What was odd.
        what: &'static str,
    },
    /// A key under the pair's generation records is not one the arbiter writes.
    #[error("key {key:?} is not a generation record of this arbiter; remove it")]
    ForeignKey {
        /// The key, lossily decoded.
        key: String,
    },
    /// No endpoint answered in time.
    #[error("no endpoint answered ({tried} of {of} tried)")]
    Unavailable {
        /// Endpoints tried before the operation's deadline.
        tried: usize,
        /// Endpoints configured.
        of: usize,
        /// The last endpoint's error.
        #[source]
        last: Option<Box<EtcdError>>,
    },
}

/// The etcd arbiter of one pair.
#[derive(Debug)]
pub struct EtcdArbiter {
    client: Client,
    layout: Layout,
    key: String,
}

/// What a claim's failure branch found.
fn range(r: &TxnResponse, i: usize) -> Option<&KeyValue> {
    r.responses
        .get(i)
        .and_then(|op| op.response_range.as_ref())
        .and_then(|rr| rr.kvs.first())
}

impl EtcdArbiter {
    /// Checks `config`, then checks with the cluster that this member may use the key: reads
    /// the generations and creates (or reads) the store's identity, a write that needs the same
    /// permissions as a claim.
    pub fn open(config: &EtcdConfig) -> Result<EtcdArbiter, ArbiterError> {
        let key = config.pair_key()?.to_owned();
        let arbiter = EtcdArbiter {
            client: Client::new(config)?,
            layout: Layout::new(&key),
            key,
        };
        arbiter.current()?;
        arbiter.identity()?;
        Ok(arbiter)
    }

    /// The pair's key prefix.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The endpoints, as checked.
    pub fn endpoints(&self) -> &[String] {
        self.client.endpoints()
    }

    fn txn(&self, t: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.client.call("/v3/kv/txn", t)
    }

    /// Who holds the generation whose record is `kv` (read from the generation range).
    fn holder(&self, kv: &KeyValue) -> Result<Holder, EtcdError> {
        let key = kv.key().map_err(EtcdError::Base64)?;
        let generation = self
            .layout
            .parse(&key)
            .ok_or_else(|| EtcdError::ForeignKey {
                key: String::from_utf8_lossy(&key).into_owned(),
            })?;
        let value = kv.value().map_err(EtcdError::Base64)?;
        Ok(Holder {
            generation,
            // A record that does not parse still holds its generation, like an empty file.
            claim: serde_json::from_slice(&value).ok(),
        })
    }
}

impl Arbiter for EtcdArbiter {
    fn try_acquire(&self, generation: u64, claimant: &Claim) -> Result<Outcome, ArbiterError> {
        let record = self.layout.generation(generation);
        let mut value = serde_json::to_vec_pretty(claimant).map_err(ArbiterError::Encode)?;
        value.push(b'\n');
        let mut compare = vec![Compare::absent(&record)];
        let mut failure = vec![RequestOp::get(&record)];
        if let Some(next) = generation.checked_add(1) {
            let above = self.layout.generation(next);
            compare.push(Compare::none_in(&above, &self.layout.end()));
            failure.push(RequestOp::last_in(&above, &self.layout.end()));
        }
        let r = self.txn(&TxnRequest {
            compare,
            success: vec![RequestOp::put(&record, &value)],
            failure,
        })?;
        if r.succeeded {
            return Ok(Outcome::Won);
        }
        if let Some(kv) = range(&r, 1) {
            return Ok(Outcome::Superseded(self.holder(kv)?));
        }
        let Some(kv) = range(&r, 0) else {
            return Err(EtcdError::Unexpected {
                url: format!("a claim of generation {generation}"),
                what: "that the claim failed, yet found neither its record nor a higher one",
            }
            .into());
        };
        let holder = self.holder(kv)?;
        if holder.claim.as_ref() == Some(claimant) {
            // A retry whose first attempt reached etcd but whose answer was lost.
            return Ok(Outcome::Won);
        }
        Ok(Outcome::Lost(holder))
    }

    fn current(&self) -> Result<Option<Holder>, ArbiterError> {
        let r = self.txn(&TxnRequest {
            compare: vec![],
            success: vec![RequestOp::last_in(&self.layout.first(), &self.layout.end())],
            failure: vec![],
        })?;
        Ok(range(&r, 0).map(|kv| self.holder(kv)).transpose()?)
    }

    fn identity(&self) -> Result<Identity, ArbiterError> {
        let key = self.layout.identity();
        let fresh = Identity::random()?;
        let r = self.txn(&TxnRequest {
            compare: vec![Compare::absent(&key)],
            success: vec![RequestOp::put(&key, fresh.as_str().as_bytes())],
            failure: vec![RequestOp::get(&key)],
        })?;
        if r.succeeded {
            return Ok(fresh);
        }
        let place = String::from_utf8_lossy(&key).into_owned();
        let kv = range(&r, 0).ok_or(EtcdError::Unexpected {
            url: place.clone(),
            what: "that the identity exists, yet holds nothing",
        })?;
        let value = kv.value().map_err(EtcdError::Base64)?;
        Identity::parse_at(&String::from_utf8_lossy(&value), place)
    }
}
