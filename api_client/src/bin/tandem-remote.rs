//! `tandem-remote`: one subcommand per API endpoint. Only JSON goes to stdout, so it scripts.
//!
//! Exit codes: 0 ok, 1 the API answered an error, 2 usage error, 3 cannot connect / transport.

use api_client::{ApiClient, ClientError, Response};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[path = "tandem-remote/watch.rs"]
mod watch;

#[derive(Parser)]
#[command(
    name = "tandem-remote",
    version,
    about = "Talk to a Tandem VMM's REST API"
)]
struct Cli {
    /// Path of the VMM's API socket.
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the VMM is alive (GET vmm.ping).
    Ping,
    /// Stop the VMM process (PUT vmm.shutdown).
    ShutdownVmm,
    /// Create the VM from a JSON config file, `-` for stdin, or flags (PUT vm.create).
    Create(CreateArgs),
    /// Boot the created VM (PUT vm.boot).
    Boot,
    /// Show config and state (GET vm.info).
    Info,
    /// Pause the vCPUs (PUT vm.pause); an FT primary stays protected, its backup told.
    Pause,
    /// Resume the vCPUs (PUT vm.resume).
    Resume,
    /// Shut the VM down (PUT vm.shutdown).
    Shutdown,
    /// Reboot the VM (PUT vm.reboot).
    Reboot,
    /// Delete the VM (PUT vm.delete).
    Delete,
    /// Show the VM's counters (GET vm.counters).
    Counters,
    /// Write the paused VM's config, state and memory into a directory (PUT vm.snapshot).
    Snapshot {
        /// Destination directory: `file:///dir` or a path.
        destination: String,
    },
    /// Rebuild a VM from a snapshot directory in a VMM without one (PUT vm.restore).
    Restore(RestoreArgs),
    /// Live-migrate the running VM to a waiting VMM (PUT vm.send-migration); poll `info`.
    SendMigration {
        /// Where the destination listens: tcp:HOST:PORT or unix:PATH.
        destination: String,
        /// Longest acceptable guest pause, in milliseconds.
        #[arg(long)]
        downtime_ms: Option<u64>,
        /// Key file the destination holds too: the stream is encrypted and authenticated.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Wait for a migrating VM, in a VMM without one (PUT vm.receive-migration).
    ReceiveMigration(ReceiveArgs),
    /// Become the FT backup of a VM, in a VMM without one (PUT ft.receive); poll `ft-status`.
    FtReceive(FtReceiveArgs),
    /// Protect the running VM with the backup at PEER, or protect again a primary running
    /// unprotected after a failover or a lost backup (PUT ft.enable); poll `ft-status`.
    FtEnable(FtEnableArgs),
    /// This VMM's FT role, state and figures (GET ft.status); `--watch` refreshes them.
    FtStatus(FtStatusArgs),
    /// Backup only: go live now, through arbitration (PUT ft.promote).
    FtPromote,
    /// End the pair on purpose (PUT ft.disable).
    FtDisable,
}

#[derive(Clone, Copy, ValueEnum)]
enum DiskMode {
    Shared,
    Replicated,
}

impl DiskMode {
    fn as_str(self) -> &'static str {
        match self {
            DiskMode::Shared => "shared",
            DiskMode::Replicated => "replicated",
        }
    }
}

/// Pair key and second heartbeat path, the same flags for both sides.
#[derive(Args)]
struct FtSecurityArgs {
    /// Pair key file: at least 32 random bytes, owner-only (chmod 600), the same on both hosts;
    /// the stream and heartbeats are encrypted and authenticated with it.
    #[arg(long)]
    key: Option<PathBuf>,
    /// udp:ADDR:PORT to receive the peer's heartbeats on (second network path).
    #[arg(long, requires = "peer_heartbeat")]
    heartbeat_listen: Option<String>,
    /// udp:ADDR:PORT where the peer receives ours.
    #[arg(long, requires = "heartbeat_listen")]
    peer_heartbeat: Option<String>,
}

impl FtSecurityArgs {
    fn add_to(&self, body: &mut serde_json::Value) -> Result<(), String> {
        if let Some(k) = &self.key {
            body["key"] = json!({"path": absolute(k)?});
        }
        if let Some(l) = &self.heartbeat_listen {
            body["heartbeat_listen"] = json!(l);
        }
        if let Some(p) = &self.peer_heartbeat {
            body["peer_heartbeat"] = json!(p);
        }
        Ok(())
    }
}

