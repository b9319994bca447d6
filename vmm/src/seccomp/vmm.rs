//! The main thread: the VMM loop. It creates and tears down VMs (KVM ioctls, guest memory mmap,
//! eventfds, opening kernels, disks, taps and serial files, the API socket and its lock), starts
//! every other thread, and signals vCPU threads. `ft.enable`/`ft.receive` check the arbiter here
//! (see [`super::ft`] for what an etcd request needs: nothing beyond files and sockets). Everything the threads it starts need must be
//! here too, since they inherit this filter. Still refused: mount, ptrace, execve, module loading,
//! namespaces, chroot, bpf, perf, keyctl, ... and sockets outside AF_UNIX/AF_INET/AF_INET6.

use super::{allow, allow_arg, allow_ioctls, common, ioctls, Rules};

/// AF_UNIX, AF_INET, AF_INET6.
pub const SOCKET_FAMILIES: [u64; 3] = [
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
];

/// Adds the VMM thread's syscalls, as this module's doc lists them, to `r`.
pub fn add(r: &mut Rules) {
    common::spawn_threads(r);
    files(r);
    sockets(r);
    own_scheduling(r);
    allow(
        r,
        &[
            libc::SYS_rt_sigaction,
            libc::SYS_kill,
            libc::SYS_flock,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_mkdir,
            libc::SYS_mkdirat,
            libc::SYS_chmod,
            libc::SYS_fchmod,
            libc::SYS_fchmodat,
            libc::SYS_chown,
            libc::SYS_fchown,
            libc::SYS_link,
            libc::SYS_linkat,
            libc::SYS_symlink,
            libc::SYS_utimensat,
            libc::SYS_umask,
            libc::SYS_listen,
        ],
    );
}

/// What building and running a VM needs; the migration threads need it too (the receiving side
/// builds the VM).
pub fn files(r: &mut Rules) {
    allow(
        r,
        &[
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_fcntl,
            libc::SYS_dup,
            libc::SYS_dup2,
            libc::SYS_dup3,
            libc::SYS_pipe2,
            libc::SYS_readv,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_ftruncate,
            libc::SYS_fallocate,
            libc::SYS_getdents64,
            libc::SYS_getcwd,
            libc::SYS_readlink,
            libc::SYS_readlinkat,
            libc::SYS_access,
            libc::SYS_faccessat,
            libc::SYS_faccessat2,
            libc::SYS_statfs,
            libc::SYS_fstatfs,
            libc::SYS_uname,
            libc::SYS_getuid,
            libc::SYS_geteuid,
            libc::SYS_eventfd2,
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_memfd_create,
            libc::SYS_timerfd_create,
            libc::SYS_timerfd_settime,
            libc::SYS_truncate,
            libc::SYS_sync_file_range,
            libc::SYS_copy_file_range,
            libc::SYS_sendfile,
            libc::SYS_getppid,
            libc::SYS_getgid,
            libc::SYS_getegid,
            libc::SYS_prlimit64,
            libc::SYS_getrlimit,
            libc::SYS_sched_getparam,
            libc::SYS_sched_getscheduler,
            libc::SYS_select,
            libc::SYS_pselect6,
            libc::SYS_lstat,
            libc::SYS_stat,
        ],
    );
    // vCPU ioctls first, KVM_RUN at their head: the BPF tests requests in this order, and vCPU
    // threads started here run every KVM_RUN through this filter too.
    allow_ioctls(r, &ioctls::kvm_vcpu());
    allow_ioctls(r, &ioctls::kvm_vm());
    allow_ioctls(r, &ioctls::tap_setup());
    allow_ioctls(r, &ioctls::fd_flags());
}

/// A scheduling hint on the calling thread only (pid 0), never on another: the FT epoch thread's
/// weight and short slice (`crate::sched`). Filters stack, so the epoch thread passes both this
/// (the VMM thread's, inherited) and the ft kind's.
pub fn own_scheduling(r: &mut Rules) {
    allow_arg(r, libc::SYS_sched_setattr, 0, &[0]);
}

/// Sockets of the allowed families, and their use.
pub fn sockets(r: &mut Rules) {
    allow_arg(r, libc::SYS_socket, 0, &SOCKET_FAMILIES);
    allow(
        r,
        &[
            libc::SYS_bind,
            libc::SYS_connect,
            libc::SYS_accept,
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_sendmsg,
            libc::SYS_shutdown,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_setsockopt,
            libc::SYS_getsockopt,
            libc::SYS_socketpair,
            libc::SYS_sendmmsg,
            libc::SYS_recvmmsg,
        ],
    );
}
