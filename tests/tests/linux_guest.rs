//! Boots a stock Debian kernel with a busybox initramfs on 2 vCPUs and waits for its
//! `TANDEM-LINUX-READY cpus=2` line and its ACPI power-off.
//!
//! Needs hardware virtualization (a stock kernel's ring-0 code is far too slow under KVM-on-PVM,
//! see DESIGN.md), network access to Debian's mirror for the first run, and the `tandem` binary.
//! Marked ignored: on our PVM CI hosts (no vmx/svm) it can never run, and nextest then counts it
//! as skipped instead of passed. `.ci/run` runs it (`--run-ignored all`, `hwvirt` declared in
//! `TANDEM_REQUIRE`) where `/proc/cpuinfo` has vmx or svm; run it by hand with
//! `cargo nextest run -p tandem-tests --test linux_guest --run-ignored only`.
//!
//! The kernel and initramfs are cached in `$TANDEM_LINUX_CACHE`, else
//! `$TMPDIR/tandem-linux-cache`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the guest gets from start to its marker line.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `tandem` gets to exit after the guest powered off.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
const MARKER: &str = "TANDEM-LINUX-READY cpus=";

/// Kills the VMM if the test fails half-way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fetch_guest() -> (PathBuf, PathBuf) {
    let cache = std::env::var_os("TANDEM_LINUX_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("tandem-linux-cache"));
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/linux/fetch-debian-kernel.sh");
    let status = Command::new("sh")
        .arg(&script)
        .arg(&cache)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "{} failed: {status}", script.display());
    (cache.join("vmlinuz"), cache.join("initramfs.cpio.gz"))
}

#[test]
#[ignore = "needs hardware virtualization (vmx/svm); .ci/run runs it where /proc/cpuinfo has them"]
fn stock_linux_boots_on_two_vcpus_and_powers_off() {
    tandem_tests::require!(hwvirt);
    let tandem = tandem_tests::tandem_bin();
    let (kernel, initramfs) = fetch_guest();

    let dir = std::env::temp_dir().join(format!("tandem-linux-guest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch folder");
    let serial = dir.join("serial.log");
    let log = std::fs::File::create(dir.join("tandem.log")).expect("create log");

    let child = Command::new(&tandem)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initramfs")
        .arg(&initramfs)
        .args(["--cmdline", "console=ttyS0 reboot=acpi panic=-1 quiet"])
        .args(["--cpus", "2", "--memory", "512M"])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", tandem.display()));
    let mut vmm = KillOnDrop(child);
    let tandem_log = || std::fs::read_to_string(dir.join("tandem.log")).unwrap_or_default();

    // Wait for the marker on the serial console.
    let start = Instant::now();
    let line = loop {
        let out = std::fs::read_to_string(&serial).unwrap_or_default();
        if let Some(l) = out.lines().find(|l| l.contains(MARKER)) {
            break l.to_string();
        }
        if let Ok(Some(status)) = vmm.0.try_wait() {
            panic!(
                "tandem exited ({status}) before the guest was ready\nserial:\n{out}\ntandem:\n{}",
                tandem_log()
            );
        }
        if start.elapsed() > BOOT_TIMEOUT {
            panic!(
                "no `{MARKER}` within {BOOT_TIMEOUT:?}\nserial:\n{out}\ntandem:\n{}",
                tandem_log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let cpus = line.split(MARKER).nth(1).map(str::trim);
    assert_eq!(cpus, Some("2"), "guest saw the wrong CPU count: {line}");

    // The guest's `poweroff -f` goes through ACPI S5; the VMM must then exit cleanly.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = vmm.0.try_wait().expect("wait for tandem") {
            break s;
        }
        if start.elapsed() > EXIT_TIMEOUT {
            let mut out = String::new();
            let _ = std::fs::File::open(&serial).and_then(|mut f| f.read_to_string(&mut out));
            panic!("tandem still running {EXIT_TIMEOUT:?} after the guest powered off\nserial:\n{out}\ntandem:\n{}", tandem_log());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "tandem exited with {status}\n{}",
        tandem_log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
