//! The probes: each does what its tests will do, on a small scale, and says why it failed.

use std::process::Command;

/// `/dev/kvm` opens read-write, speaks API version 12 and creates a VM (a node that exists but
/// cannot be opened, or a KVM that refuses VMs, fails here rather than in every test).
pub fn kvm() -> Result<(), String> {
    let kvm =
        kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm read-write: {e}"))?;
    let v = kvm.get_api_version();
    if v != 12 {
        return Err(format!("/dev/kvm speaks KVM API version {v}, not 12"));
    }
    kvm.create_vm()
        .map(drop)
        .map_err(|e| format!("/dev/kvm cannot create a VM: {e}"))
}

/// Builds and removes a network namespace with what `resources/testnet.sh` puts in one: a veth
/// pair, a bridge, a tap (vnet_hdr), and runs a command inside it.
pub fn netns() -> Result<(), String> {
    let ns = format!("tnprobe{}", std::process::id());
    let steps: &[&[&str]] = &[
        &["netns", "add", &ns],
        &[
            "-n", &ns, "link", "add", "pa", "type", "veth", "peer", "name", "pb",
        ],
        &["-n", &ns, "link", "add", "pbr", "type", "bridge"],
        &[
            "-n", &ns, "tuntap", "add", "dev", "ptap", "mode", "tap", "vnet_hdr",
        ],
        &["-n", &ns, "link", "set", "ptap", "master", "pbr", "up"],
        &["netns", "exec", &ns, "ip", "link", "show", "pa"],
    ];
    let r = steps.iter().try_for_each(|args| command("ip", args));
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    r
}

/// Creates and removes a tap in this process's namespace, as `ip tuntap` does.
pub fn tap() -> Result<(), String> {
    let tap = format!("tnpt{}", std::process::id() % 1_000_000);
    command(
        "ip",
        &["tuntap", "add", "dev", &tap, "mode", "tap", "vnet_hdr"],
    )?;
    command("ip", &["link", "del", &tap])
}

/// `gcc --version` runs.
pub fn gcc() -> Result<(), String> {
    command("gcc", &["--version"])
}

/// `curl --version` runs.
pub fn curl() -> Result<(), String> {
    command("curl", &["--version"])
}

/// `jq --version` runs.
pub fn jq() -> Result<(), String> {
    command("jq", &["--version"])
}

/// `etcd --version` and `etcdctl version` run (Debian's etcd-server and etcd-client).
pub fn etcd() -> Result<(), String> {
    command("etcd", &["--version"])?;
    command("etcdctl", &["version"])
}

/// `prometheus --version` and `promtool --version` run.
pub fn prometheus() -> Result<(), String> {
    command("prometheus", &["--version"])?;
    command("promtool", &["--version"])
}

/// A Docker engine answers (`docker version` reaches the server; as root,
/// resources/docker/engine.sh installs and starts one).
pub fn docker() -> Result<(), String> {
    command("docker", &["version", "-f", "{{.Server.Version}}"])
}

/// `tcpdump --version` runs.
pub fn tcpdump() -> Result<(), String> {
    command("tcpdump", &["--version"])
}

/// vmx or svm in `/proc/cpuinfo`, and [`kvm`].
pub fn hwvirt() -> Result<(), String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
        .map_err(|e| format!("cannot read /proc/cpuinfo: {e}"))?;
    let has = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !has {
        return Err("no hardware virtualization (vmx/svm in /proc/cpuinfo)".into());
    }
    kvm()
}

/// `program args...` runs and exits 0; else why not (with its stderr).
pub fn command(program: &str, args: &[&str]) -> Result<(), String> {
    let shown = || format!("`{program} {}`", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", shown()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}: {}: {}",
        shown(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_says_which() {
        let e = command("tandem-no-such-program", &["--version"]).unwrap_err();
        assert!(e.contains("tandem-no-such-program --version"), "{e}");
        let e = command("false", &[]).unwrap_err();
        assert!(
            e.contains("`false `") && e.contains("exit status: 1"),
            "{e}"
        );
        assert!(command("true", &[]).is_ok());
    }
}
