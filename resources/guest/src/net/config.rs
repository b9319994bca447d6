//! `ip=<addr>/<prefix>[,<addr>/<prefix>...]` and optional `gw=<addr>` from
//! the kernel command line (the last of each wins, as with `workload=`).
//!
//! `ip=` lists one address per NIC in device order: `ip=10.0.0.2/24,10.0.0.3/24`
//! gives NIC 0 .2 and NIC 1 .3.  An empty entry (`ip=,10.0.0.3/24`), or none
//! at all, leaves that NIC unconfigured.  `gw=` is NIC 0's default gateway.

use core::fmt;

use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

use crate::virtio::MAX_NICS;

/// One NIC's settings.
pub struct IpConfig {
    pub cidr: Ipv4Cidr,
    pub gateway: Option<Ipv4Address>,
}

/// What the command line says about the network.
pub struct NetConfig {
    /// The address of each NIC we can drive; None: leave it unconfigured.
    addrs: [Option<Ipv4Cidr>; MAX_NICS],
    /// Entries in `ip=` (empty ones and ones beyond `MAX_NICS` included).
    pub listed: usize,
    gateway: Option<Ipv4Address>,
}

impl NetConfig {
    /// NIC `nic`'s settings, or None when `ip=` has no address for it.
    pub fn nic(&self, nic: usize) -> Option<IpConfig> {
        let cidr = (*self.addrs.get(nic)?)?;
        Some(IpConfig {
            cidr,
            gateway: if nic == 0 { self.gateway } else { None },
        })
    }
}

pub enum ConfigError<'a> {
    NoAddress,
    BadAddress(&'a str),
    BadGateway(&'a str),
}

impl fmt::Display for ConfigError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ConfigError::NoAddress => write!(f, "network workloads need ip=<addr>/<prefix>"),
            ConfigError::BadAddress(text) => {
                write!(f, "bad ip= '{text}' (want e.g. ip=10.0.0.2/24)")
            }
            ConfigError::BadGateway(text) => write!(f, "bad gw= '{text}'"),
        }
    }
}

fn last<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(key))
}

pub fn from_cmdline(cmdline: &str) -> Result<NetConfig, ConfigError<'_>> {
    let text = last(cmdline, "ip=").ok_or(ConfigError::NoAddress)?;
    let mut config = NetConfig {
        addrs: [None; MAX_NICS],
        listed: 0,
        gateway: None,
    };
    let mut any = false;
    for (i, entry) in text.split(',').enumerate() {
        config.listed = i + 1;
        if entry.is_empty() {
            continue;
        }
        // Every entry is checked, also those for NICs we do not drive.
        let cidr: Ipv4Cidr = entry.parse().map_err(|_| ConfigError::BadAddress(entry))?;
        if let Some(slot) = config.addrs.get_mut(i) {
            *slot = Some(cidr);
            any = true;
        }
    }
    if !any {
        return Err(ConfigError::NoAddress);
    }
    config.gateway = match last(cmdline, "gw=") {
        None => None,
        Some(gw) => Some(gw.parse().map_err(|_| ConfigError::BadGateway(gw))?),
    };
    Ok(config)
}