/// Where the pair's arbiter lives: a directory (`--arbiter`) or an etcd cluster
/// (`--arbiter-etcd` and `--arbiter-key`), the same on both hosts.
#[derive(Args)]
struct ArbiterArgs {
    /// Arbiter directory on storage both hosts see.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "arbiter_etcd",
        conflicts_with = "arbiter_etcd"
    )]
    arbiter: Option<PathBuf>,
    /// Arbiter in etcd: client URLs of the cluster's members, comma-separated.
    #[arg(
        long,
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        requires = "arbiter_key"
    )]
    arbiter_etcd: Vec<String>,
    /// The pair's key prefix in etcd, e.g. /tandem/pairs/db1.
    #[arg(
        long,
        value_name = "KEY",
        requires = "arbiter_etcd",
        conflicts_with = "arbiter"
    )]
    arbiter_key: Option<String>,
    /// PEM CA bundle of the etcd members' certificates (https endpoints).
    #[arg(long, value_name = "PEM", requires = "arbiter_etcd")]
    arbiter_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (with --arbiter-cert-key).
    #[arg(long, value_name = "PEM", requires_all = ["arbiter_etcd", "arbiter_cert_key"])]
    arbiter_cert: Option<PathBuf>,
    /// PEM private key of --arbiter-cert.
    #[arg(long, value_name = "PEM", requires_all = ["arbiter_etcd", "arbiter_cert"])]
    arbiter_cert_key: Option<PathBuf>,
    /// etcd user (with --arbiter-password-file).
    #[arg(long, value_name = "USER", requires_all = ["arbiter_etcd", "arbiter_password_file"])]
    arbiter_user: Option<String>,
    /// File holding the etcd user's password (chmod 600).
    #[arg(long, value_name = "PATH", requires_all = ["arbiter_etcd", "arbiter_user"])]
    arbiter_password_file: Option<PathBuf>,
}

impl ArbiterArgs {
    /// The `arbiter` object; paths made absolute, since the VMM resolves them from its own
    /// working folder.
    fn to_json(&self) -> Result<Value, String> {
        if let Some(dir) = &self.arbiter {
            return Ok(json!({"path": absolute(dir)?}));
        }
        let mut etcd = json!({"endpoints": self.arbiter_etcd, "key": self.arbiter_key});
        for (field, path) in [
            ("ca_file", &self.arbiter_ca),
            ("cert_file", &self.arbiter_cert),
            ("key_file", &self.arbiter_cert_key),
            ("password_file", &self.arbiter_password_file),
        ] {
            if let Some(p) = path {
                etcd[field] = json!(absolute(p)?);
            }
        }
        if let Some(u) = &self.arbiter_user {
            etcd["user"] = json!(u);
        }
        Ok(json!({ "etcd": etcd }))
    }
}

#[derive(Args)]
struct FtReceiveArgs {
    /// Where to listen for the primary: tcp:ADDR:PORT.
    listen: String,
    #[command(flatten)]
    arbiter: ArbiterArgs,
    /// How the disks are shared (must match the primary's).
    #[arg(long, value_enum, ignore_case = true)]
    disk_mode: Option<DiskMode>,
    /// Silence from the primary after which it counts as failed, in milliseconds.
    #[arg(long)]
    failure_timeout_ms: Option<u64>,
    #[command(flatten)]
    host: HostOverrides,
    #[command(flatten)]
    security: FtSecurityArgs,
    /// Without --key, listen on an address other hosts can reach anyway (refused otherwise).
    #[arg(long, conflicts_with = "key")]
    insecure: bool,
}

#[derive(Args)]
struct FtStatusArgs {
    /// Refresh until Ctrl-C: a screen on a terminal, one line per refresh otherwise. Exits
    /// non-zero, saying why, once the VMM stops answering.
    #[arg(long)]
    watch: bool,
    /// Refresh interval in milliseconds (with --watch).
    #[arg(long, value_name = "MS", default_value_t = 1000, requires = "watch",
          value_parser = clap::value_parser!(u64).range(10..))]
    interval: u64,
}

