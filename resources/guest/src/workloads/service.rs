//! What the network workloads share: bring up the devices and the stack, let
//! the workload open its sockets, say so, and run the poll loop on the BSP.

use core::fmt;
use core::mem::MaybeUninit;

use smoltcp::iface::SocketSet;
use smoltcp::wire::Ipv4Address;

use crate::net::{config, sockets, Stack};
use crate::once::Once;
use crate::virtio::{self, Devices};
use crate::{bootparams, logger, say, sys};

/// A workload that serves the network.
pub trait Service {
    /// Handle whatever the sockets hold; true when it did anything (so the
    /// stack is polled again before the CPU sleeps).
    fn serve(&mut self, sockets: &mut SocketSet<'static>) -> bool;
}

static STACK: Once<MaybeUninit<Stack>> = Once::uninit();

/// Bring up the network, call `open` to create the service and its sockets,
/// print `tandem-guest: ready`, and serve forever.  Errors are printed and
/// the CPU idles (no `ready`).
pub fn run<S: Service>(
    open: impl FnOnce(&'static mut Devices, &mut sockets::Pool, &mut SocketSet<'static>) -> Option<S>,
) -> ! {
    logger::init();
    let cmdline = bootparams::get().cmdline();
    let ip = match config::from_cmdline(cmdline) {
        Ok(ip) => ip,
        Err(e) => fail(format_args!("{e}")),
    };
    let devices = virtio::probe(cmdline);
    let Some(nic) = devices.nic.take() else {
        fail(format_args!("no virtio-net device"))
    };
    let (storage, mut pool) = sockets::take();
    let stack = STACK.put(Stack::new(nic, ip, storage));
    say!(
        "tandem-guest: net {} ip={} disks={}{}",
        Mac(stack.nic.mac()),
        stack.ip.cidr,
        devices.disk_count,
        Gateway(stack.ip.gateway)
    );
    let Some(mut service) = open(devices, &mut pool, &mut stack.sockets) else {
        fail(format_args!("the service could not start"))
    };
    stack.announce();
    say!("tandem-guest: ready");
    loop {
        let seen = sys::device_irqs();
        let changed = stack.poll();
        let served = service.serve(&mut stack.sockets);
        if !changed && !served {
            stack.sleep(seen);
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
