//! Announcing a guest's MAC from the host after it moved (migration, failover): a RARP broadcast
//! sent on the guest's behalf, as QEMU and vSphere do, so switches learn the new port at once
//! without the guest's help.

use super::tx::{TapTxSink, TxSink};
use super::MacAddr;
use std::os::fd::OwnedFd;

/// When to send the RARPs after arriving: a tap whose fd was just opened may not forward yet
/// (bridge port coming up), so one frame can be lost; like QEMU's self-announce, send a few,
/// spaced out.
pub const ANNOUNCE_SCHEDULE_MS: [u64; 4] = [0, 50, 150, 300];

/// Sends announcements for one NIC through its own duplicate of the tap fd.
pub struct Announcer {
    mac: MacAddr,
    tap: OwnedFd,
}

impl Announcer {
    /// Announces `mac` on `tap` (a tap fd opened with a vnet header).
    pub fn new(mac: MacAddr, tap: OwnedFd) -> Self {
        Announcer { mac, tap }
    }

    /// Broadcasts one RARP for the MAC.
    pub fn announce(&self) -> std::io::Result<()> {
        TapTxSink::new(self.tap.try_clone()?).send(&rarp_frame(self.mac))
    }

    /// Another handle on the same tap, for a thread of its own.
    pub fn try_clone(&self) -> std::io::Result<Announcer> {
        Ok(Announcer {
            mac: self.mac,
            tap: self.tap.try_clone()?,
        })
    }
}

/// Sends every announcer's RARP on [`ANNOUNCE_SCHEDULE_MS`] from a short-lived thread, so the
/// caller (resuming a VM) does not wait. Failures are logged: the guest's own traffic will teach
/// the switches anyway.
pub fn announce_in_background(announcers: Vec<(String, Announcer)>) {
    let spawned = std::thread::Builder::new()
        .name("tandem_announce".into())
        .spawn(move || {
            crate::virtio::worker::thread_started();
            let start = std::time::Instant::now();
            for ms in ANNOUNCE_SCHEDULE_MS {
                let at = std::time::Duration::from_millis(ms);
                if let Some(wait) = at.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                for (id, a) in &announcers {
                    if let Err(e) = a.announce() {
                        crate::guest_warn!("cannot announce NIC {id}: {e}");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        crate::guest_warn!("cannot start the announce thread: {e}");
    }
}

/// Minimum Ethernet frame length (without FCS): short frames are padded to it.
const MIN_FRAME: usize = 60;
const ETHERTYPE_RARP: u16 = 0x8035;
const RARP_REQUEST_REVERSE: u16 = 3;

/// A RARP "request reverse" broadcast from `mac` about itself.
pub fn rarp_frame(mac: MacAddr) -> [u8; MIN_FRAME] {
    let mut f = [0u8; MIN_FRAME];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&RARP_REQUEST_REVERSE.to_be_bytes());
    f[22..28].copy_from_slice(&mac.0); // sender hardware address; sender IP stays 0
    f[32..38].copy_from_slice(&mac.0); // target hardware address; target IP stays 0
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarp_is_a_broadcast_from_the_mac_about_itself() {
        let mac = MacAddr([0x52, 0x54, 0, 1, 2, 3]);
        let f = rarp_frame(mac);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac.0);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!(&f[22..28], &mac.0);
        assert_eq!(&f[28..32], &[0; 4]);
        assert_eq!(&f[32..38], &mac.0);
        assert!(f[42..].iter().all(|&b| b == 0));
    }
}
