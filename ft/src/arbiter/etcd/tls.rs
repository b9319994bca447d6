//! TLS to etcd through rustls: the CA file as the only roots when given (etcd clusters use a
//! private CA), else the public web PKI roots; the client certificate for `--client-cert-auth`.

use super::{EtcdConfig, EtcdError};
use std::path::Path;
use std::sync::Arc;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

/// Largest PEM file read.
const MAX_PEM: u64 = 1 << 20;

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, EtcdError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM).read_to_end(&mut bytes))
        .map_err(|source| EtcdError::ReadFile {
            what,
            path: path.to_owned(),
            source,
        })?;
    Ok(bytes)
}

/// The PEM items of `path`.
fn pem(what: &'static str, path: &Path) -> Result<Vec<PemItem<'static>>, EtcdError> {
    let bytes = read(what, path)?;
    ureq::tls::parse_pem(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| EtcdError::Pem {
            what,
            path: path.to_owned(),
            source,
        })
}

/// Every certificate in `path`; at least one.
fn certificates(what: &'static str, path: &Path) -> Result<Vec<Certificate<'static>>, EtcdError> {
    let certs: Vec<_> = pem(what, path)?
        .into_iter()
        .filter_map(|i| match i {
            PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(EtcdError::NoPem {
            what,
            expected: "certificate",
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in `path`.
fn private_key(path: &Path) -> Result<PrivateKey<'static>, EtcdError> {
    pem("key_file", path)?
        .into_iter()
        .find_map(|i| match i {
            PemItem::PrivateKey(k) => Some(k),
            _ => None,
        })
        .ok_or_else(|| EtcdError::NoPem {
            what: "key_file",
            expected: "private key",
            path: path.to_owned(),
        })
}

/// The TLS settings `config` asks for.
pub fn config(c: &EtcdConfig) -> Result<TlsConfig, EtcdError> {
    let roots = match &c.ca_file {
        Some(ca) => RootCerts::Specific(Arc::new(certificates("ca_file", ca)?)),
        None => RootCerts::WebPki,
    };
    let client = match c.client_cert()? {
        Some((cert, key)) => Some(ClientCert::new_with_certs(
            &certificates("cert_file", cert)?,
            private_key(key)?,
        )),
        None => None,
    };
    Ok(TlsConfig::builder()
        .root_certs(roots)
        .client_cert(client)
        .build())
}
