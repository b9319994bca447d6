//! The network stack: smoltcp over the virtio NIC, run by the BSP in ring 3.
//!
//! Polled, not interrupt-driven: a device interrupt only wakes the CPU from
//! HLT (its ring-0 handler counts it and EOIs).  The loop is poll → serve →
//! poll while anything happens, then sleep until the next device interrupt
//! or timer tick (`Stack::sleep`), so an idle server costs ~100 wake-ups/s.

pub mod announce;
pub mod config;
pub mod nic;
pub mod sockets;

use core::mem::MaybeUninit;

use smoltcp::iface::{Config, Interface, PollResult};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::once::Once;
use crate::virtio::MAX_NICS;
use crate::{sys, time};
use config::IpConfig;
use nic::Nic;
use sockets::Sockets;

/// smoltcp's clock: microseconds of TSC since boot.
pub fn now() -> Instant {
    let hz = time::tsc_hz() as u128;
    Instant::from_micros((time::rdtsc() as u128 * 1_000_000 / hz) as i64)
}

/// A configured NIC: its driver and its smoltcp interface.  (Its sockets
/// are in `Sockets`, under the same index.)
pub struct Link {
    pub iface: Interface,
    pub nic: Nic,
    pub ip: IpConfig,
}

impl Link {
    fn new(mut nic: Nic, ip: IpConfig) -> Self {
        let mac = EthernetAddress(nic.mac());
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        // Initial TCP sequence numbers and ports come from this seed.
        config.random_seed = time::rdtsc();
        let mut iface = Interface::new(config, &mut nic, now());
        iface.update_ip_addrs(|addrs| {
            // Capacity is 2; the interface has none yet, so this fits.
            let _ = addrs.push(IpCidr::Ipv4(ip.cidr));
        });
        if let Some(gw) = ip.gateway {
            // Fails only when the route table (2 entries) is full; it is empty.
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        Link { iface, nic, ip }
    }

    pub fn mac(&self) -> EthernetAddress {
        EthernetAddress(self.nic.mac())
    }

    /// Send a gratuitous ARP for our address (at start, and whenever the VM
    /// may have moved to another host).
    pub fn announce(&mut self) -> bool {
        let (mac, ip) = (self.mac(), self.ip.cidr.address());
        announce::send(&mut self.nic, mac, ip, now())
    }
}

/// The links (several KiB each) live here rather than on the ring-3 stack.
static LINKS: [Once<MaybeUninit<Link>>; MAX_NICS] = [const { Once::uninit() }; MAX_NICS];

/// The configured NICs, polled together and slept on together: every device
/// interrupt has the same vector, so any NIC's frame wakes the loop.
pub struct Stack {
    /// Index = NIC index (as in `Sockets`); None: not configured.
    links: [Option<&'static mut Link>; MAX_NICS],
    /// The device-interrupt count when the NICs' interrupt status was last
    /// acknowledged.
    irqs_acked: u64,
}

impl Stack {
    pub fn new() -> Self {
        Stack {
            links: [const { None }; MAX_NICS],
            irqs_acked: sys::device_irqs(),
        }
    }

    /// Configure NIC `index` (< `MAX_NICS`; once per index) with `ip`.
    pub fn add(&mut self, index: usize, nic: Nic, ip: IpConfig) -> &mut Link {
        self.links[index].insert(LINKS[index].put(Link::new(nic, ip)))
    }

    /// Announce every link (see `Link::announce`).
    pub fn announce(&mut self) {
        for link in self.links.iter_mut().flatten() {
            link.announce();
        }
    }

    /// Move frames in and out on every link; true when socket state may
    /// have changed.
    pub fn poll(&mut self, sockets: &mut Sockets) -> bool {
        let mut changed = false;
        for (i, link) in self.links.iter_mut().enumerate() {
            if let (Some(link), Some(set)) = (link, sockets.set(i)) {
                changed |= link.iface.poll(now(), &mut link.nic, set) != PollResult::None;
            }
        }
        changed
    }

    /// Sleep until a device interrupt or the next timer tick, unless a frame
    /// already waits or a smoltcp timer is due on any link.  `seen` is
    /// `sys::device_irqs()` read before the last `poll`: an interrupt after
    /// that read makes the sleep return at once, so no frame waits for the
    /// tick.
    pub fn sleep(&mut self, seen: u64, sockets: &mut Sockets) {
        if seen != self.irqs_acked {
            // The request that woke us has been answered by now: the
            // acknowledgements' exits are off the request path.  Which NIC
            // interrupted is unknown (one vector): acknowledge them all (one
            // exit for a NIC with nothing to acknowledge).
            for link in self.links.iter_mut().flatten() {
                link.nic.ack_interrupt();
            }
            self.irqs_acked = seen;
        }
        for (i, link) in self.links.iter_mut().enumerate() {
            let (Some(link), Some(set)) = (link, sockets.set(i)) else {
                continue;
            };
            if link.nic.rx_pending() {
                return;
            }
            if link.iface.poll_delay(now(), set) == Some(Duration::ZERO) {
                return;
            }
        }
        // Later timers (retransmits, delayed ACKs: >= 10 ms) ride the tick.
        sys::wait_for_device_irq(seen);
    }
}
