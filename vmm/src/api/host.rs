//! This host's resources for a VM that was made elsewhere (a snapshot, a migration's source, an FT
//! primary): one [`HostOverrides`] type, shared by `vm.restore`, `vm.receive-migration` and
//! `ft.receive`.
//!
//! In JSON its fields (`net`, `disks`, `serial`) sit beside the request's own, as they always
//! have. serde's `flatten` would do that but cannot be combined with `deny_unknown_fields`, so
//! [`WithHost`] splits the object itself: the three override keys go to [`HostOverrides`], the
//! rest to the request, and each part still refuses a field it does not know.

use crate::config::SerialConfig;
use serde::de::{DeserializeOwned, Error as _, MapAccess, Visitor};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;

/// A NIC's tap on this host, replacing the one the VM was made with.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreNet {
    /// The NIC's id in the VM's config.
    pub id: String,
    /// The tap device to use here.
    pub tap: String,
}

/// A disk's image on this host, replacing the one the VM was made with.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreDisk {
    /// The disk's id in the VM's config.
    pub id: String,
    /// The image to use here.
    pub path: PathBuf,
}

/// Taps, disk images and console of this host that replace a VM's own, by device id; anything
/// not named keeps the setting the VM arrived with (the snapshot's, the source's, the primary's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostOverrides {
    /// Taps for NICs, by NIC id.
    #[serde(default)]
    pub net: Vec<RestoreNet>,
    /// Image paths for disks, by disk id.
    #[serde(default)]
    pub disks: Vec<RestoreDisk>,
    /// Where this process sends the guest's console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
}

impl HostOverrides {
    /// The JSON keys that belong to the overrides, not to the request beside them.
    pub const FIELDS: [&'static str; 3] = ["net", "disks", "serial"];
}

/// A request body of `T`'s fields and the [`HostOverrides`] fields, in one JSON object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithHost<T> {
    /// What the call asks for.
    pub request: T,
    /// This host's resources for the VM.
    pub host: HostOverrides,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for WithHost<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut fields = d.deserialize_map(StrictObject)?;
        let mut host = Map::new();
        for key in HostOverrides::FIELDS {
            if let Some(v) = fields.remove(key) {
                host.insert(key.to_string(), v);
            }
        }
        let host = HostOverrides::deserialize(Value::Object(host)).map_err(D::Error::custom)?;
        let request = T::deserialize(Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(WithHost { request, host })
    }
}

impl<T: Serialize> Serialize for WithHost<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = match serde_json::to_value(&self.request).map_err(S::Error::custom)? {
            Value::Object(m) => m,
            _ => return Err(S::Error::custom("a request body must be a JSON object")),
        };
        if let Value::Object(host) = serde_json::to_value(&self.host).map_err(S::Error::custom)? {
            out.extend(host);
        }
        Value::Object(out).serialize(s)
    }
}

/// A JSON object read as a map that refuses a repeated key, as a derived struct does.
struct StrictObject;

impl<'de> Visitor<'de> for StrictObject {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some((key, value)) = access.next_entry::<String, Value>()? {
            if out.contains_key(&key) {
                return Err(A::Error::custom(format_args!("duplicate field `{key}`")));
            }
            out.insert(key, value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SerialMode;

    #[derive(Debug, PartialEq, Eq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        url: String,
        #[serde(default)]
        flag: bool,
    }

    fn parse(json: &str) -> Result<WithHost<Req>, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn the_override_fields_sit_beside_the_requests_own() {
        let c = parse(
            r#"{"url":"u","net":[{"id":"n0","tap":"t"}],"flag":true,
                "disks":[{"id":"d0","path":"/d"}],"serial":{"mode":"Null"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.request,
            Req {
                url: "u".into(),
                flag: true
            }
        );
        assert_eq!(c.host.net[0].tap, "t");
        assert_eq!(c.host.disks[0].path, PathBuf::from("/d"));
        assert_eq!(
            c.host.serial.as_ref().map(|s| s.mode),
            Some(SerialMode::Null)
        );
        // Without any: nothing is overridden.
        assert_eq!(
            parse(r#"{"url":"u"}"#).unwrap().host,
            HostOverrides::default()
        );
    }

    #[test]
    fn unknown_repeated_or_misplaced_fields_are_refused() {
        for (bad, why) in [
            (r#"{"url":"u","bogus":1}"#, "unknown field `bogus`"),
            (
                r#"{"url":"u","net":[{"id":"n0","tap":"t","x":1}]}"#,
                "unknown field `x`",
            ),
            (r#"{"url":"u","url":"v"}"#, "duplicate field `url`"),
            (r#"{"url":"u","net":[],"net":[]}"#, "duplicate field `net`"),
            (r#"{"flag":true}"#, "missing field `url`"),
            (r#"{"url":"u","disks":{}}"#, "invalid type"),
            (r#"[1]"#, "invalid type"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn it_serializes_back_to_one_flat_object() {
        let c = WithHost {
            request: Req {
                url: "u".into(),
                flag: false,
            },
            host: HostOverrides {
                net: vec![RestoreNet {
                    id: "n0".into(),
                    tap: "t".into(),
                }],
                disks: vec![],
                serial: Some(SerialConfig {
                    mode: SerialMode::File,
                    file: Some("/f".into()),
                }),
            },
        };
        let v = serde_json::to_value(&c).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["disks", "flag", "net", "serial", "url"]);
        assert_eq!(serde_json::from_value::<WithHost<Req>>(v).unwrap(), c);
    }

    #[test]
    fn fields_names_every_override_key() {
        let all = HostOverrides {
            serial: Some(SerialConfig {
                mode: SerialMode::Null,
                file: None,
            }),
            ..HostOverrides::default()
        };
        let v = serde_json::to_value(all).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = HostOverrides::FIELDS;
        want.sort_unstable();
        assert_eq!(keys, want);
    }
}
