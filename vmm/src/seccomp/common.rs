//! What every Rust thread needs: memory, futexes, signals, its own exit, time, randomness, and
//! writing log lines (standard error or `--log-file`). Also what creating a thread needs, since the
//! std runtime does it in the new thread under its parent's filter (name, rseq, robust list,
//! sigaltstack) and installing the child's own filter (prctl NO_NEW_PRIVS, seccomp).

use super::{allow, allow_arg, Rules};

/// The rules every thread kind starts from: what any Rust thread needs (the module doc says what).
pub fn rules() -> Rules {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            libc::SYS_brk,
            libc::SYS_mmap,
            libc::SYS_mprotect,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_sched_getaffinity,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_getrandom,
            libc::SYS_sysinfo,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_lseek,
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_restart_syscall,
            libc::SYS_rseq,
            libc::SYS_set_robust_list,
            libc::SYS_seccomp,
            // A panic that aborts raises SIGABRT on itself.
            libc::SYS_tgkill,
        ],
    );
    allow_arg(
        &mut r,
        libc::SYS_prctl,
        0,
        &[
            libc::PR_SET_NAME as u64,
            libc::PR_GET_NAME as u64,
            libc::PR_SET_NO_NEW_PRIVS as u64,
        ],
    );
    r
}

/// Creating threads: clone3 (clone on older glibc).
pub fn spawn_threads(r: &mut Rules) {
    allow(r, &[libc::SYS_clone, libc::SYS_clone3]);
}
