//! The skip report: one line per skipped test (and per declared requirement that was missing),
//! appended to the file `TANDEM_SKIP_REPORT` names, so that a suite run can say what it did not
//! run. Lines are written whole with one `write` on an `O_APPEND` file: tests in parallel
//! processes do not interleave.

use std::io::Write;

/// What a report line says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The requirement was missing and not declared: the test returned without running.
    Skipped,
    /// The requirement was missing but declared in `TANDEM_REQUIRE`: the test failed.
    RequiredMissing,
}

impl Kind {
    /// The line's first word (`.ci/run` counts lines by it).
    pub fn word(self) -> &'static str {
        match self {
            Kind::Skipped => "SKIPPED",
            Kind::RequiredMissing => "REQUIRED-BUT-MISSING",
        }
    }
}

/// One report line (no newline): `<KIND> <requirement>: <test>: <why>`.
pub fn line(kind: Kind, test: &str, requirement: &str, why: &str) -> String {
    // One line per entry whatever the probe said.
    let why = why.replace('\n', " | ");
    format!("{} {requirement}: {test}: {why}", kind.word())
}

/// Appends one line to the report file `path` (`TANDEM_SKIP_REPORT`), if there is one; a report
/// that cannot be written is said on stderr (the test's own outcome does not change).
pub fn append(
    path: Option<&std::path::Path>,
    kind: Kind,
    test: &str,
    requirement: &str,
    why: &str,
) {
    let Some(path) = path else {
        return;
    };
    let mut text = line(kind, test, requirement, why);
    text.push('\n');
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        let _ = writeln!(
            std::io::stderr(),
            "cannot append to the skip report {}: {e}",
            path.display()
        );
    }
}

/// The loud notice on stderr (straight to fd 2: the test harness captures `eprintln!`).
pub fn loud(test: &str, requirement: &str, why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {test}: needs {requirement}: {why} ***\n"
    );
}

/// The calling test, as `<test binary>::<test path>`: libtest runs each test on a thread named
/// after it; elsewhere (a benchmark binary, a helper thread) the binary's name alone.
pub fn current_test() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| strip_hash(&s).to_string())
        .unwrap_or_else(|| "?".into());
    match std::thread::current().name() {
        Some(name) if name != "main" => format!("{binary}::{name}"),
        _ => binary,
    }
}

/// `ft_chaos-1a2b3c4d5e6f7a8b` → `ft_chaos` (cargo's hash suffix on test binaries).
fn strip_hash(stem: &str) -> &str {
    match stem.rsplit_once('-') {
        Some((base, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            base
        }
        _ => stem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_line_and_say_what_happened() {
        assert_eq!(
            line(Kind::Skipped, "t::a", "kvm", "no\nkvm"),
            "SKIPPED kvm: t::a: no | kvm"
        );
        assert!(line(Kind::RequiredMissing, "t", "netns", "x").starts_with("REQUIRED-BUT-MISSING"));
    }

    #[test]
    fn cargo_hashes_are_stripped() {
        assert_eq!(strip_hash("ft_chaos-1a2b3c4d5e6f7a8b"), "ft_chaos");
        assert_eq!(strip_hash("tandem-bench"), "tandem-bench");
        assert_eq!(strip_hash("a-b-0123456789abcdef"), "a-b");
    }

    #[test]
    fn the_test_name_comes_from_the_harness_thread() {
        let t = current_test();
        assert!(
            t.ends_with("::report::tests::the_test_name_comes_from_the_harness_thread"),
            "{t}"
        );
    }
}
