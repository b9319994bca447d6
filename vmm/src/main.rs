//! `tandem`: the VMM binary. Serves the REST API on a Unix socket and/or boots a VM straight from
//! command-line flags.

// Host-side: startup and shutdown lines.
#![allow(clippy::disallowed_macros)]

use clap::Parser;
use errors::chain;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use vmm::api::ApiRequest;
use vmm::config::{
    CpusConfig, DiskConfig, MemoryConfig, NetConfig, PayloadConfig, SerialConfig, SerialMode,
    VmConfig, DEFAULT_MEMORY_BYTES,
};
use vmm::controller::Vmm;

/// A rust-vmm VMM whose VMs can be made fault tolerant.
#[derive(Parser, Debug)]
#[command(name = "tandem", version, about)]
struct Cli {
    /// Serve the REST API on this Unix socket.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Boot a VM at once with this many vCPUs (implies creating a VM from flags).
    #[arg(long, value_name = "N")]
    cpus: Option<u8>,
    /// Guest memory, bytes or with a K/M/G suffix (e.g. 512M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// Kernel (ELF vmlinux or bzImage); none boots the built-in guest.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs for a Linux kernel.
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Kernel command line (the built-in guest reads `workload=` from it).
    #[arg(long, value_name = "STRING")]
    cmdline: Option<String>,
    /// Serial port output: off, null, tty or file=PATH.
    #[arg(long, value_name = "MODE", value_parser = parse_serial)]
    serial: Option<SerialConfig>,
    /// A virtio-blk disk: id=ID,path=PATH[,readonly=on|off]; repeat for more disks.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    disk: Vec<DiskConfig>,
    /// A virtio-net NIC on a tap: id=ID,tap=NAME[,mac=52:54:00:12:34:56]; repeat for more.
    #[arg(long, value_name = "SPEC", value_parser = parse_net)]
    net: Vec<NetConfig>,
    /// Also serve Prometheus metrics over TCP at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<String>,
    /// Log level: error, warn, info, debug or trace, optionally per module as env_logger takes
    /// them (e.g. `info,vmm::api=debug`); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Append log lines to this file instead of standard error.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Seccomp filter per thread kind: true (a forbidden syscall ends the process, naming thread
    /// and syscall), false (no filters), or log (the kernel logs forbidden syscalls and lets them
    /// through). See README, "Security: seccomp".
    #[arg(long, value_name = "true|false|log", default_value = "true", num_args = 0..=1,
          default_missing_value = "true")]
    seccomp: vmm::seccomp::Mode,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix '{c}' (use K, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size such as 512M"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

fn parse_serial(s: &str) -> Result<SerialConfig, String> {
    let mode = match s {
        "off" => SerialMode::Off,
        "null" => SerialMode::Null,
        "tty" => SerialMode::Tty,
        _ => match s.strip_prefix("file=") {
            Some(p) if !p.is_empty() => {
                return Ok(SerialConfig {
                    mode: SerialMode::File,
                    file: Some(PathBuf::from(p)),
                })
            }
            _ => return Err(format!("'{s}' is not one of off, null, tty, file=PATH")),
        },
    };
    Ok(SerialConfig { mode, file: None })
}

/// Splits `k=v,k=v` into pairs, refusing keys outside `allowed` and repeated keys.
fn parse_kv<'a>(s: &'a str, allowed: &[&str]) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not key=value"))?;
        if !allowed.contains(&k) {
            return Err(format!(
                "unknown key '{k}' (expected {})",
                allowed.join(", ")
            ));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("key '{k}' given twice"));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn get<'a>(kv: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn require<'a>(kv: &[(&str, &'a str)], key: &str) -> Result<&'a str, String> {
    get(kv, key).ok_or_else(|| format!("missing {key}="))
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let kv = parse_kv(s, &["id", "path", "readonly"])?;
    let readonly = match get(&kv, "readonly") {
        None | Some("off") => false,
        Some("on") => true,
        Some(v) => return Err(format!("readonly must be on or off, not '{v}'")),
    };
    Ok(DiskConfig {
        id: require(&kv, "id")?.to_string(),
        path: PathBuf::from(require(&kv, "path")?),
        readonly,
    })
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    let kv = parse_kv(s, &["id", "tap", "mac"])?;
    Ok(NetConfig {
        id: require(&kv, "id")?.to_string(),
        tap: require(&kv, "tap")?.to_string(),
        mac: get(&kv, "mac").map(String::from),
    })
}

impl Cli {
    /// A VM config when any VM flag was given.
    fn vm_config(&self) -> Option<VmConfig> {
        let any = self.cpus.is_some()
            || self.memory.is_some()
            || self.kernel.is_some()
            || self.initramfs.is_some()
            || self.cmdline.is_some()
            || self.serial.is_some()
            || !self.disk.is_empty()
            || !self.net.is_empty();
        any.then(|| VmConfig {
            cpus: CpusConfig {
                boot_vcpus: self.cpus.unwrap_or(1),
            },
            memory: MemoryConfig {
                size: self.memory.unwrap_or(DEFAULT_MEMORY_BYTES),
            },
            payload: PayloadConfig {
                kernel: self.kernel.clone(),
                initramfs: self.initramfs.clone(),
                cmdline: self.cmdline.clone(),
            },
            serial: self.serial.clone().unwrap_or(SerialConfig {
                mode: SerialMode::Tty,
                file: None,
            }),
            disks: self.disk.clone(),
            net: self.net.clone(),
        })
    }
}

fn main() -> ExitCode {
    // glibc's malloc, the first time it shrinks a thread arena's heap, opens
    // /proc/sys/vm/overcommit_memory, from whichever thread freed the memory: a device worker
    // under a filter with no opens died of it mid-soak. A trim threshold no arena heap (64 MiB at
    // most) reaches means that shrink never happens; freed memory is reused, not handed back.
    // SAFETY: mallopt only sets a malloc parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    let cli = Cli::parse();
    let target = match &cli.log_file {
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => {
                // A seccomp violation is reported in the log file too, not only on stderr.
                vmm::seccomp::report_also_to(&f);
                env_logger::Target::Pipe(Box::new(f))
            }
            Err(e) => {
                eprintln!("tandem: cannot open log file {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => env_logger::Target::Stderr,
    };
    env_logger::Builder::new()
        .parse_filters(&cli.log_level)
        .parse_env("RUST_LOG")
        .target(target)
        .init();

    let vm_config = cli.vm_config();
    if cli.api_socket.is_none() && vm_config.is_none() {
        eprintln!("tandem: nothing to do: give --api-socket PATH and/or VM flags (see --help)");
        return ExitCode::from(2);
    }
    if let Err(e) = vmm::vm::vcpu::install_kick_handler() {
        eprintln!("tandem: cannot install the vCPU kick signal handler: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = vmm::seccomp::install_sigsys_handler() {
        eprintln!("tandem: cannot install the SIGSYS handler: {e}");
        return ExitCode::FAILURE;
    }
    // Hidden, for CI: append seccomp violations to this file too, so that a suite run can tell
    // whether any tandem it started died of one (even where the test then passed).
    if let Some(p) = std::env::var_os("TANDEM_SECCOMP_REPORT") {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
        {
            Ok(f) => vmm::seccomp::report_also_to(&f),
            Err(e) => log::warn!("cannot open TANDEM_SECCOMP_REPORT file: {e}"),
        }
    }
    // TEST ONLY, for tests/tests/ft_verify.rs: a backup corrupts its replica once.
    vmm::ft::replica_fault::init_from_env();
    // Hidden, for tests/tests/seccomp.rs: a thread of this kind makes a forbidden syscall.
    let selftest = std::env::var("TANDEM_SECCOMP_SELFTEST").ok();
    vmm::seccomp::configure(cli.seccomp, selftest);
    devices::virtio::worker::set_thread_start_hook(|| {
        vmm::seccomp::apply(vmm::seccomp::ThreadKind::Worker)
    });
    ft::thread_hook::set_thread_start_hook(|| vmm::seccomp::apply(vmm::seccomp::ThreadKind::Ft));
    match cli.seccomp {
        vmm::seccomp::Mode::Trap => log::info!(
            "seccomp: on (a filter per thread kind; a forbidden syscall ends the process)"
        ),
        vmm::seccomp::Mode::Log => log::warn!(
            "seccomp: log: forbidden syscalls are let through and only logged by the kernel"
        ),
        vmm::seccomp::Mode::Off => log::warn!(
            "seccomp: off: threads are NOT confined (--seccomp=false); drop it to confine them"
        ),
    }
    vmm::seccomp::apply(vmm::seccomp::ThreadKind::Vmm);

    let (tx, rx) = mpsc::channel();
    let mut vmm = Vmm::new(tx.clone(), cli.api_socket.is_none());

    let server = match &cli.api_socket {
        Some(path) => match vmm::api::start_server(path, tx.clone(), Some(vmm.view())) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("tandem: {}", chain(&e));
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };

    if let Some(addr) = &cli.metrics_listen {
        if let Err(e) = vmm::api::metrics_server::start_metrics_server(addr, vmm.view()) {
            eprintln!("tandem: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    }

    if let Some(cfg) = vm_config {
        for req in [ApiRequest::VmCreate(Box::new(cfg)), ApiRequest::VmBoot] {
            if let Err(e) = vmm.handle_api(req) {
                eprintln!("tandem: {}", e.error.join(": "));
                return ExitCode::FAILURE;
            }
        }
    }
    drop(tx);
    vmm.run(rx);
    if let Some(s) = server {
        if let Err(e) = s.join() {
            eprintln!("tandem: API server: {}", chain(&e));
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_is_on_unless_turned_off() {
        use vmm::seccomp::Mode;
        let mode =
            |args: &[&str]| Cli::try_parse_from([&["tandem"], args].concat()).map(|c| c.seccomp);
        assert_eq!(mode(&[]).unwrap(), Mode::Trap);
        assert_eq!(mode(&["--seccomp"]).unwrap(), Mode::Trap);
        assert_eq!(mode(&["--seccomp=true"]).unwrap(), Mode::Trap);
        assert_eq!(mode(&["--seccomp", "false"]).unwrap(), Mode::Off);
        assert_eq!(mode(&["--seccomp=false"]).unwrap(), Mode::Off);
        assert_eq!(mode(&["--seccomp=log"]).unwrap(), Mode::Log);
        assert!(mode(&["--seccomp=maybe"]).is_err());
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn serial_modes_parse() {
        assert_eq!(parse_serial("tty").unwrap().mode, SerialMode::Tty);
        let f = parse_serial("file=/tmp/x").unwrap();
        assert_eq!(f.file, Some(PathBuf::from("/tmp/x")));
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("pty").is_err());
    }

    #[test]
    fn disks_and_nics_parse() {
        let d = parse_disk("id=d0,path=/img/a.raw,readonly=on").unwrap();
        assert_eq!((d.id.as_str(), d.readonly), ("d0", true));
        assert_eq!(d.path, PathBuf::from("/img/a.raw"));
        assert!(!parse_disk("path=/x,id=d1").unwrap().readonly);
        assert!(parse_disk("id=d0").is_err());
        assert!(parse_disk("id=d0,path=/x,readonly=yes").is_err());
        assert!(parse_disk("id=d0,path=/x,cache=none").is_err());
        assert!(parse_disk("id=d0,id=d1,path=/x").is_err());
        let n = parse_net("id=n0,tap=tap0,mac=52:54:00:00:00:01").unwrap();
        assert_eq!(n.mac.as_deref(), Some("52:54:00:00:00:01"));
        assert_eq!(parse_net("id=n0,tap=tap0").unwrap().mac, None);
        assert!(parse_net("id=n0").is_err());
        assert!(parse_net("tap0").is_err());
        let cli = Cli::try_parse_from([
            "tandem",
            "--disk",
            "id=a,path=/a",
            "--disk",
            "id=b,path=/b",
            "--net",
            "id=n,tap=t",
        ])
        .unwrap();
        let cfg = cli.vm_config().unwrap();
        assert_eq!(cfg.disks.len(), 2);
        assert_eq!(cfg.net.len(), 1);
    }
}
