//! What Tandem's unit tests, property tests, soak tests and the stable stand-ins for its fuzz
//! targets share, so that each does not carry its own copy: one seeded RNG ([`Rng`], [`seed`])
//! and the bounded mutation loop ([`mutation_loop`]) that every decoder must survive. A test
//! dependency only; nothing here is fit for anything but tests (the RNG is not cryptographic).

/// xorshift64*: small, fast, and the same sequence for the same seed everywhere, so a failure
/// reproduces from the seed a test prints.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (0, which xorshift cannot leave, is replaced by a fixed constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform enough in `0..n` for 64-bit ranges (0 when `n` is 0).
    pub fn below_u64(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform enough in `0..=max`.
    pub fn upto(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next_u64() % n,
            None => self.next_u64(),
        }
    }

    /// One random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }
}

/// The seed in environment variable `var` (decimal or `0x` hex), else one from the clock; the
/// caller prints it, so that the run can be replayed with the variable set. A value that does
/// not parse fails the test: a replay that silently ran another seed would prove nothing.
pub fn seed(var: &str) -> u64 {
    let given = std::env::var(var).ok().map(|s| {
        let s = s.trim();
        let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        v.unwrap_or_else(|e| panic!("{var}={s:?} is not a seed (decimal or 0x-hex): {e}"))
    });
    given.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        // Mixed, so that runs started in the same second differ in every bit.
        Rng::new(now ^ u64::from(std::process::id())).next_u64()
    })
}

/// Which edits [`mutation_loop`] makes, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditKind {
    /// One bit flipped somewhere.
    FlipBit,
    /// Cut short somewhere (possibly to nothing).
    Truncate,
    /// A few bytes (1–20) overwritten with random ones.
    Overwrite,
    /// Random bytes of random length (up to 600), not derived from the valid input.
    Garbage,
}

/// Every kind, in the order [`mutation_loop`] cycles through them by default.
pub const ALL_EDITS: [EditKind; 4] = [
    EditKind::FlipBit,
    EditKind::Truncate,
    EditKind::Overwrite,
    EditKind::Garbage,
];

/// What one iteration did to the valid input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// This bit (byte * 8 + bit) was flipped.
    FlipBit(usize),
    /// Cut to this many bytes.
    Truncate(usize),
    /// This many bytes were overwritten.
    Overwrite(usize),
    /// Replaced by this many random bytes.
    Garbage(usize),
}

/// The bounded mutation loop: `iterations` edits of `clean` (cycling through `kinds`), each
/// handed to `check` with its iteration number, what was done and the edited bytes, plus the
/// generator for any further choice. `seed` makes it deterministic: a failing iteration says
/// which it was, and the same seed finds it again. `clean` must not be empty.
pub fn mutation_loop(
    clean: &[u8],
    seed: u64,
    iterations: usize,
    kinds: &[EditKind],
    mut check: impl FnMut(usize, Edit, &[u8], &mut Rng),
) {
    assert!(!clean.is_empty() && !kinds.is_empty(), "nothing to mutate");
    let mut rng = Rng::new(seed);
    for iter in 0..iterations {
        let mut b = clean.to_vec();
        let edit = match kinds[iter % kinds.len()] {
            EditKind::FlipBit => {
                let bit = rng.below(b.len() * 8);
                b[bit / 8] ^= 1 << (bit % 8);
                Edit::FlipBit(bit)
            }
            EditKind::Truncate => {
                let cut = rng.below(b.len());
                b.truncate(cut);
                Edit::Truncate(cut)
            }
            EditKind::Overwrite => {
                let n = 1 + rng.below(20);
                for _ in 0..n {
                    let at = rng.below(b.len());
                    b[at] = rng.byte();
                }
                Edit::Overwrite(n)
            }
            EditKind::Garbage => {
                let len = rng.below(600);
                b = rng.bytes(len);
                Edit::Garbage(len)
            }
        };
        check(iter, edit, &b, &mut rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence_and_zero_is_usable() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        assert!(xs
            .iter()
            .zip((0..100).map(|_| b.next_u64()))
            .all(|(x, y)| *x == y));
        let mut z = Rng::new(0);
        assert_ne!(z.next_u64(), 0);
        assert!((0..1000).all(|_| z.below(7) < 7 && z.upto(3) <= 3));
        assert_eq!(z.below(0), 0);
        assert_eq!(z.bytes(33).len(), 33);
    }

    #[test]
    fn every_edit_kind_is_made_and_flips_change_exactly_one_bit() {
        let clean = vec![0u8; 64];
        let mut seen = Vec::new();
        mutation_loop(&clean, 1, 400, &ALL_EDITS, |_, edit, b, _| {
            match edit {
                Edit::FlipBit(bit) => {
                    let ones: u32 = b.iter().map(|x| x.count_ones()).sum();
                    assert_eq!(ones, 1);
                    assert_eq!(b[bit / 8], 1 << (bit % 8));
                }
                Edit::Truncate(n) => assert_eq!(b.len(), n),
                Edit::Overwrite(_) => assert_eq!(b.len(), clean.len()),
                Edit::Garbage(n) => assert_eq!(b.len(), n),
            }
            seen.push(std::mem::discriminant(&edit));
        });
        seen.sort_by_key(|d| format!("{d:?}"));
        seen.dedup();
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn seeds_parse_from_the_environment_in_both_forms() {
        std::env::set_var("TANDEM_TESTKIT_SEED_A", "0x1f");
        std::env::set_var("TANDEM_TESTKIT_SEED_B", "31");
        assert_eq!(seed("TANDEM_TESTKIT_SEED_A"), 31);
        assert_eq!(seed("TANDEM_TESTKIT_SEED_B"), 31);
        assert_ne!(
            seed("TANDEM_TESTKIT_SEED_UNSET"),
            seed("TANDEM_TESTKIT_SEED_UNSET")
        );
    }
}
