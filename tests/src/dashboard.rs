//! The Grafana dashboard under resources/dashboards/: its JSON and every query in it.

use serde_json::Value;
use std::path::PathBuf;

/// The dashboard's file.
pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../resources/dashboards/tandem.json")
}

/// The parsed dashboard; panics with the reason when it cannot be read or parsed.
pub fn load() -> Value {
    let p = path();
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every PromQL string in `v`: panel targets' `expr` and template variables' `query`.
pub fn queries(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect(v, &mut out);
    out
}

fn collect(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "expr" || k == "query" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                }
                collect(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        _ => {}
    }
}
