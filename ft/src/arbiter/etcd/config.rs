//! The `{"etcd": {...}}` arbiter object, and its checks: everything that can be wrong with it
//! without asking etcd is found here, before any request, with an error naming the field.

use super::EtcdError;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Most endpoints one arbiter lists (an etcd cluster has 3, 5 or 7 members).
const MAX_ENDPOINTS: usize = 16;
/// Longest key prefix (etcd's own limit on a key is far larger; this is a sanity bound).
const MAX_KEY_LEN: usize = 1024;
/// Largest password file read.
const MAX_PASSWORD_FILE: u64 = 4096;

/// An etcd cluster as the arbiter of a pair, named the way etcd's own tools name things.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members, `http://HOST:PORT` or `https://HOST:PORT`; tried in
    /// turn until one answers.
    pub endpoints: Vec<String>,
    /// The pair's key prefix, e.g. `/tandem/pairs/db1`; both members must name the same.
    pub key: String,
    /// PEM file of the CA(s) that sign the members' server certificates (etcdctl `--cacert`);
    /// without it, `https` endpoints are checked against the public web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for etcd's `--client-cert-auth` (etcdctl `--cert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (etcdctl `--key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// etcd user to authenticate as (etcd's auth must be enabled), with `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// File holding `user`'s password (one line; readable by its owner only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// A user and the password read from its file.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

/// Checks one endpoint URL; returns it as `scheme://host:port` (no trailing slash) and whether
/// it is https.
fn endpoint(url: &str) -> Result<(String, bool), EtcdError> {
    let bad = |why| EtcdError::BadEndpoint {
        endpoint: url.to_owned(),
        why,
    };
    let uri: ureq::http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("the scheme must be http or https")),
    };
    let authority = uri.authority().ok_or(bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "credentials go in user and password_file, not in the URL",
        ));
    }
    if authority.host().is_empty() {
        return Err(bad("no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("the URL must be just scheme://host:port"));
    }
    let scheme = if https { "https" } else { "http" };
    Ok((format!("{scheme}://{authority}"), https))
}

impl EtcdConfig {
    /// The endpoints, checked and normalised, and whether any is https.
    pub(super) fn endpoints(&self) -> Result<(Vec<String>, bool), EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(EtcdError::TooManyEndpoints {
                count: self.endpoints.len(),
                max: MAX_ENDPOINTS,
            });
        }
        let mut out = Vec::new();
        let mut any_https = false;
        for e in &self.endpoints {
            let (url, https) = endpoint(e)?;
            let tls_files = self.ca_file.is_some() || self.cert_file.is_some();
            if !https && tls_files {
                return Err(EtcdError::TlsOverHttp { endpoint: url });
            }
            any_https |= https;
            out.push(url);
        }
        Ok((out, any_https))
    }

    /// The key prefix, checked.
    pub(super) fn pair_key(&self) -> Result<&str, EtcdError> {
        let bad = |why| EtcdError::BadKey {
            key: self.key.clone(),
            why,
        };
        if self.key.is_empty() {
            return Err(bad("it is empty"));
        }
        if self.key.ends_with('/') {
            return Err(bad(
                "it must not end with '/' (the arbiter adds its own names below it)",
            ));
        }
        if self.key.len() > MAX_KEY_LEN || self.key.contains('\0') {
            return Err(bad("it is too long or holds a NUL byte"));
        }
        Ok(&self.key)
    }

    /// The client certificate and key files, both or neither.
    pub(super) fn client_cert(&self) -> Result<Option<(&Path, &Path)>, EtcdError> {
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(EtcdError::Missing {
                given: "cert_file",
                missing: "key_file",
            }),
            (None, Some(_)) => Err(EtcdError::Missing {
                given: "key_file",
                missing: "cert_file",
            }),
        }
    }

    /// The user and password, read from `password_file`; both or neither.
    pub(super) fn credentials(&self) -> Result<Option<Credentials>, EtcdError> {
        let (user, path) = match (&self.user, &self.password_file) {
            (Some(u), Some(p)) => (u, p),
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(EtcdError::Missing {
                    given: "user",
                    missing: "password_file",
                })
            }
            (None, Some(_)) => {
                return Err(EtcdError::Missing {
                    given: "password_file",
                    missing: "user",
                })
            }
        };
        if user.is_empty() {
            return Err(EtcdError::EmptyUser);
        }
        Ok(Some(Credentials {
            user: user.clone(),
            password: read_password(path)?,
        }))
    }
}

/// Reads a password file: its first line, refused when others may read it (like the pair key).
fn read_password(path: &Path) -> Result<String, EtcdError> {
    let io = |source| EtcdError::ReadFile {
        what: "password_file",
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mode = f.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(EtcdError::PasswordPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    f.take(MAX_PASSWORD_FILE)
        .read_to_string(&mut text)
        .map_err(io)?;
    let password = text.lines().next().unwrap_or("").to_owned();
    if password.is_empty() {
        return Err(EtcdError::EmptyPassword {
            path: path.to_owned(),
        });
    }
    Ok(password)
}
