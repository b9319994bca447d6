//! Scheduling for the thread whose wakeups are the guest's pause: an FT primary's epoch thread
//! stops the vCPUs, captures them and lets them run again. On a host whose cores the vCPU threads
//! keep busy, the vCPU thread it woke first took the core from it before it had resumed the
//! others or timed the pause (the `resume` step: 0.7-2.5 ms under dirtying loads), and it waited
//! for its turn to end an epoch. A higher weight (nice -10) and the shortest slice under the
//! fair scheduler make both rare. A real-time policy did better still under load but cost idle
//! 4-vCPU guests a 50-100 ms pause in 3 runs of 4 (cause not found), so it is not used; see
//! docs/performance.md.

/// What [`latency_critical`] got for the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    /// The fair policy at nice -10 with the shortest slice (100 µs).
    Weighted,
    /// The fair policy with the shortest slice only (an unprivileged VMM).
    ShortSlice,
}

impl std::fmt::Display for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Granted::Weighted => write!(f, "at nice -10 with a 100 µs time slice"),
            Granted::ShortSlice => write!(f, "at nice 0 with a 100 µs time slice"),
        }
    }
}

/// The slice asked for under the fair policy: the kernel's smallest (100 µs, Linux 6.12+).
const SHORT_SLICE_NS: u64 = 100_000;

/// Gives the calling thread the best fair-policy hint the kernel allows, or the last refusal. A
/// hint only: correctness never depends on it.
pub fn latency_critical() -> std::io::Result<Granted> {
    let weighted = fair(-10);
    let slice = fair(0);
    set(&weighted)
        .map(|_| Granted::Weighted)
        .or_else(|_| set(&slice).map(|_| Granted::ShortSlice))
}

/// The fair policy at `nice` with the short slice.
fn fair(nice: i32) -> libc::sched_attr {
    libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        // A thread it starts gets the default policy, not this one.
        sched_flags: libc::SCHED_FLAG_RESET_ON_FORK as u64,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: SHORT_SLICE_NS,
        sched_deadline: 0,
        sched_period: 0,
    }
}

fn set(a: &libc::sched_attr) -> std::io::Result<()> {
    // SAFETY: sched_setattr reads `a`, a valid and fully initialised sched_attr of the size it
    // says, and changes only the calling thread (pid 0).
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, a as *const libc::sched_attr, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's policy, without the reset-on-fork flag.
    fn policy() -> i32 {
        // SAFETY: sched_getscheduler only reads the calling thread's policy.
        unsafe { libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK }
    }

    /// CAP_SYS_NICE (bit 23) in this process's effective set.
    fn has_cap_sys_nice() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .is_some_and(|caps| caps & (1 << 23) != 0)
    }

    /// The hint keeps the fair policy (never real-time) and, with CAP_SYS_NICE, the weight.
    #[test]
    fn the_epoch_thread_stays_fair_with_the_weight_it_was_granted() {
        let (granted, policy, nice) = std::thread::spawn(|| {
            let g = latency_critical();
            // SAFETY: getpriority only reads the calling thread's nice value (Linux: who 0 is
            // the calling thread).
            (g, policy(), unsafe {
                libc::getpriority(libc::PRIO_PROCESS, 0)
            })
        })
        .join()
        .expect("thread");
        assert_eq!(policy, libc::SCHED_OTHER);
        match granted {
            Ok(Granted::Weighted) => assert_eq!(nice, -10),
            Ok(Granted::ShortSlice) => assert_eq!(nice, 0),
            // A kernel before 6.12 takes the attr and ignores the slice; a refusal of both
            // comes from a sandbox around the test (a seccomp profile).
            Err(ref e) => eprintln!("SKIPPED (no scheduling hint on this kernel): {e}"),
        }
        if has_cap_sys_nice() {
            assert_eq!(
                granted.ok(),
                Some(Granted::Weighted),
                "CAP_SYS_NICE gets nice -10"
            );
        } else {
            eprintln!("NOTE: no CAP_SYS_NICE here: the short slice only ({granted:?})");
        }
    }
}
