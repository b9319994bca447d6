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

use smoltcp::iface::{Config, Interface, PollResult, SocketSet, SocketStorage};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::{sys, time};
use config::IpConfig;
use nic::Nic;

/// smoltcp's clock: microseconds of TSC since boot.
pub fn now() -> Instant {
    let hz = time::tsc_hz() as u128;
    Instant::from_micros((time::rdtsc() as u128 * 1_000_000 / hz) as i64)
}

pub struct Stack {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub nic: Nic,
    pub ip: IpConfig,
    /// The device-interrupt count when the NIC's interrupt status was last
    /// acknowledged.
    irqs_acked: u64,
}

impl Stack {
    pub fn new(mut nic: Nic, ip: IpConfig, storage: &'static mut [SocketStorage<'static>]) -> Self {
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
        Stack {
            iface,
            sockets: SocketSet::new(storage),
            nic,
            ip,
            irqs_acked: sys::device_irqs(),
        }
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

    /// Move frames in and out; true when socket state may have changed.
    pub fn poll(&mut self) -> bool {
        self.iface.poll(now(), &mut self.nic, &mut self.sockets) != PollResult::None
    }

    /// Sleep until a device interrupt or the next timer tick, unless a frame
    /// already waits or a smoltcp timer is due.  `seen` is `sys::device_irqs()`
    /// read before the last `poll`: an interrupt after that read makes the
    /// sleep return at once, so no frame waits for the tick.
    pub fn sleep(&mut self, seen: u64) {
        if seen != self.irqs_acked {
            // The request that woke us has been answered by now: the
            // acknowledgement's two exits are off the request path.
            self.nic.ack_interrupt();
            self.irqs_acked = seen;
        }
        if self.nic.rx_pending() {
            return;
        }
        if self.iface.poll_delay(now(), &self.sockets) == Some(Duration::ZERO) {
            return;
        }
        // Later timers (retransmits, delayed ACKs: >= 10 ms) ride the tick.
        sys::wait_for_device_irq(seen);
    }
}
