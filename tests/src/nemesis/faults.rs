//! The nemesis's faults: what it does to a protected pair, and how it puts the world back (links,
//! heartbeat path, arbiter storage, stopped processes) before the survivor is found.

use super::cluster::Cluster;
use crate::ft::signal;
use std::process::Command;
use std::time::Duration;

/// One fault, injected while the client INCrements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the primary's VMM.
    KillPrimary,
    /// SIGKILL the backup's VMM.
    KillBackup,
    /// SIGSTOP the primary past the failure timeout, then SIGCONT.
    StopPrimary,
    /// SIGSTOP the backup past the failure timeout, then SIGCONT.
    StopBackup,
    /// Take the host-to-host link (the stream) down for a while.
    CutStream,
    /// Drop the UDP heartbeats on the LAN for a while (the stream stays up).
    CutHeartbeats,
    /// Both at once: the members cannot hear each other at all.
    CutBoth,
    /// The stream cut while the arbiter's storage is gone: nobody may win until it is back.
    ArbiterDownDuringCut,
    /// `ft.disable` on the primary.
    Disable,
    /// `ft.disable` on the primary with the stream cut.
    DisableDuringCut,
    /// `ft.promote` on the backup.
    Promote,
    /// `vm.reboot` on the primary (the backup re-syncs).
    Reboot,
    /// `vm.reboot` on the primary with the stream cut.
    RebootDuringCut,
    /// `vm.pause`, a moment, `vm.resume` on the primary.
    PauseResume,
}

/// Every fault, for the seeded choice.
pub const ALL: [Fault; 14] = [
    Fault::KillPrimary,
    Fault::KillBackup,
    Fault::StopPrimary,
    Fault::StopBackup,
    Fault::CutStream,
    Fault::CutHeartbeats,
    Fault::CutBoth,
    Fault::ArbiterDownDuringCut,
    Fault::Disable,
    Fault::DisableDuringCut,
    Fault::Promote,
    Fault::Reboot,
    Fault::RebootDuringCut,
    Fault::PauseResume,
];

/// The UDP heartbeats' ports are fresh per pair: drop every datagram to the LAN's heartbeat
/// range on `slot`'s host.
fn heartbeats(c: &Cluster, slot: usize, drop: bool) {
    let ns = c.net.ns(c.slots[slot].node);
    let op = if drop { "-I" } else { "-D" };
    let status = Command::new("ip")
        .args(["netns", "exec", &ns, "iptables", op, "INPUT", "-p", "udp"])
        .args(["--dport", "8100:8499", "-j", "DROP"])
        .status()
        .expect("run iptables");
    assert!(status.success(), "iptables {op} on {ns}");
}

fn arbiter_storage(c: &Cluster, available: bool) {
    let off = c.arbiter.with_extension("off");
    let (from, to) = if available {
        (&off, &c.arbiter)
    } else {
        (&c.arbiter, &off)
    };
    std::fs::rename(from, to).expect("move the arbiter's directory");
}

/// Does `f` to the pair whose primary is slot `p`; leaves the world as it found it (links up,
/// heartbeats flowing, arbiter storage back, no process stopped) when it returns.
pub fn inject(c: &mut Cluster, p: usize, f: Fault) {
    let b = 1 - p;
    let t = Duration::from_millis(c.timeout_ms);
    let cut = |c: &Cluster, down: bool| c.net.set_link(c.slots[p].node, !down);
    match f {
        Fault::KillPrimary => c.stop_vmm(p),
        Fault::KillBackup => c.stop_vmm(b),
        Fault::StopPrimary | Fault::StopBackup => {
            let who = if f == Fault::StopPrimary { p } else { b };
            signal(c.member(who), "STOP");
            std::thread::sleep(t * 4);
            signal(c.member(who), "CONT");
        }
        Fault::CutStream => {
            cut(c, true);
            std::thread::sleep(t * 4);
            cut(c, false);
        }
        Fault::CutHeartbeats => {
            heartbeats(c, p, true);
            std::thread::sleep(t * 3);
            heartbeats(c, p, false);
        }
        Fault::CutBoth => {
            cut(c, true);
            heartbeats(c, p, true);
            std::thread::sleep(t * 4);
            heartbeats(c, p, false);
            cut(c, false);
        }
        Fault::ArbiterDownDuringCut => {
            arbiter_storage(c, false);
            cut(c, true);
            std::thread::sleep(t * 4);
            arbiter_storage(c, true);
            std::thread::sleep(t * 2);
            cut(c, false);
        }
        Fault::Disable => {
            c.member(p).put_ok("ft.disable", None);
            // ft.disable answers once the pair has ended.
            let s = crate::ft::ft_status(c.member(p));
            assert_eq!(s["role"], "standalone", "right after ft.disable: {s}");
        }
        Fault::DisableDuringCut => {
            cut(c, true);
            c.member(p).put_ok("ft.disable", None);
            std::thread::sleep(t * 4);
            cut(c, false);
        }
        Fault::Promote => {
            // Refused (409) only if the backup has nothing complete yet: it has, it is protected.
            c.member(b).put_ok("ft.promote", None);
            // ft.promote answers before the backup stops receiving: the pair must not look
            // protected to the recovery that follows.
            let start = std::time::Instant::now();
            while c
                .look(b, Duration::from_secs(2))
                .is_some_and(|(s, _)| s["role"] == "backup" && s["state"] == "protected")
            {
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "the promoted backup still says protected\n{}",
                    c.logs()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Fault::Reboot => {
            let (code, v) = c.member(p).put("vm.reboot", None);
            assert!(code == 204, "vm.reboot: {code} {v}");
        }
        Fault::RebootDuringCut => {
            cut(c, true);
            // The backup cannot confirm: the primary must win the next generation first (204),
            // or the backup won first and the primary is fenced (409).
            let (code, v) = c.member(p).put("vm.reboot", None);
            assert!(matches!(code, 204 | 409), "vm.reboot: {code} {v}");
            std::thread::sleep(t * 4);
            cut(c, false);
        }
        Fault::PauseResume => {
            c.member(p).put_ok("vm.pause", None);
            std::thread::sleep(t);
            c.member(p).put_ok("vm.resume", None);
        }
    }
}