#[derive(Args)]
struct FtEnableArgs {
    /// Where the backup's ft.receive listens: tcp:HOST:PORT.
    peer: String,
    /// How the disks are shared.
    #[arg(long, value_enum, ignore_case = true)]
    disk_mode: DiskMode,
    #[command(flatten)]
    arbiter: ArbiterArgs,
    /// Longest epoch, in milliseconds.
    #[arg(long)]
    checkpoint_interval_ms: Option<u64>,
    /// Heartbeat on the stream when idle, in milliseconds.
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// Silence from the backup after which it counts as failed, in milliseconds.
    #[arg(long)]
    failure_timeout_ms: Option<u64>,
    #[command(flatten)]
    security: FtSecurityArgs,
}

#[derive(Args)]
struct ReceiveArgs {
    /// Where to listen: tcp:ADDR:PORT or unix:PATH.
    receiver: String,
    #[command(flatten)]
    host: HostOverrides,
    /// Key file the source holds too: the stream is encrypted and authenticated.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Without --key, listen on an address other hosts can reach anyway (refused otherwise).
    #[arg(long, conflicts_with = "key")]
    insecure: bool,
}

#[derive(Args)]
struct RestoreArgs {
    /// Snapshot directory: `file:///dir` or a path.
    source: String,
    /// Run the VM at once instead of leaving it paused.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    host: HostOverrides,
}

/// Host resources that replace the saved ones, by device id (restore and incoming migration).
#[derive(Args)]
struct HostOverrides {
    /// Replace a NIC's tap: ID=TAP (repeatable).
    #[arg(long, value_name = "ID=TAP")]
    net: Vec<String>,
    /// Replace a disk's image: ID=PATH (repeatable).
    #[arg(long, value_name = "ID=PATH")]
    disk: Vec<String>,
    /// Send the console to this file in this process.
    #[arg(long, value_name = "PATH")]
    serial_file: Option<PathBuf>,
}

impl HostOverrides {
    /// Adds `net`, `disks` and `serial` to a request body.
    fn add_to(&self, body: &mut Value) -> Result<(), String> {
        body["net"] = json!(pairs(&self.net, "net", "tap")?);
        body["disks"] = json!(pairs(&self.disk, "disk", "path")?);
        if let Some(f) = &self.serial_file {
            body["serial"] = json!({"mode": "File", "file": absolute(f)?});
        }
        Ok(())
    }
}

#[derive(Args)]
struct CreateArgs {
    /// JSON VmConfig file, or `-` for stdin; conflicts with the flags below.
    #[arg(value_name = "CONFIG", conflicts_with_all = ["cpus", "memory", "kernel", "initramfs", "cmdline", "serial_mode", "serial_file"])]
    config: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long)]
    cpus: Option<u8>,
    /// Guest RAM, bytes or with a K/M/G/T suffix (e.g. 512M).
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Kernel image (bzImage or vmlinux); none boots the built-in guest.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs image.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Where serial output goes.
    #[arg(long, value_enum, ignore_case = true)]
    serial_mode: Option<SerialMode>,
    /// File for `--serial-mode file`.
    #[arg(long)]
    serial_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SerialMode {
    Off,
    Null,
    Tty,
    File,
}

impl SerialMode {
    fn api_name(self) -> &'static str {
        match self {
            SerialMode::Off => "Off",
            SerialMode::Null => "Null",
            SerialMode::Tty => "Tty",
            SerialMode::File => "File",
        }
    }
}

/// Parses `512M`, `1G`, `4096`, ... into bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix {c:?} (use K, M, G or T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512M"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s} is too large"))
}

/// The `vm.create` body: a file's JSON, or one built from the flags (server defaults fill the rest).
fn create_body(args: &CreateArgs) -> Result<Value, String> {
    if let Some(path) = &args.config {
        let text = read_config(path)?;
        return serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()));
    }
    let mut body = Map::new();
    if let Some(n) = args.cpus {
        body.insert("cpus".into(), json!({ "boot_vcpus": n }));
    }
    if let Some(size) = args.memory {
        body.insert("memory".into(), json!({ "size": size }));
    }
    let mut payload = Map::new();
    // The VMM resolves relative paths against its own directory, so send absolute ones.
    for (key, path) in [("kernel", &args.kernel), ("initramfs", &args.initramfs)] {
        if let Some(p) = path {
            payload.insert(key.into(), json!(absolute(p)?));
        }
    }
    if let Some(c) = &args.cmdline {
        payload.insert("cmdline".into(), json!(c));
    }
    if !payload.is_empty() {
        body.insert("payload".into(), Value::Object(payload));
    }
    let mut serial = Map::new();
    if let Some(m) = args.serial_mode {
        serial.insert("mode".into(), json!(m.api_name()));
    }
    if let Some(p) = &args.serial_file {
        serial.insert("file".into(), json!(absolute(p)?));
    }
    if !serial.is_empty() {
        body.insert("serial".into(), Value::Object(serial));
    }
    Ok(Value::Object(body))
}

