//! XBZRLE-style page deltas for FT checkpoints: the XOR of a page with the copy last sent,
//! zero-run-length encoded, so that a page with one changed word costs a few bytes, not 4 KiB.
//!
//! Encoded form: records of `u16 zero run` (unchanged bytes to skip), `u16 literal length`
//! (at least 1), then that many XOR bytes; the runs of all records add up to at most
//! `PAGE_SIZE`, and bytes after the last record are unchanged. An empty delta is an unchanged
//! page.

use super::pages::PAGE_SIZE;

/// Record header: u16 zero run, u16 literal length.
const RECORD_HEADER: usize = 4;
/// Zero gaps up to this long inside changed bytes are cheaper sent as literals than as a new
/// record.
const MERGE_GAP: usize = RECORD_HEADER;

/// What is wrong with an encoded delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// A record header or its literal bytes run past the delta's end.
    #[error("delta record truncated")]
    Truncated,
    /// A record with no literal bytes (it would only waste the wire).
    #[error("delta record with an empty literal")]
    EmptyLiteral,
    /// The records cover more than one page.
    #[error("delta runs past the page end")]
    PastPageEnd,
}

/// The delta from `old` to `new` into `out` (cleared first); `false`, with `out` unspecified,
/// when it would not be smaller than `limit` bytes.
pub fn encode_delta(
    old: &[u8; PAGE_SIZE],
    new: &[u8; PAGE_SIZE],
    limit: usize,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    let mut pos = 0; // first byte not yet covered by a record
    let mut i = 0;
    while i < PAGE_SIZE {
        // Skip equal bytes word by word where aligned; the common case is a page with few
        // changes, and debug builds (the tests) must not crawl.
        if i % 8 == 0 && i + 8 <= PAGE_SIZE && old[i..i + 8] == new[i..i + 8] {
            i += 8;
            continue;
        }
        if old[i] == new[i] {
            i += 1;
            continue;
        }
        // A literal starts at `i`; extend it over changes and short equal gaps.
        let start = i;
        let mut end = i + 1; // one past the last changed byte
        let mut j = end;
        while j < PAGE_SIZE && j - end <= MERGE_GAP {
            if old[j] != new[j] {
                end = j + 1;
            }
            j += 1;
        }
        let (skip, len) = (start - pos, end - start);
        // Both fit in u16: they are at most PAGE_SIZE (4096).
        out.extend_from_slice(&(skip as u16).to_le_bytes());
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend(
            old[start..end]
                .iter()
                .zip(&new[start..end])
                .map(|(a, b)| a ^ b),
        );
        if out.len() >= limit {
            return false;
        }
        pos = end;
        i = end;
    }
    out.len() < limit
}

/// Checks a delta's structure without applying it.
pub fn check_delta(delta: &[u8]) -> Result<(), DeltaError> {
    walk(delta, |_, _| {})
}

/// Applies `delta` to `page` in place; checked completely before the page is touched, so that a
/// bad delta leaves the page as it was.
pub fn apply_delta(page: &mut [u8; PAGE_SIZE], delta: &[u8]) -> Result<(), DeltaError> {
    check_delta(delta)?;
    walk(delta, |at, lit| {
        for (p, x) in page[at..at + lit.len()].iter_mut().zip(lit) {
            *p ^= x;
        }
    })
}

/// Calls `f(offset, literal)` for each record, bounds-checking every one.
fn walk(delta: &[u8], mut f: impl FnMut(usize, &[u8])) -> Result<(), DeltaError> {
    let (mut rest, mut pos) = (delta, 0usize);
    while !rest.is_empty() {
        let (hdr, tail) = rest
            .split_at_checked(RECORD_HEADER)
            .ok_or(DeltaError::Truncated)?;
        let skip = usize::from(u16::from_le_bytes([hdr[0], hdr[1]]));
        let len = usize::from(u16::from_le_bytes([hdr[2], hdr[3]]));
        if len == 0 {
            return Err(DeltaError::EmptyLiteral);
        }
        let (lit, tail) = tail.split_at_checked(len).ok_or(DeltaError::Truncated)?;
        let at = pos + skip; // at most 2 * 65535 + PAGE_SIZE: no overflow
        if at + len > PAGE_SIZE {
            return Err(DeltaError::PastPageEnd);
        }
        f(at, lit);
        pos = at + len;
        rest = tail;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(old: &[u8; PAGE_SIZE], new: &[u8; PAGE_SIZE]) -> usize {
        let mut d = Vec::new();
        assert!(encode_delta(old, new, PAGE_SIZE, &mut d), "delta too large");
        let mut page = *old;
        apply_delta(&mut page, &d).unwrap();
        assert_eq!(&page[..], &new[..]);
        d.len()
    }

    #[test]
    fn deltas_round_trip() {
        let old = [7u8; PAGE_SIZE];
        assert_eq!(round_trip(&old, &old), 0);
        let mut new = old;
        new[4088..4096].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(round_trip(&old, &new), RECORD_HEADER + 8);
        new[0] = 0;
        new[3] = 9; // gap of two: one record
        new[2000] = 1;
        assert_eq!(round_trip(&old, &new), 3 * RECORD_HEADER + 4 + 1 + 8);
        // Every other byte changed: one long literal.
        let mut alt = old;
        for b in alt.iter_mut().step_by(2) {
            *b = 0;
        }
        let mut d = Vec::new();
        assert!(!encode_delta(&old, &alt, PAGE_SIZE, &mut d));
        assert!(!encode_delta(&old, &new, 10, &mut d));
    }

    #[test]
    fn pseudo_random_pages_round_trip() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut old = [0u8; PAGE_SIZE];
            old.iter_mut().for_each(|b| *b = next() as u8);
            let mut new = old;
            for _ in 0..(next() % 64) {
                new[(next() % PAGE_SIZE as u64) as usize] = next() as u8;
            }
            round_trip(&old, &new);
        }
    }

    #[test]
    fn hostile_deltas_are_rejected_untouched() {
        let base = [3u8; PAGE_SIZE];
        let rec = |skip: u16, len: u16, lit: &[u8]| {
            let mut v = skip.to_le_bytes().to_vec();
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(lit);
            v
        };
        let cases: Vec<(Vec<u8>, DeltaError)> = vec![
            (vec![1, 0, 1], DeltaError::Truncated),
            (rec(0, 4, &[1, 2]), DeltaError::Truncated),
            (rec(5, 0, &[]), DeltaError::EmptyLiteral),
            (rec(4095, 2, &[1, 1]), DeltaError::PastPageEnd),
            (rec(u16::MAX, u16::MAX, &[]), DeltaError::Truncated),
            (
                [rec(4000, 1, &[1]), rec(95, 1, &[1])].concat(),
                DeltaError::PastPageEnd,
            ),
            (
                [rec(0, 1, &[1]), vec![0; 3]].concat(),
                DeltaError::Truncated,
            ),
        ];
        for (d, want) in cases {
            let mut page = base;
            assert_eq!(apply_delta(&mut page, &d), Err(want), "{d:?}");
            assert_eq!(page, base, "a rejected delta changed the page");
        }
        let mut page = base;
        apply_delta(&mut page, &[rec(4000, 1, &[1]), rec(94, 1, &[1])].concat()).unwrap();
        assert_eq!((page[4000], page[4095]), (2, 2));
    }
}
