//! Serde for the XSAVE area (`Vec<u32>`) as its little-endian bytes: one length and a copy,
//! where a sequence of u32s costs a varint and a serializer call per word (about 20 µs per
//! vCPU in every FT checkpoint's pause on our hosts). Use as `#[serde(with = "words")]`.

use serde::de::{Error, Visitor};
use serde::{Deserializer, Serializer};

/// Writes `v` as a byte string of `4 * v.len()` bytes.
pub fn serialize<S: Serializer>(v: &[u32], s: S) -> Result<S::Ok, S::Error> {
    let bytes: Vec<u8> = v.iter().flat_map(|w| w.to_le_bytes()).collect();
    s.serialize_bytes(&bytes)
}

/// Reads a byte string whose length is a multiple of 4.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    d.deserialize_bytes(WordsVisitor)
}

struct WordsVisitor;

impl Visitor<'_> for WordsVisitor {
    type Value = Vec<u32>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a byte string of whole little-endian u32 words")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u32>, E> {
        if !v.len().is_multiple_of(4) {
            return Err(E::invalid_length(v.len(), &self));
        }
        Ok(v.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct W(#[serde(with = "super")] Vec<u32>);

    #[test]
    fn round_trips_and_refuses_a_partial_word() {
        let w = W(vec![0, 1, 0xdead_beef, u32::MAX]);
        let bytes = postcard::to_stdvec(&w).unwrap();
        assert_eq!(bytes.len(), 1 + 16, "a length and the bytes");
        assert_eq!(postcard::from_bytes::<W>(&bytes).unwrap(), w);
        let odd = postcard::to_stdvec(&Bytes(&[1, 2, 3, 4, 5])).unwrap();
        assert!(postcard::from_bytes::<W>(&odd).is_err());
    }

    /// A byte string as postcard writes one (a length, then the bytes).
    struct Bytes<'a>(&'a [u8]);
    impl Serialize for Bytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
}
