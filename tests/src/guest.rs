//! What the built-in guest prints, parsed.

/// One `tandem-guest: compute <N> iter/s cpu=<i>` line: (cpu, iterations per second).
pub fn parse_compute(line: &str) -> Option<(u32, u64)> {
    let rest = line.split("tandem-guest: compute ").nth(1)?;
    let mut it = rest.split_whitespace();
    let n = it.next()?.parse().ok()?;
    if it.next()? != "iter/s" {
        return None;
    }
    let cpu = it.next()?.strip_prefix("cpu=")?.parse().ok()?;
    Some((cpu, n))
}

/// All compute samples in a console text.
pub fn compute_samples(text: &str) -> Vec<(u32, u64)> {
    text.lines().filter_map(parse_compute).collect()
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
}
