//! The Grafana dashboard under resources/dashboards/ only queries metrics Tandem exports.

use std::collections::BTreeSet;
use tandem_tests::{
    dashboard, is_exported_series, HISTOGRAM_FAMILIES, METRIC_FAMILIES as FAMILIES,
};

#[test]
fn dashboard_queries_only_exported_metrics() {
    let dash = dashboard::load();
    assert_eq!(dash["uid"], "tandem-vmm");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        // Every query of every panel reads at least one Tandem series (checked below).
        for t in targets {
            let e = t["expr"].as_str().unwrap_or_default();
            assert!(e.contains("tandem_"), "{}: {e:?}", p["title"]);
        }
    }
    let all = dashboard::queries(&dash);
    let mut used = BTreeSet::new();
    for e in &all {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("tandem_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            used.insert(name);
        }
    }
    for name in &used {
        assert!(
            is_exported_series(name),
            "dashboard queries unknown metric {name}"
        );
    }
    assert!(used.len() >= 10, "{used:?}");
    // The FT panels cover every FT family (a histogram through its series).
    for family in FAMILIES.iter().filter(|f| f.starts_with("tandem_ft_")) {
        assert!(
            used.iter().any(|u| u == family
                || (HISTOGRAM_FAMILIES.contains(family) && u.starts_with(&format!("{family}_")))),
            "no panel shows {family}"
        );
    }
}
