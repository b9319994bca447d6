//! Where the arbiter keeps its records under the pair's key `K`:
//!
//! * `K/gen/<G>`: the claim that won generation `G` (JSON, as the file arbiter writes it), `G` in
//!   20 decimal digits so that key order is generation order (a `u64` has at most 20);
//! * `K/identity`: the store's [`Identity`](crate::arbiter::Identity).
//!
//! Generation keys live in `[K/gen/, K/gen/:)` (':' follows '9'), so a range over them sees no
//! other key of the pair.

/// The key layout of one pair.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `K/`.
    pair: String,
    /// `K/gen/`.
    prefix: String,
}

impl Layout {
    /// The layout under `key` (already checked: non-empty, no trailing '/').
    pub fn new(key: &str) -> Layout {
        Layout {
            pair: format!("{key}/"),
            prefix: format!("{key}/gen/"),
        }
    }

    /// The record of `generation`.
    pub fn generation(&self, generation: u64) -> Vec<u8> {
        format!("{}{generation:020}", self.prefix).into_bytes()
    }

    /// Start of the range of every generation record.
    pub fn first(&self) -> Vec<u8> {
        self.prefix.clone().into_bytes()
    }

    /// End (exclusive) of the range of every generation record.
    pub fn end(&self) -> Vec<u8> {
        format!("{}:", self.prefix).into_bytes()
    }

    /// The identity record.
    pub fn identity(&self) -> Vec<u8> {
        format!("{}identity", self.pair).into_bytes()
    }

    /// The generation a key of the generation range names, if it is a canonical record key.
    pub fn parse(&self, key: &[u8]) -> Option<u64> {
        let digits = std::str::from_utf8(key).ok()?.strip_prefix(&self.prefix)?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_generation_order_and_parse_back() {
        let l = Layout::new("/tandem/pairs/a");
        assert_eq!(l.generation(7), b"/tandem/pairs/a/gen/00000000000000000007");
        assert_eq!(l.identity(), b"/tandem/pairs/a/identity");
        let gens = [0, 9, 10, 99, 12345, u64::MAX];
        for w in gens.windows(2) {
            assert!(l.generation(w[0]) < l.generation(w[1]));
        }
        for g in gens {
            let k = l.generation(g);
            assert_eq!(l.parse(&k), Some(g));
            assert!(l.first() <= k && k < l.end());
        }
        assert!(l.identity() < l.first() || l.identity() >= l.end());
        for bad in [
            &b"/tandem/pairs/a/gen/7"[..],
            b"/tandem/pairs/a/gen/0000000000000000000x",
            b"/tandem/pairs/b/gen/00000000000000000007",
            b"/tandem/pairs/a/gen/99999999999999999999",
        ] {
            assert_eq!(l.parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
