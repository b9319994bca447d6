//! `ip=<addr>/<prefix>` and optional `gw=<addr>` from the kernel command line
//! (the last of each wins, as with `workload=`).

use core::fmt;

use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

pub struct IpConfig {
    pub cidr: Ipv4Cidr,
    pub gateway: Option<Ipv4Address>,
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

pub fn from_cmdline(cmdline: &str) -> Result<IpConfig, ConfigError<'_>> {
    let text = last(cmdline, "ip=").ok_or(ConfigError::NoAddress)?;
    let cidr: Ipv4Cidr = text.parse().map_err(|_| ConfigError::BadAddress(text))?;
    let gateway = match last(cmdline, "gw=") {
        None => None,
        Some(gw) => Some(gw.parse().map_err(|_| ConfigError::BadGateway(gw))?),
    };
    Ok(IpConfig { cidr, gateway })
}
