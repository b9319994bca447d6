//! `TANDEM_REQUIRE`: the requirements this machine must meet (a missing one fails its tests).

/// Whether `requirement` is declared in `TANDEM_REQUIRE` (by name, or by `all`).
pub fn is_declared(requirement: &str) -> bool {
    std::env::var(super::REQUIRE_ENV).is_ok_and(|v| declares(&v, requirement))
}

/// Whether the comma (or space) separated list `list` declares `requirement`.
pub fn declares(list: &str, requirement: &str) -> bool {
    list.split([',', ' '])
        .map(str::trim)
        .any(|r| r == requirement || r == "all")
}

#[cfg(test)]
mod tests {
    use super::declares;

    #[test]
    fn names_and_all_declare_others_do_not() {
        assert!(declares("kvm,netns", "netns"));
        assert!(declares(" kvm , netns ", "kvm"));
        assert!(declares("kvm netns", "netns"));
        assert!(declares("all", "etcd"));
        assert!(!declares("kvm,netns", "etcd"));
        assert!(!declares("kvmx", "kvm"));
        assert!(!declares("", "kvm"));
    }
}
