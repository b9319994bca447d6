//! Serde for KVM's `#[repr(C)]` plain-data structs as their exact bytes: a stored blob whose size
//! differs from this build's struct (another KVM ABI, a corrupt file) is refused, never padded.
//! Use as `#[serde(with = "raw")]`.

use serde::de::{Error, Visitor};
use serde::{Deserializer, Serializer};
use std::marker::PhantomData;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Writes `v` as a byte string.
pub fn serialize<T: IntoBytes + Immutable, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v.as_bytes())
}

/// Reads a byte string of exactly `size_of::<T>()` bytes.
pub fn deserialize<'de, T: FromBytes, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_bytes(RawVisitor(PhantomData))
}

struct RawVisitor<T>(PhantomData<T>);

impl<T: FromBytes> Visitor<'_> for RawVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} bytes of {}",
            size_of::<T>(),
            std::any::type_name::<T>()
        )
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<T, E> {
        T::read_from_bytes(v).map_err(|_| E::invalid_length(v.len(), &self))
    }
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_regs;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct W(#[serde(with = "super")] kvm_regs);

    #[test]
    fn round_trips_and_refuses_other_sizes() {
        let r = kvm_regs {
            rip: 0x1234,
            rflags: 2,
            ..Default::default()
        };
        let bytes = postcard::to_stdvec(&W(r)).unwrap();
        assert_eq!(postcard::from_bytes::<W>(&bytes).unwrap(), W(r));
        // A blob one byte short (length prefix and data) is an error, not a padded struct.
        let short = postcard::to_stdvec(&serde_bytes_like(&bytes[2..bytes.len() - 1])).unwrap();
        assert!(postcard::from_bytes::<W>(&short).is_err());
    }

    fn serde_bytes_like(b: &[u8]) -> Bytes<'_> {
        Bytes(b)
    }

    struct Bytes<'a>(&'a [u8]);
    impl Serialize for Bytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
}
