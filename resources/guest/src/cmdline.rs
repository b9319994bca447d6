//! Parsing `workload=` from the kernel command line (the network settings,
//! `ip=` and `gw=`, are in `net::config`; the devices in `virtio`).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Idle,
    PowerOff,
    Reboot,
    Compute,
    /// Bytes through the console's loopback mode, checked (port I/O in flight at a pause).
    Loopback,
    Dirty { mib: u64, pages_per_s: u64 },
    /// A durable counter on TCP port 7000 (needs `ip=`, keeps it on every disk).
    Counter,
    /// TCP and UDP echo on port 7001 (needs `ip=`).
    Echo,
}

/// The workload the command line asks for (the last `workload=` wins, as in
/// Linux).  `Err` carries the text that is not a workload.
pub fn workload(cmdline: &str) -> Result<Workload, &str> {
    match cmdline.split_ascii_whitespace().rev().find_map(|w| w.strip_prefix("workload=")) {
        None => Ok(Workload::Idle),
        Some(text) => parse(text).ok_or(text),
    }
}

fn parse(text: &str) -> Option<Workload> {
    Some(match text {
        "idle" => Workload::Idle,
        "poweroff" => Workload::PowerOff,
        "reboot" => Workload::Reboot,
        "compute" => Workload::Compute,
        "loopback" => Workload::Loopback,
        "counter" => Workload::Counter,
        "echo" => Workload::Echo,
        _ => {
            let mut parts = text.strip_prefix("dirty:")?.split(':');
            let mib = parts.next()?.parse().ok()?;
            let pages_per_s = parts.next()?.parse().ok()?;
            if parts.next().is_some() {
                return None;
            }
            Workload::Dirty { mib, pages_per_s }
        }
    })
}