fn read_config(path: &Path) -> Result<String, String> {
    let mut text = String::new();
    let result = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text).map(|_| ()))
    };
    result.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text)
}

fn absolute(p: &Path) -> Result<String, String> {
    std::path::absolute(p)
        .map(|a| a.display().to_string())
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// HTTP method of an endpoint.
enum Verb {
    Get,
    Put,
}

/// The request a subcommand sends; an `Err` is a usage problem (unreadable config file, ...).
fn request_for(command: &Command) -> Result<(Verb, &'static str, Option<Value>), String> {
    Ok(match command {
        Command::Ping => (Verb::Get, "vmm.ping", None),
        Command::ShutdownVmm => (Verb::Put, "vmm.shutdown", None),
        Command::Create(args) => (Verb::Put, "vm.create", Some(create_body(args)?)),
        Command::Boot => (Verb::Put, "vm.boot", None),
        Command::Info => (Verb::Get, "vm.info", None),
        Command::Pause => (Verb::Put, "vm.pause", None),
        Command::Resume => (Verb::Put, "vm.resume", None),
        Command::Shutdown => (Verb::Put, "vm.shutdown", None),
        Command::Reboot => (Verb::Put, "vm.reboot", None),
        Command::Delete => (Verb::Put, "vm.delete", None),
        Command::Counters => (Verb::Get, "vm.counters", None),
        Command::Snapshot { destination } => (
            Verb::Put,
            "vm.snapshot",
            Some(json!({"destination_url": file_url(destination)?})),
        ),
        Command::Restore(args) => (Verb::Put, "vm.restore", Some(restore_body(args)?)),
        Command::SendMigration {
            destination,
            downtime_ms,
            key,
        } => {
            let mut body = json!({ "destination_url": destination });
            if let Some(ms) = downtime_ms {
                body["downtime_ms"] = json!(ms);
            }
            if let Some(k) = key {
                body["key"] = json!({"path": absolute(k)?});
            }
            (Verb::Put, "vm.send-migration", Some(body))
        }
        Command::ReceiveMigration(a) => {
            let mut body = json!({ "receiver_url": a.receiver });
            a.host.add_to(&mut body)?;
            if let Some(k) = &a.key {
                body["key"] = json!({"path": absolute(k)?});
            }
            if a.insecure {
                body["insecure"] = json!(true);
            }
            (Verb::Put, "vm.receive-migration", Some(body))
        }
        Command::FtReceive(a) => {
            let mut body = json!({
                "listen": a.listen,
                "arbiter": a.arbiter.to_json()?,
            });
            a.host.add_to(&mut body)?;
            a.security.add_to(&mut body)?;
            if a.insecure {
                body["insecure"] = json!(true);
            }
            if let Some(m) = a.disk_mode {
                body["disk_mode"] = json!(m.as_str());
            }
            if let Some(ms) = a.failure_timeout_ms {
                body["failure_timeout_ms"] = json!(ms);
            }
            (Verb::Put, "ft.receive", Some(body))
        }
        Command::FtEnable(a) => {
            let mut body = json!({
                "peer": a.peer,
                "disk_mode": a.disk_mode.as_str(),
                "arbiter": a.arbiter.to_json()?,
            });
            for (k, v) in [
                ("checkpoint_interval_ms", a.checkpoint_interval_ms),
                ("heartbeat_interval_ms", a.heartbeat_interval_ms),
                ("failure_timeout_ms", a.failure_timeout_ms),
            ] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            a.security.add_to(&mut body)?;
            (Verb::Put, "ft.enable", Some(body))
        }
        Command::FtStatus(_) => (Verb::Get, "ft.status", None),
        Command::FtPromote => (Verb::Put, "ft.promote", None),
        Command::FtDisable => (Verb::Put, "ft.disable", None),
    })
}

/// `file:///dir` as given, or a path made into one.
fn file_url(s: &str) -> Result<String, String> {
    if s.contains("://") {
        return Ok(s.to_string());
    }
    Ok(format!("file://{}", absolute(Path::new(s))?))
}

fn pairs(v: &[String], what: &str, key: &str) -> Result<Vec<Value>, String> {
    v.iter()
        .map(|p| match p.split_once('=') {
            Some((id, val)) if !id.is_empty() && !val.is_empty() => Ok(json!({"id": id, key: val})),
            _ => Err(format!(
                "--{what} wants ID={}, got {p:?}",
                key.to_uppercase()
            )),
        })
        .collect()
}

fn restore_body(a: &RestoreArgs) -> Result<Value, String> {
    let mut body = json!({
        "source_url": file_url(&a.source)?,
        "resume": a.resume,
    });
    a.host.add_to(&mut body)?;
    Ok(body)
}

fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(_) => println!("{v}"),
    }
}

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2.
    let cli = Cli::parse();
    let client = ApiClient::new(&cli.api_socket);
    if let Command::FtStatus(a) = &cli.command {
        if a.watch {
            return watch::run(&client, &cli.api_socket, Duration::from_millis(a.interval));
        }
    }
    let (verb, endpoint, body) = match request_for(&cli.command) {
        Ok(r) => r,
        Err(msg) => {
            eprintln!("tandem-remote: {msg}");
            return ExitCode::from(2);
        }
    };
    let result = match verb {
        Verb::Get => client.get(endpoint),
        Verb::Put => client.put(endpoint, body.as_ref()),
    };
    match result.and_then(Response::into_result) {
        Ok(Some(body)) => {
            print_json(&body);
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Prints an error on stderr: the API's own `{"error": [...]}` for API errors, else the chain.
fn report(e: &ClientError) {
    let chain = match e {
        ClientError::Api { error, .. } => error.clone(),
        other => {
            let mut chain = vec![other.to_string()];
            let mut cur = std::error::Error::source(other);
            while let Some(s) = cur {
                chain.push(s.to_string());
                cur = s.source();
            }
            chain
        }
    };
    let status = match e {
        ClientError::Api { status, .. } => json!(status),
        _ => Value::Null,
    };
    let out = json!({ "status": status, "error": chain });
    eprintln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2K"), Ok(2048));
        for bad in ["", "M", "12X", "-1M", "1.5G", "99999999999T", "é"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn create_from_flags() {
        let cli = Cli::try_parse_from([
            "tandem-remote",
            "--api-socket",
            "/s",
            "create",
            "--cpus",
            "2",
            "--memory",
            "256M",
            "--serial-mode",
            "file",
            "--serial-file",
            "/tmp/x",
        ])
        .unwrap();
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        let body = create_body(&args).unwrap();
        assert_eq!(
            body,
            json!({"cpus":{"boot_vcpus":2},"memory":{"size":268435456},
                   "serial":{"mode":"File","file":"/tmp/x"}})
        );
    }

    #[test]
    fn snapshot_and_restore_bodies() {
        let cli = Cli::parse_from([
            "tandem-remote",
            "--api-socket",
            "/s",
            "snapshot",
            "/tmp/snap",
        ]);
        let (_, ep, body) = request_for(&cli.command).unwrap();
        assert_eq!(ep, "vm.snapshot");
        assert_eq!(body.unwrap()["destination_url"], "file:///tmp/snap");
        let cli = Cli::parse_from([
            "tandem-remote",
            "--api-socket",
            "/s",
            "restore",
            "file:///tmp/snap",
            "--resume",
            "--net",
            "nic0=tap1",
            "--disk",
            "disk0=/img",
        ]);
        let (_, ep, body) = request_for(&cli.command).unwrap();
        let body = body.unwrap();
        assert_eq!(ep, "vm.restore");
        assert_eq!(body["resume"], true);
        assert_eq!(body["net"][0]["tap"], "tap1");
        assert_eq!(body["disks"][0]["path"], "/img");
        let cli = Cli::parse_from([
            "tandem-remote",
            "--api-socket",
            "/s",
            "restore",
            "/x",
            "--net",
            "nic0",
        ]);
        assert!(request_for(&cli.command).is_err());
    }

    #[test]
    fn migration_bodies_take_a_key_or_insecure() {
        let parse = |args: &[&str]| {
            let mut all = vec!["tandem-remote", "--api-socket", "/s"];
            all.extend(args);
            let cli = Cli::try_parse_from(all)?;
            Ok::<_, clap::Error>(request_for(&cli.command).unwrap())
        };
        let (_, ep, body) =
            parse(&["send-migration", "tcp:10.99.0.2:7500", "--key", "/k"]).unwrap();
        assert_eq!(ep, "vm.send-migration");
        assert_eq!(
            body.unwrap(),
            json!({"destination_url": "tcp:10.99.0.2:7500", "key": {"path": "/k"}})
        );
        let (_, ep, body) =
            parse(&["receive-migration", "tcp:10.99.0.2:7500", "--key", "/k"]).unwrap();
        assert_eq!(ep, "vm.receive-migration");
        let body = body.unwrap();
        assert_eq!(body["key"]["path"], "/k");
        assert!(body.get("insecure").is_none());
        let body = parse(&["receive-migration", "tcp:10.99.0.2:7500", "--insecure"])
            .unwrap()
            .2
            .unwrap();
        assert_eq!(body["insecure"], true);
        assert!(body.get("key").is_none());
        // A key and insecure contradict each other.
        assert!(parse(&["receive-migration", "unix:/x", "--key", "/k", "--insecure"]).is_err());
    }

    #[test]
    fn ft_bodies() {
        let cli = Cli::parse_from([
            "tandem-remote",
            "--api-socket",
            "/s",
            "ft-receive",
            "tcp:10.99.0.2:7600",
            "--arbiter",
            "/arb",
            "--disk",
            "disk0=/img",
            "--net",
            "nic0=tap0",
            "--disk-mode",
            "replicated",
        ]);
        let (_, ep, body) = request_for(&cli.command).unwrap();
        let body = body.unwrap();
        assert_eq!(ep, "ft.receive");
        assert_eq!(body["listen"], "tcp:10.99.0.2:7600");
        assert_eq!(body["arbiter"]["path"], "/arb");
        assert_eq!(body["disks"][0]["path"], "/img");
        assert_eq!(body["disk_mode"], "replicated");
        assert!(body.get("key").is_none() && body.get("heartbeat_listen").is_none());
        assert!(body.get("insecure").is_none());
        let cli = Cli::parse_from([
            "tandem-remote",
            "--api-socket",
            "/s",
            "ft-receive",
            "tcp:10.99.0.2:7600",
            "--arbiter",
            "/arb",
            "--insecure",
        ]);
        assert_eq!(
            request_for(&cli.command).unwrap().2.unwrap()["insecure"],
            true
        );
        let cli = Cli::parse_from([
            "tandem-remote",
            "--api-socket",
            "/s",
            "ft-receive",
            "tcp:10.99.0.2:7600",
            "--arbiter",
            "/arb",
            "--key",
            "/etc/tandem/ft.key",
            "--heartbeat-listen",
            "udp:10.77.0.12:7700",
            "--peer-heartbeat",
            "udp:10.77.0.11:7700",
        ]);
        let body = request_for(&cli.command).unwrap().2.unwrap();
        assert_eq!(body["key"]["path"], "/etc/tandem/ft.key");
        assert_eq!(body["heartbeat_listen"], "udp:10.77.0.12:7700");
        assert_eq!(body["peer_heartbeat"], "udp:10.77.0.11:7700");
        // One heartbeat flag without the other is refused by the parser.
        assert!(Cli::try_parse_from([
            "tandem-remote",
            "--api-socket",
            "/s",
            "ft-enable",
            "tcp:10.99.0.2:7600",
            "--disk-mode",
            "shared",
            "--arbiter",
            "/arb",
            "--heartbeat-listen",
            "udp:10.77.0.11:7700",
        ])
        .is_err());
        let cli = Cli::parse_from([
            "tandem-remote",
            "--api-socket",
            "/s",
            "ft-enable",
            "tcp:10.99.0.2:7600",
            "--disk-mode",
            "shared",
            "--arbiter",
            "/arb",
            "--failure-timeout-ms",
            "500",
        ]);
        let (_, ep, body) = request_for(&cli.command).unwrap();
        assert_eq!(ep, "ft.enable");
        assert_eq!(
            body.unwrap(),
            json!({"peer": "tcp:10.99.0.2:7600", "disk_mode": "shared",
                   "arbiter": {"path": "/arb"}, "failure_timeout_ms": 500})
        );
        // An etcd arbiter, with TLS and a user.
        let cli = Cli::parse_from([
            "tandem-remote",
            "--api-socket",
            "/s",
            "ft-enable",
            "tcp:10.99.0.2:7600",
            "--disk-mode",
            "shared",
            "--arbiter-etcd",
            "https://10.0.0.5:2379,https://10.0.0.6:2379",
            "--arbiter-key",
            "/tandem/pairs/db1",
            "--arbiter-ca",
            "/etc/etcd/ca.pem",
            "--arbiter-cert",
            "/etc/tandem/etcd.pem",
            "--arbiter-cert-key",
            "/etc/tandem/etcd-key.pem",
            "--arbiter-user",
            "tandem",
            "--arbiter-password-file",
            "/etc/tandem/etcd-password",
        ]);
        let body = request_for(&cli.command).unwrap().2.unwrap();
        assert_eq!(
            body["arbiter"],
            json!({"etcd": {
                "endpoints": ["https://10.0.0.5:2379", "https://10.0.0.6:2379"],
                "key": "/tandem/pairs/db1",
                "ca_file": "/etc/etcd/ca.pem",
                "cert_file": "/etc/tandem/etcd.pem",
                "key_file": "/etc/tandem/etcd-key.pem",
                "user": "tandem",
                "password_file": "/etc/tandem/etcd-password",
            }})
        );
        let cli = Cli::parse_from([
            "tandem-remote",
            "--api-socket",
            "/s",
            "ft-receive",
            "tcp:10.99.0.2:7600",
            "--arbiter-etcd",
            "http://10.0.0.5:2379",
            "--arbiter-key",
            "/tandem/pairs/db1",
        ]);
        let body = request_for(&cli.command).unwrap().2.unwrap();
        assert_eq!(
            body["arbiter"],
            json!({"etcd": {"endpoints": ["http://10.0.0.5:2379"], "key": "/tandem/pairs/db1"}})
        );
        // Exactly one arbiter; etcd needs a key; half a certificate or credential is refused.
        for bad in [
            &["--disk-mode", "shared"][..],
            &[
                "--arbiter",
                "/arb",
                "--arbiter-etcd",
                "http://h:2379",
                "--arbiter-key",
                "/k",
            ],
            &["--arbiter-etcd", "http://h:2379"],
            &["--arbiter", "/arb", "--arbiter-key", "/k"],
            &[
                "--arbiter-etcd",
                "https://h:2379",
                "--arbiter-key",
                "/k",
                "--arbiter-cert",
                "/c",
            ],
            &[
                "--arbiter-etcd",
                "http://h:2379",
                "--arbiter-key",
                "/k",
                "--arbiter-user",
                "u",
            ],
        ] {
            let mut args = vec![
                "tandem-remote",
                "--api-socket",
                "/s",
                "ft-enable",
                "tcp:10.99.0.2:7600",
            ];
            if !bad.contains(&"--disk-mode") {
                args.extend(["--disk-mode", "shared"]);
            }
            args.extend(bad);
            assert!(Cli::try_parse_from(&args).is_err(), "accepted {args:?}");
        }
        for (cmd, ep) in [
            ("ft-status", "ft.status"),
            ("ft-promote", "ft.promote"),
            ("ft-disable", "ft.disable"),
        ] {
            let cli = Cli::parse_from(["tandem-remote", "--api-socket", "/s", cmd]);
            assert_eq!(request_for(&cli.command).unwrap().1, ep);
        }
    }

    #[test]
    fn ft_status_watch_flags() {
        let parse = |args: &[&str]| {
            let mut all = vec!["tandem-remote", "--api-socket", "/s", "ft-status"];
            all.extend(args);
            Cli::try_parse_from(all)
        };
        let Command::FtStatus(a) = parse(&["--watch", "--interval", "250"]).unwrap().command else {
            panic!("not ft-status")
        };
        assert!(a.watch);
        assert_eq!(a.interval, 250);
        let Command::FtStatus(a) = parse(&[]).unwrap().command else {
            panic!("not ft-status")
        };
        assert!(!a.watch);
        assert!(
            parse(&["--interval", "250"]).is_err(),
            "--interval needs --watch"
        );
        assert!(parse(&["--watch", "--interval", "5"]).is_err(), "too fast");
    }

    #[test]
    fn file_and_flags_conflict() {
        let r = Cli::try_parse_from([
            "tandem-remote",
            "--api-socket",
            "/s",
            "create",
            "cfg.json",
            "--cpus",
            "2",
        ]);
        assert!(r.is_err());
    }
}
