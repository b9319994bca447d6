//! KVM's dirty log with manual protection, on a real VM running the built-in guest's `dirty`
//! workload: pages kept writable are reported again without being written, and pages protected
//! again are reported only once written again. FT's capture (`ft::checkpoint::hot_pages`) relies
//! on both: a kept page must never be missed, and a protected one must fault again.

mod common;

use std::time::Duration;

#[test]
fn kept_pages_are_reported_again_and_protected_pages_only_once_written() {
    tandem_require::require!(kvm);
    // 1 MiB rewritten as fast as the guest can: every page is written every few µs.
    let vm = common::running_builtin("workload=dirty:1:0");
    std::thread::sleep(Duration::from_millis(500));
    vm.start_dirty_log().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    vm.pause().unwrap();
    let before = vm.dirty_pages().unwrap();
    vm.resume();
    std::thread::sleep(Duration::from_millis(50));

    vm.pause().unwrap();
    let written = vm.dirty_pages_keeping(|d| Some(d.clone())).unwrap();
    assert!(
        written.count() >= 256,
        "the guest rewrites 256 pages: {}",
        written.count()
    );
    // Nothing ran since: what was kept is reported again, and this time protected.
    let again = vm.dirty_pages_keeping(|_| None).unwrap();
    if vm.keeps_dirty_pages() {
        assert_eq!(again, written, "a kept page must be reported again");
    } else {
        eprintln!("NOTE: this KVM has no manual dirty-log protection; every page is protected");
        assert_eq!(again.count(), 0);
    }
    assert_eq!(
        vm.dirty_pages().unwrap().count(),
        0,
        "everything was protected"
    );
    // The guest writes its working set again: the protected pages fault and are reported.
    vm.resume();
    std::thread::sleep(Duration::from_millis(50));
    vm.pause().unwrap();
    let rewritten = vm.dirty_pages().unwrap();
    // The working set: pages written in both windows and kept (the console's pages, written
    // once a second, may be missing from the third).
    let working_set: Vec<_> = written
        .pages()
        .filter(|p| before.pages().any(|q| q == *p) && again.pages().any(|q| q == *p))
        .collect();
    assert!(!vm.keeps_dirty_pages() || working_set.len() >= 256);
    assert!(
        working_set
            .iter()
            .all(|p| rewritten.pages().any(|q| q == *p)),
        "a page protected again was written without being reported"
    );
    vm.resume();
}
