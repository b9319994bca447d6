//! What the network workloads share: bring up the devices and the stack, let
//! the workload open its sockets, say so, and run the poll loop on the BSP.

use core::fmt;

use smoltcp::wire::Ipv4Address;

use crate::net::sockets::Sockets;
use crate::net::{config, Stack};
use crate::virtio::{self, Devices, MAX_NICS};
use crate::{bootparams, logger, say, sys};

/// A workload that serves the network.
pub trait Service {
    /// Handle whatever the sockets (of every configured NIC) hold; true when
    /// it did anything (so the stack is polled again before the CPU sleeps).
    fn serve(&mut self, sockets: &mut Sockets) -> bool;
}

/// Bring up the network — every NIC that `ip=` gives an address, each with
/// its own interface and socket set — call `open` to create the service and
/// its sockets (on every configured NIC: `Sockets::has`), print
/// `tandem-guest: ready`, and serve forever.  Errors are printed and the CPU
/// idles (no `ready`).
pub fn run<S: Service>(open: impl FnOnce(&'static mut Devices, &mut Sockets) -> Option<S>) -> ! {
    logger::init();
    let cmdline = bootparams::get().cmdline();
    let config = match config::from_cmdline(cmdline) {
        Ok(config) => config,
        Err(e) => fail(format_args!("{e}")),
    };
    let devices = virtio::probe(cmdline);
    if devices.nic_count == 0 {
        fail(format_args!("no virtio-net device"))
    }
    let mut stack = Stack::new();
    let mut configured = [false; MAX_NICS];
    for (i, slot) in devices.nics.iter_mut().enumerate() {
        let Some(ip) = config.nic(i) else {
            if let Some(nic) = slot.as_ref() {
                // Left in `devices` (a driver is never dropped), its IRQ
                // unrouted: it never wakes the CPU.
                say!(
                    "tandem-guest: net {} unconfigured (ip= has no address for NIC {})",
                    Mac(nic.mac()),
                    i
                );
            }
            continue;
        };
        let Some(nic) = slot.take() else { continue };
        let link = stack.add(i, nic, ip);
        say!(
            "tandem-guest: net {} ip={} disks={}{}",
            Mac(link.nic.mac()),
            link.ip.cidr,
            devices.disk_count,
            Gateway(link.ip.gateway)
        );
        virtio::route(devices.nic_irqs[i]);
        configured[i] = true;
    }
    if config.listed > devices.nic_count {
        say!(
            "tandem-guest: warning: ip= lists {} addresses for {} NIC(s); the rest are unused",
            config.listed,
            devices.nic_count
        );
    }
    if !configured.contains(&true) {
        fail(format_args!("no virtio-net device has an address in ip="))
    }
    let mut sockets = Sockets::new(configured);
    let Some(mut service) = open(devices, &mut sockets) else {
        fail(format_args!("the service could not start"))
    };
    stack.announce();
    say!("tandem-guest: ready");
    loop {
        let seen = sys::device_irqs();
        let changed = stack.poll(&mut sockets);
        let served = service.serve(&mut sockets);
        if !changed && !served {
            stack.sleep(seen, &mut sockets);
        }
    }
}

/// `52:54:00:12:34:56`, as `ip link` and the VMM's `--net mac=` write it
/// (smoltcp's own Display uses dashes).
struct Mac([u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// ` gw=<addr>` when there is a gateway, else nothing.
struct Gateway(Option<Ipv4Address>);

impl fmt::Display for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(gw) => write!(f, " gw={gw}"),
            None => Ok(()),
        }
    }
}

fn fail(why: fmt::Arguments) -> ! {
    say!("tandem-guest: error: {}", why);
    super::idle::run()
}
