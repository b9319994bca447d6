//! A blocking client of etcd's v3 JSON gateway: one POST per call, to the member that answered
//! last, then to the others in turn, all within [`OPERATION_TIMEOUT`].
//!
//! Authentication is etcd's token flow: `POST /v3/auth/authenticate` with the user and password
//! gives a token sent as `Authorization` on every later request. etcd's default "simple" tokens
//! are valid only on the member that issued them, and expire (`--auth-token-ttl`), so a token is
//! kept per endpoint, and an "invalid auth token" answer gets one fresh token and one retry.

use super::config::Credentials;
use super::wire::{AuthenticateRequest, AuthenticateResponse, GatewayError, CODE_UNAUTHENTICATED};
use super::{EtcdConfig, EtcdError, CONNECT_TIMEOUT, OPERATION_TIMEOUT, REQUEST_TIMEOUT};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Largest answer read (the arbiter's answers are a few KiB).
const MAX_RESPONSE: u64 = 1 << 20;

/// The gateway of an etcd cluster.
pub struct Client {
    agent: ureq::Agent,
    /// `scheme://host:port`, checked.
    endpoints: Vec<String>,
    credentials: Option<Credentials>,
    /// The token each endpoint issued, if any yet.
    tokens: Mutex<Vec<Option<String>>>,
    /// The endpoint that answered last: tried first next time.
    preferred: AtomicUsize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `config` (checked: endpoints, TLS files, credentials); sends nothing yet.
    pub fn new(config: &EtcdConfig) -> Result<Client, EtcdError> {
        let (endpoints, any_https) = config.endpoints()?;
        let credentials = config.credentials()?;
        let tls = super::tls::config(config)?;
        if credentials.is_some() && !any_https {
            log::warn!(
                "etcd arbiter: the password for user {:?} goes to {endpoints:?} in clear text \
                 (no https endpoint)",
                config.user.as_deref().unwrap_or("")
            );
        }
        let agent_config = ureq::Agent::config_builder()
            // etcd's error answers carry a JSON body worth reading.
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            // etcd is reached directly: HTTP(S)_PROXY in the VMM's environment is not for it.
            .proxy(None)
            .max_redirects(0)
            .tls_config(tls)
            .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            agent: ureq::Agent::new_with_config(agent_config),
            tokens: Mutex::new(vec![None; endpoints.len()]),
            endpoints,
            credentials,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The endpoints, checked.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// POSTs `request` to `path` (e.g. `/v3/kv/txn`) on the first endpoint that answers; an
    /// error once every endpoint failed or [`OPERATION_TIMEOUT`] passed.
    pub fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &str,
        request: &Q,
    ) -> Result<A, EtcdError> {
        let body = serde_json::to_vec(request).map_err(EtcdError::Encode)?;
        let deadline = Instant::now() + OPERATION_TIMEOUT;
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last = None;
        let mut tried = 0;
        for i in (0..n).map(|k| (first + k) % n) {
            if Instant::now() >= deadline {
                break;
            }
            tried += 1;
            match self.call_on(i, path, &body, deadline) {
                Ok(a) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(a);
                }
                Err(e) => {
                    log::warn!(
                        "etcd arbiter: {} failed: {}",
                        self.endpoints[i],
                        errors::chain(&e)
                    );
                    last = Some(e);
                }
            }
        }
        Err(EtcdError::Unavailable {
            tried,
            of: n,
            last: last.map(Box::new),
        })
    }

    /// One call on endpoint `i`, with a token if the arbiter authenticates.
    fn call_on<A: DeserializeOwned>(
        &self,
        i: usize,
        path: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<A, EtcdError> {
        let Some(creds) = &self.credentials else {
            return self.post(i, path, body, None, deadline);
        };
        let cached = self.token(i);
        let token = match &cached {
            Some(t) => t.clone(),
            None => self.authenticate(i, creds, deadline)?,
        };
        match self.post(i, path, body, Some(&token), deadline) {
            Err(EtcdError::Refused {
                code: Some(CODE_UNAUTHENTICATED),
                ..
            }) if cached.is_some() => {
                // Expired, or the member restarted and forgot it: once more with a fresh one.
                self.set_token(i, None);
                let token = self.authenticate(i, creds, deadline)?;
                self.post(i, path, body, Some(&token), deadline)
            }
            r => r,
        }
    }

    fn token(&self, i: usize) -> Option<String> {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(i)
            .cloned()
            .flatten()
    }

    fn set_token(&self, i: usize, token: Option<String>) {
        if let Some(t) = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(i)
        {
            *t = token;
        }
    }

    /// A fresh token from endpoint `i`, kept for it.
    fn authenticate(
        &self,
        i: usize,
        creds: &Credentials,
        deadline: Instant,
    ) -> Result<String, EtcdError> {
        let body = serde_json::to_vec(&AuthenticateRequest {
            name: &creds.user,
            password: &creds.password,
        })
        .map_err(EtcdError::Encode)?;
        let a: AuthenticateResponse =
            self.post(i, "/v3/auth/authenticate", &body, None, deadline)?;
        if a.token.is_empty() {
            return Err(EtcdError::Unexpected {
                url: format!("{}/v3/auth/authenticate", self.endpoints[i]),
                what: "an empty token (is authentication enabled on the cluster?)",
            });
        }
        self.set_token(i, Some(a.token.clone()));
        Ok(a.token)
    }

    /// One POST; its timeout is the shorter of [`REQUEST_TIMEOUT`] and what is left until
    /// `deadline`.
    fn post<A: DeserializeOwned>(
        &self,
        i: usize,
        path: &str,
        body: &[u8],
        token: Option<&str>,
        deadline: Instant,
    ) -> Result<A, EtcdError> {
        let url = format!("{}{path}", self.endpoints[i]);
        let left = deadline.saturating_duration_since(Instant::now());
        let mut req = self
            .agent
            .post(&url)
            .config()
            .timeout_global(Some(left.min(REQUEST_TIMEOUT)))
            .build()
            .content_type("application/json");
        if let Some(t) = token {
            req = req.header("Authorization", t);
        }
        let transport = |source| EtcdError::Transport {
            url: url.clone(),
            source: Box::new(source),
        };
        let mut resp = req.send(body).map_err(transport)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(transport)?;
        if status != 200 {
            let e: GatewayError = serde_json::from_slice(&text).unwrap_or_default();
            let message = if e.message.is_empty() {
                e.error
            } else {
                e.message
            };
            return Err(EtcdError::Refused {
                url,
                status,
                code: e.code,
                message: message.chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&text).map_err(|source| EtcdError::Decode { url, source })
    }
}
