//! Keeps `resources/openapi/tandem.yaml` in step with the route table and the config types.

use super::routes::{Body, Method, ROUTES};
use crate::config::{
    CpusConfig, DiskConfig, MemoryConfig, NetConfig, PayloadConfig, SerialConfig, SerialMode,
    VmConfig,
};
use serde_yaml::Value;
use std::collections::BTreeSet;

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

fn document() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../resources/openapi/tandem.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read tandem.yaml");
    serde_yaml::from_str(&text).expect("tandem.yaml is valid YAML")
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["components"]["schemas"][name]
}

/// Follows `$ref: "#/components/schemas/X"`.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/schemas/")
                .expect("local schema ref");
            schema(doc, name)
        }
        None => v,
    }
}

#[test]
fn routes_and_document_agree() {
    let doc = document();
    assert_eq!(
        doc["servers"][0]["url"].as_str(),
        Some("http://localhost/api/v1")
    );
    let paths = doc["paths"].as_mapping().expect("paths");
    let mut in_doc = BTreeSet::new();
    for (path, item) in paths {
        let path = path.as_str().expect("path is a string");
        let item = item.as_mapping().expect("path item");
        for (method, _) in item {
            let method = method.as_str().expect("method key");
            if HTTP_METHODS.contains(&method) {
                in_doc.insert((path.to_string(), method.to_uppercase()));
            }
        }
    }
    let in_code: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| (format!("/{}", r.name), r.method.as_str().to_string()))
        .collect();
    assert_eq!(in_doc, in_code, "tandem.yaml and ROUTES differ");
}

