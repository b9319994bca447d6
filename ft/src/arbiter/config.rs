//! The `arbiter` object of the API (`ft.enable`, `ft.receive`, and wherever else a member must
//! win a generation before running alone), and the one function that opens it.

use super::{Arbiter, ArbiterError, EtcdArbiter, EtcdConfig, FileArbiter};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Where a pair's arbiter lives: `{"path": DIR}` (a directory on storage both hosts see) or
/// `{"etcd": {...}}` (a key prefix in an etcd cluster both hosts reach).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArbiterConfig {
    /// A directory on shared storage ([`FileArbiter`]).
    Path(PathBuf),
    /// An etcd cluster ([`EtcdArbiter`]); boxed, since every holder of an `ArbiterConfig` would
    /// otherwise carry its size.
    Etcd(Box<EtcdConfig>),
}

/// Opens the arbiter `config` names and checks up front that it can be used: the directory
/// exists and is writable, or etcd answers (with the given TLS files and credentials) and lets
/// this member write under its key. Any error is the caller's bad request.
pub fn open(config: &ArbiterConfig) -> Result<Arc<dyn Arbiter>, ArbiterError> {
    Ok(match config {
        ArbiterConfig::Path(dir) => Arc::new(FileArbiter::open(dir)?),
        ArbiterConfig::Etcd(c) => Arc::new(EtcdArbiter::open(c)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_and_others_are_refused() {
        let p: ArbiterConfig = serde_json::from_str(r#"{"path":"/a"}"#).unwrap();
        assert_eq!(p, ArbiterConfig::Path("/a".into()));
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"path":"/a"}"#);
        let e: ArbiterConfig = serde_json::from_str(
            r#"{"etcd":{"endpoints":["http://127.0.0.1:2379"],"key":"/tandem/pairs/a"}}"#,
        )
        .unwrap();
        let ArbiterConfig::Etcd(c) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
        for bad in [
            r#"{}"#,
            r#"{"dir":"/a"}"#,
            r#"{"path":"/a","etcd":{"endpoints":[],"key":"/k"}}"#,
            r#"{"etcd":{"endpoints":["http://h:1"],"key":"/k","password":"x"}}"#,
            r#"{"etcd":{"key":"/k"}}"#,
            r#""/a""#,
        ] {
            assert!(
                serde_json::from_str::<ArbiterConfig>(bad).is_err(),
                "accepted {bad}"
            );
        }
    }

    #[test]
    fn open_checks_the_directory() {
        let e = open(&ArbiterConfig::Path("/nonexistent/tandem-arbiter".into()))
            .err()
            .unwrap();
        assert!(matches!(e, ArbiterError::Missing { .. }), "{e}");
    }
}
