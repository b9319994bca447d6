//! Tandem's container image (Dockerfile, resources/docker/build.sh) on a real Docker engine: a
//! container given /dev/kvm boots the built-in guest, driven through the image's own scripts and
//! over an API socket in a bind-mounted folder; an FT pair in two containers on a Docker network
//! fails over when the primary's container is killed. The image is built from this build's
//! binaries (build.sh --prebuilt); where no registry answers, build.sh builds its Debian base with
//! debootstrap first (minutes, once per machine).

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tandem_tests::docker::{image, Container, Network};
use tandem_tests::{require_kvm_and_docker, TempDir};

/// Any wait on a container or its guest.
const T: Duration = Duration::from_secs(60);

const SCRIPTS: &str = "/usr/share/tandem/resources/curl";

fn ft_status(c: &Container) -> Value {
    c.get_ok("ft.status")
}

/// Waits until `c` reports `role`/`state`; returns how long that took.
fn wait_ft(c: &Container, role: &str, state: &str) -> Duration {
    let start = Instant::now();
    loop {
        let s = ft_status(c);
        if s["role"] == role && s["state"] == state {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < T,
            "{}: ft.status never {role}/{state}: {s}\nlogs:\n{}",
            c.name,
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_container_with_dev_kvm_boots_the_builtin_guest() {
    require_kvm_and_docker!("a_container_with_dev_kvm_boots_the_builtin_guest");
    // The README's one-liner: a VM from flags, its console on the container's output; the guest
    // powers off and the container exits 0.
    let start = Instant::now();
    let out = std::process::Command::new("docker")
        .args(["run", "--rm", "--init", "--device", "/dev/kvm", &image()])
        .args([
            "--cpus",
            "1",
            "--memory",
            "64M",
            "--cmdline",
            "workload=poweroff",
        ])
        .args(["--serial", "tty"])
        .output()
        .expect("docker run");
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && console.contains("tandem-guest: ready"),
        "docker run ... --serial tty: {}\n{console}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "[container] docker run to power-off: {:.1?}",
        start.elapsed()
    );

    // The image's quickstart.sh (the single-VM tour) on the image's own binaries.
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--init",
            "--device",
            "/dev/kvm",
            "--entrypoint",
        ])
        .args(["/usr/share/tandem/resources/quickstart.sh", &image()])
        .output()
        .expect("docker run quickstart.sh");
    let tour = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && tour.contains("tandem-guest: ready") && tour.ends_with("done\n"),
        "quickstart.sh in the container: {}\n{tour}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // The image's default command: tandem with its API socket in /run/tandem.
    let c = Container::run("guest", &["--device", "/dev/kvm", "--network", "none"], &[]);
    let api = c.wait_api(T);

    // An operator's flow inside the image: its curl script (curl, jq) creates and boots the guest.
    let serial = format!("SERIAL_FILE={}", c.inside("serial.log"));
    let start = Instant::now();
    let out = c.exec(
        &["CMDLINE=workload=idle", "MEMORY_MIB=64", &serial],
        &[&format!("{SCRIPTS}/create-and-boot.sh")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("state: Running"),
        "create-and-boot.sh in the container: {}\n{stdout}{}\nlogs:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    c.serial().wait_for("tandem-guest: ready", T);
    let ready = start.elapsed();

    // The host reaches the same VMM over the bind-mounted socket, and tandem-remote in the image.
    assert_eq!(c.get_ok("vm.info")["state"], "Running");
    let out = c.exec(
        &[],
        &[
            "tandem-remote",
            "--api-socket",
            &c.inside("tandem.sock"),
            "info",
        ],
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tandem-remote info in the container ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(info["state"], "Running", "{info}");

    // vmm.shutdown ends tandem and with it the container, cleanly.
    c.put_ok("vmm.shutdown", None);
    assert_eq!(c.wait_exit(T), 0, "logs:\n{}", c.logs());
    assert_eq!(
        c.seccomp_violations(),
        "",
        "seccomp violations in the container"
    );
    eprintln!("[container] API up after {api:.1?}; create-and-boot.sh to `ready` {ready:.1?}");

    // Without the device the same image cannot boot, and says why.
    let bare = Container::run("nokvm", &["--network", "none"], &[]);
    bare.wait_api(T);
    let cfg = json!({
        "cpus": {"boot_vcpus": 1},
        "memory": {"size": 64 << 20},
        "payload": {"cmdline": "workload=idle"},
    });
    bare.put_ok("vm.create", Some(&cfg));
    let (code, err) = bare.put("vm.boot", None);
    assert!(code >= 400, "vm.boot without /dev/kvm -> {code} {err}");
    assert!(err.to_string().contains("/dev/kvm"), "{err}");
}

#[test]
fn an_ft_pair_in_two_containers_fails_over_when_the_primary_container_is_killed() {
    require_kvm_and_docker!(
        "an_ft_pair_in_two_containers_fails_over_when_the_primary_container_is_killed"
    );
    // Two "hosts" on a Docker network; storage both see (the arbiter, the pair key) is a host
    // folder mounted in both.
    let net = Network::create("ft");
    let shared = TempDir::new("ctr-shared");
    std::fs::create_dir(shared.path("arbiter")).expect("arbiter folder");
    let mut key = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut key)
        .expect("random key");
    std::fs::write(shared.path("ft.key"), key).expect("key file");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            shared.path("ft.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod key");
    }
    let mount = format!("{}:/shared", shared.0.display());
    let args = ["--device", "/dev/kvm", "--network", &net.name, "-v", &mount];
    let p = Container::run("ftp", &args, &[]);
    let b = Container::run("ftb", &args, &[]);
    p.wait_api(T);
    b.wait_api(T);

    // The guest on P dirties a little memory and prints its rate every second.
    let cfg = json!({
        "cpus": {"boot_vcpus": 1},
        "memory": {"size": 64 << 20},
        "payload": {"cmdline": "workload=dirty:1:50"},
        "serial": {"mode": "File", "file": p.inside("serial.log")},
    });
    p.put_ok("vm.create", Some(&cfg));
    p.put_ok("vm.boot", None);
    p.serial().wait_for("tandem-guest: ready", T);

    let common = json!({
        "arbiter": {"path": "/shared/arbiter"},
        "disk_mode": "shared",
        "failure_timeout_ms": 1000,
        "key": {"path": "/shared/ft.key"},
    });
    let mut receive = common.clone();
    receive["listen"] = json!("tcp:0.0.0.0:7600");
    receive["serial"] = json!({"mode": "File", "file": b.inside("serial.log")});
    b.put_ok("ft.receive", Some(&receive));
    let mut enable = common;
    enable["peer"] = json!(format!("tcp:{}:7600", b.ip(&net)));
    p.put_ok("ft.enable", Some(&enable));
    let synced = wait_ft(&p, "primary", "protected");
    wait_ft(&b, "backup", "protected");
    let before = ft_status(&p);
    assert_eq!(before["authenticated"], true, "{before}");
    // The backup's console stays empty until its copy of the guest runs.
    assert_eq!(b.serial().count("tandem-guest: dirty"), 0);

    // The primary's "host" dies: SIGKILL to everything in its container.
    p.kill();
    let took = wait_ft(&b, "primary", "unprotected");
    let after = ft_status(&b);
    assert_eq!(after["failover_count"], 1, "{after}");
    assert!(
        after["generation"].as_u64() > before["generation"].as_u64(),
        "{before} -> {after}"
    );
    assert_eq!(b.get_ok("vm.info")["state"], "Running");
    // The guest goes on in B's container: its console there fills.
    b.serial().wait_count("tandem-guest: dirty", 2, T);
    assert_eq!(p.wait_exit(T), 137, "the primary's container was SIGKILLed");
    for c in [&p, &b] {
        assert_eq!(c.seccomp_violations(), "", "{}: seccomp violations", c.name);
    }
    eprintln!("[container-ft] protected after {synced:.1?}; backup live {took:.1?} after the kill");
}
