//! What the built-in guest prints, parsed.

/// One `tandem-guest: compute <N> iter/s cpu=<i>` line: (cpu, iterations per second).
pub fn parse_compute(line: &str) -> Option<(u32, u64)> {
    parse_rate(line, "tandem-guest: compute ", "iter/s")
}

/// All compute samples in a console text.
pub fn compute_samples(text: &str) -> Vec<(u32, u64)> {
    text.lines().filter_map(parse_compute).collect()
}

/// One `tandem-guest: dirty <N> pages/s cpu=<i>` line: (cpu, pages written per second).
pub fn parse_dirty(line: &str) -> Option<(u32, u64)> {
    parse_rate(line, "tandem-guest: dirty ", "pages/s")
}

/// All dirty-workload samples in a console text.
pub fn dirty_samples(text: &str) -> Vec<(u32, u64)> {
    text.lines().filter_map(parse_dirty).collect()
}

/// `<prefix><N> <unit> cpu=<i>`: (cpu, N).
fn parse_rate(line: &str, prefix: &str, unit: &str) -> Option<(u32, u64)> {
    let rest = line.split(prefix).nth(1)?;
    let mut it = rest.split_whitespace();
    let n = it.next()?.parse().ok()?;
    if it.next()? != unit {
        return None;
    }
    let cpu = it.next()?.strip_prefix("cpu=")?.parse().ok()?;
    Some((cpu, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compute_lines() {
        assert_eq!(
            parse_compute("tandem-guest: compute 12345 iter/s cpu=1"),
            Some((1, 12345))
        );
        assert_eq!(parse_compute("tandem-guest: compute x iter/s cpu=1"), None);
        assert_eq!(parse_compute("tandem-guest: ready"), None);
    }

    #[test]
    fn parses_dirty_lines() {
        assert_eq!(
            parse_dirty("tandem-guest: dirty 20001 pages/s cpu=0"),
            Some((0, 20001))
        );
        assert_eq!(
            parse_dirty("tandem-guest: dirty: 64 MiB asked, clamped to 60 MiB of free RAM"),
            None
        );
        assert_eq!(parse_dirty("tandem-guest: compute 5 iter/s cpu=0"), None);
    }
}
