//! Gratuitous ARP: tells the LAN (switches, neighbours' caches) that our IP
//! lives at our MAC.  Sent at start; after a migration or failover the VM
//! must announce itself again, as the new host's port is another one.

use smoltcp::phy::{Device, TxToken};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Ipv4Address,
};

/// Send one gratuitous ARP request (sender = target = `ip`).  Returns false
/// when the NIC had no TX buffer free.
pub fn send(device: &mut impl Device, mac: EthernetAddress, ip: Ipv4Address, now: Instant) -> bool {
    let Some(token) = device.transmit(now) else {
        return false;
    };
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: ip,
    };
    let eth = EthernetRepr {
        src_addr: mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    token.consume(eth.buffer_len() + arp.buffer_len(), |buf| {
        let mut frame = EthernetFrame::new_unchecked(buf);
        eth.emit(&mut frame);
        arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    });
    true
}