#[test]
fn request_bodies_agree() {
    let doc = document();
    for r in ROUTES {
        let op = &doc["paths"][format!("/{}", r.name).as_str()]
            [r.method.as_str().to_lowercase().as_str()];
        let body = &op["requestBody"];
        match r.body {
            Body::None => assert!(body.is_null(), "{} documents a body it refuses", r.name),
            Body::Resume => {
                assert_eq!(body["required"].as_bool(), Some(false), "{}", r.name);
                let s = &body["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(s.as_str(), Some("#/components/schemas/ResumeConfig"));
            }
            Body::FtVerify => {}
            Body::VmConfig
            | Body::Snapshot
            | Body::Restore
            | Body::SendMigration
            | Body::ReceiveMigration
            | Body::FtReceive
            | Body::FtEnable => {
                let want = match r.body {
                    Body::FtReceive => "FtReceiveConfig",
                    Body::FtEnable => "FtEnableConfig",
                    Body::Snapshot => "SnapshotConfig",
                    Body::Restore => "RestoreConfig",
                    Body::SendMigration => "SendMigrationConfig",
                    Body::ReceiveMigration => "ReceiveMigrationConfig",
                    _ => "VmConfig",
                };
                assert_eq!(body["required"].as_bool(), Some(true), "{}", r.name);
                let s = &body["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    s.as_str(),
                    Some(format!("#/components/schemas/{want}").as_str()),
                    "{}",
                    r.name
                );
            }
        }
        if r.body == Body::FtVerify {
            assert_eq!(body["required"].as_bool(), Some(false), "{}", r.name);
            let s = &body["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(s.as_str(), Some("#/components/schemas/FtVerifyConfig"));
        }
        let codes: Vec<&str> = op["responses"]
            .as_mapping()
            .expect("responses")
            .keys()
            .filter_map(Value::as_str)
            .collect();
        // GETs answer with a body (200), PUTs with none (204), but for ft.verify, whose answer
        // is the pass's report; all document their errors.
        let ok = if r.method == Method::Get || r.body == Body::FtVerify {
            "200"
        } else {
            "204"
        };
        assert!(codes.contains(&ok), "{}: no {ok}", r.name);
        assert!(codes.contains(&"default"), "{}: no default error", r.name);
    }
}

/// Every field of a fully filled config, as serde writes it, is in the schema, and no more.
#[test]
fn config_schema_matches_serde() {
    let doc = document();
    let full = VmConfig {
        cpus: CpusConfig { boot_vcpus: 2 },
        memory: MemoryConfig { size: 1 << 30 },
        payload: PayloadConfig {
            kernel: Some("/k".into()),
            initramfs: Some("/i".into()),
            cmdline: Some("c".into()),
        },
        serial: SerialConfig {
            mode: SerialMode::File,
            file: Some("/f".into()),
        },
        disks: vec![DiskConfig {
            id: "d0".into(),
            path: "/d".into(),
            readonly: true,
        }],
        net: vec![NetConfig {
            id: "n0".into(),
            tap: "tap0".into(),
            mac: Some("52:54:00:00:00:01".into()),
        }],
    };
    let json = serde_json::to_value(&full).expect("serialize");
    check_object(&doc, schema(&doc, "VmConfig"), &json, "VmConfig");
    let modes: Vec<&str> = schema(&doc, "SerialConfig")["properties"]["mode"]["enum"]
        .as_sequence()
        .expect("mode enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for m in [
        SerialMode::Off,
        SerialMode::Null,
        SerialMode::Tty,
        SerialMode::File,
    ] {
        let name = serde_json::to_value(m).expect("serialize mode");
        assert!(modes.contains(&name.as_str().unwrap_or_default()), "{name}");
    }
    assert_eq!(modes.len(), 4);
}

/// The snapshot and restore bodies, fully filled, match their schemas.
#[test]
fn snapshot_schemas_match_serde() {
    use crate::api::types::{HostOverrides, RestoreDisk, RestoreNet, RestoreRequest};
    use crate::api::{RestoreConfig, SnapshotConfig};
    let doc = document();
    let snap = SnapshotConfig {
        destination_url: "file:///s".into(),
    };
    let json = serde_json::to_value(&snap).expect("serialize");
    check_object(
        &doc,
        schema(&doc, "SnapshotConfig"),
        &json,
        "SnapshotConfig",
    );
    let restore = RestoreConfig {
        request: RestoreRequest {
            source_url: "file:///s".into(),
            resume: true,
        },
        host: HostOverrides {
            net: vec![RestoreNet {
                id: "n0".into(),
                tap: "tap0".into(),
            }],
            disks: vec![RestoreDisk {
                id: "d0".into(),
                path: "/d".into(),
            }],
            serial: Some(SerialConfig {
                mode: SerialMode::File,
                file: Some("/f".into()),
            }),
        },
    };
    let json = serde_json::to_value(&restore).expect("serialize");
    check_object(&doc, schema(&doc, "RestoreConfig"), &json, "RestoreConfig");
}

/// The migration bodies, fully filled, match their schemas.
#[test]
fn migration_schemas_match_serde() {
    use crate::api::types::{FtKeyConfig, RestoreDisk, RestoreNet};
    use crate::api::{ReceiveMigrationConfig, SendMigrationConfig};
    let doc = document();
    let send = SendMigrationConfig {
        destination_url: "tcp:10.0.0.2:7500".into(),
        downtime_ms: Some(300),
        arbiter: Some(ft::arbiter::ArbiterConfig::Path("/a".into())),
        key: Some(FtKeyConfig { path: "/k".into() }),
    };
    let json = serde_json::to_value(&send).expect("serialize");
    let name = "SendMigrationConfig";
    check_object(&doc, schema(&doc, name), &json, name);
    let receive = ReceiveMigrationConfig {
        request: crate::api::types::ReceiveMigrationRequest {
            receiver_url: "tcp:0.0.0.0:7500".into(),
            arbiter: Some(ft::arbiter::ArbiterConfig::Path("/a".into())),
            key: Some(FtKeyConfig { path: "/k".into() }),
            insecure: true,
        },
        host: crate::api::types::HostOverrides {
            net: vec![RestoreNet {
                id: "n0".into(),
                tap: "tap0".into(),
            }],
            disks: vec![RestoreDisk {
                id: "d0".into(),
                path: "/d".into(),
            }],
            serial: Some(SerialConfig {
                mode: SerialMode::File,
                file: Some("/f".into()),
            }),
        },
    };
    let json = serde_json::to_value(&receive).expect("serialize");
    let name = "ReceiveMigrationConfig";
    check_object(&doc, schema(&doc, name), &json, name);
}

/// The FT bodies, fully filled, match their schemas.
#[test]
fn ft_schemas_match_serde() {
    use crate::api::types::{
        ArbiterConfig, FtDiskMode, FtEnableConfig, FtKeyConfig, FtReceiveConfig, FtReceiveRequest,
        HostOverrides, RestoreDisk, RestoreNet,
    };
    // Every field of the etcd form, so that each must be in the schema.
    let etcd = ArbiterConfig::Etcd(Box::new(ft::arbiter::EtcdConfig {
        endpoints: vec!["https://10.0.0.9:2379".into()],
        key: "/tandem/pairs/a".into(),
        ca_file: Some("/ca.pem".into()),
        cert_file: Some("/c.pem".into()),
        key_file: Some("/k.pem".into()),
        user: Some("tandem".into()),
        password_file: Some("/pw".into()),
    }));
    let doc = document();
    let receive = FtReceiveConfig {
        request: FtReceiveRequest {
            listen: "tcp:0.0.0.0:7000".into(),
            arbiter: ArbiterConfig::Path("/a".into()),
            disk_mode: Some(FtDiskMode::Replicated),
            failure_timeout_ms: Some(1000),
            key: Some(FtKeyConfig { path: "/k".into() }),
            insecure: true,
            heartbeat_listen: Some("udp:0.0.0.0:7700".into()),
            peer_heartbeat: Some("udp:10.0.0.1:7700".into()),
        },
        host: HostOverrides {
            disks: vec![RestoreDisk {
                id: "d0".into(),
                path: "/d".into(),
            }],
            net: vec![RestoreNet {
                id: "n0".into(),
                tap: "tap0".into(),
            }],
            serial: Some(SerialConfig {
                mode: SerialMode::File,
                file: Some("/f".into()),
            }),
        },
    };
    let json = serde_json::to_value(&receive).expect("serialize");
    check_object(
        &doc,
        schema(&doc, "FtReceiveConfig"),
        &json,
        "FtReceiveConfig",
    );
    let enable = FtEnableConfig {
        peer: "tcp:10.0.0.2:7000".into(),
        disk_mode: FtDiskMode::Shared,
        arbiter: etcd,
        checkpoint_interval_ms: Some(25),
        heartbeat_interval_ms: Some(100),
        max_backlog_bytes: Some(64 << 20),
        target_pause_ms: Some(4),
        failure_timeout_ms: Some(1000),
        key: Some(FtKeyConfig { path: "/k".into() }),
        heartbeat_listen: Some("udp:0.0.0.0:7700".into()),
        peer_heartbeat: Some("udp:10.0.0.2:7700".into()),
        scrub_period_s: Some(60),
    };
    let json = serde_json::to_value(&enable).expect("serialize");
    check_object(
        &doc,
        schema(&doc, "FtEnableConfig"),
        &json,
        "FtEnableConfig",
    );
    let verify = crate::api::types::FtVerifyConfig {
        timeout_ms: Some(5000),
    };
    let json = serde_json::to_value(&verify).expect("serialize");
    check_object(
        &doc,
        schema(&doc, "FtVerifyConfig"),
        &json,
        "FtVerifyConfig",
    );
    let report = ft::scrub::VerifyReport {
        pass: 1,
        clean: false,
        healed: true,
        first_epoch: Some(3),
        last_epoch: Some(5),
        regions: 10,
        bytes: 1 << 20,
        memory_bytes: 1 << 20,
        disk_bytes: 0,
        mismatches: vec![ft::scrub::Mismatch {
            region: "device state".into(),
            kind: "device",
            epoch: 4,
            healed: Some(true),
            at_unix_ms: 1,
        }],
        errors: vec!["x".into()],
        duration_ms: 7,
    };
    let json = serde_json::to_value(&report).expect("serialize");
    check_object(&doc, schema(&doc, "VerifyReport"), &json, "VerifyReport");
    let status = serde_json::to_value(ft::status::StatusHandle::new().snapshot()).expect("status");
    let props = resolve(&doc, schema(&doc, "FtStatus"))["properties"]
        .as_mapping()
        .expect("FtStatus properties");
    let in_schema: BTreeSet<&str> = props.keys().filter_map(Value::as_str).collect();
    let in_serde: BTreeSet<&str> = status
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        in_schema, in_serde,
        "FtStatus: schema and serde fields differ"
    );
}

fn check_object(doc: &Value, schema: &Value, json: &serde_json::Value, at: &str) {
    let mut schema = resolve(doc, schema);
    // A oneOf of closed objects: the alternative whose fields the JSON has.
    if let Some(alts) = schema["oneOf"].as_sequence() {
        let obj = json.as_object().expect("object");
        let fits: Vec<&Value> = alts
            .iter()
            .map(|a| resolve(doc, a))
            .filter(|a| {
                a["properties"]
                    .as_mapping()
                    .is_some_and(|p| obj.keys().all(|k| p.contains_key(k.as_str())))
            })
            .collect();
        assert_eq!(fits.len(), 1, "{at}: {json} fits {} of oneOf", fits.len());
        schema = fits[0];
    }
    assert_eq!(
        schema["additionalProperties"].as_bool(),
        Some(false),
        "{at}: must be closed"
    );
    let props = schema["properties"].as_mapping().expect("properties");
    let in_schema: BTreeSet<&str> = props.keys().filter_map(Value::as_str).collect();
    let obj = json.as_object().expect("object");
    let in_serde: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(in_schema, in_serde, "{at}: schema and serde fields differ");
    for (k, v) in obj {
        let prop = &schema["properties"][k.as_str()];
        if v.is_object() {
            check_object(doc, prop, v, &format!("{at}.{k}"));
        }
        if let Some(items) = v.as_array() {
            let item_schema = &resolve(doc, prop)["items"];
            for (i, item) in items.iter().enumerate().filter(|(_, i)| i.is_object()) {
                check_object(doc, item_schema, item, &format!("{at}.{k}[{i}]"));
            }
        }
    }
}
