//! The identity of an arbiter's store: 128 random bits, written into the store by whichever
//! member uses it first and read back by every later user. Two members that read different
//! identities name different storage (an unmounted mount point, another etcd cluster or key), and
//! a pair across them would have two arbiters: each member could win "its" generation.

use super::ArbiterError;

/// Random bytes in an identity.
const BYTES: usize = 16;

/// An arbiter store's identity: 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Identity(String);

impl Identity {
    /// A new random identity.
    pub fn random() -> Result<Identity, ArbiterError> {
        let mut b = [0u8; BYTES];
        getrandom::getrandom(&mut b).map_err(ArbiterError::Random)?;
        Ok(Identity(b.iter().map(|x| format!("{x:02x}")).collect()))
    }

    /// Parses a stored identity (surrounding whitespace allowed); `None` if it is not one.
    pub fn parse(text: &str) -> Option<Identity> {
        let t = text.trim();
        let ok = t.len() == BYTES * 2 && t.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Identity(t.to_owned()))
    }

    /// [`Identity::parse`], or the error that names `place` and what it holds.
    pub(super) fn parse_at(text: &str, place: impl Into<String>) -> Result<Identity, ArbiterError> {
        Identity::parse(text).ok_or_else(|| ArbiterError::BadIdentity {
            place: place.into(),
            found: text.lines().next().unwrap_or("").chars().take(80).collect(),
        })
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_identities_parse_and_differ() {
        let a = Identity::random().unwrap();
        let b = Identity::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(Identity::parse(&format!("{a}\n")), Some(a.clone()));
        assert_eq!(a.as_str().len(), 32);
    }

    #[test]
    fn malformed_identities_are_refused() {
        for bad in ["", "abc", &"g".repeat(32), &"A".repeat(32), &"0".repeat(33)] {
            assert_eq!(Identity::parse(bad), None, "{bad:?}");
        }
        let e = Identity::parse_at("garbage\nmore", "/x/identity").unwrap_err();
        assert!(e.to_string().contains("\"garbage\""), "{e}");
        assert!(e.to_string().contains("/x/identity"), "{e}");
    }
}
