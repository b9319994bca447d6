//! The rule every guard follows, with a real report file: a met requirement runs the test, a
//! missing one skips it (reported), a missing declared one fails it (reported too).

use tandem_require::decide;

fn report_file(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("tandem-require-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn met_runs_and_reports_nothing() {
    let r = report_file("met");
    assert_eq!(decide("t::a", "kvm", Ok(()), true, Some(&r)), Ok(true));
    assert_eq!(decide("t::a", "kvm", Ok(()), false, Some(&r)), Ok(true));
    assert!(!r.exists());
}

#[test]
fn missing_skips_and_is_reported() {
    let r = report_file("skip");
    let run = decide("t::a", "etcd", Err("no etcd".into()), false, Some(&r));
    assert_eq!(run, Ok(false));
    let run = decide("t::b", "kvm", Err("EACCES".into()), false, Some(&r));
    assert_eq!(run, Ok(false));
    let text = std::fs::read_to_string(&r).unwrap();
    assert_eq!(
        text,
        "SKIPPED etcd: t::a: no etcd\nSKIPPED kvm: t::b: EACCES\n"
    );
    let _ = std::fs::remove_file(&r);
}

#[test]
fn missing_and_declared_fails_and_is_reported() {
    let r = report_file("declared");
    let e = decide("t::a", "kvm", Err("EACCES".into()), true, Some(&r)).unwrap_err();
    assert!(
        e.contains("kvm is required here") && e.contains("EACCES"),
        "{e}"
    );
    let text = std::fs::read_to_string(&r).unwrap();
    assert_eq!(text, "REQUIRED-BUT-MISSING kvm: t::a: EACCES\n");
    let _ = std::fs::remove_file(&r);
}

#[test]
fn without_a_report_file_a_skip_is_still_a_skip() {
    assert_eq!(decide("t", "tap", Err("no".into()), false, None), Ok(false));
}
