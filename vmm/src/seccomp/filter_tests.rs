//! The filters as the kernel runs them: each test installs one kind's filter on a fresh thread,
//! with ENOSYS instead of the trap, and makes real syscalls on a bad fd. EBADF means the filter
//! let the call through (the kernel then refused the fd); ENOSYS means the filter refused it.

use super::{compile_with, ioctls, ThreadKind};
use seccompiler::SeccompAction;

const BAD_FD: libc::c_long = -1;
const REFUSED: i32 = libc::ENOSYS;
const LET_THROUGH: i32 = libc::EBADF;

/// Runs `calls` on a new thread under `kind`'s filter and returns what it returns.
fn under(kind: ThreadKind, calls: fn() -> Vec<i32>) -> Vec<i32> {
    std::thread::spawn(move || {
        let bpf = compile_with(kind, SeccompAction::Errno(REFUSED as u32)).unwrap();
        seccompiler::apply_filter(&bpf).unwrap();
        calls()
    })
    .join()
    .unwrap()
}

/// The errno of a syscall's return value (0 on success); call right after the syscall.
fn errno(rc: libc::c_long) -> i32 {
    if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

fn ioctl(request: u64) -> i32 {
    // SAFETY: a bad fd: the kernel fails the call before looking at the (null) argument.
    errno(unsafe { libc::syscall(libc::SYS_ioctl, BAD_FD, request, 0) })
}

fn syscall2(nr: libc::c_long, a: libc::c_long, b: libc::c_long) -> i32 {
    // SAFETY: only calls with a bad fd or harmless arguments are made through this.
    errno(unsafe { libc::syscall(nr, a, b, 0) })
}

/// A KVM ioctl Tandem never makes: a type-byte match would let it through.
const KVM_CREATE_DEVICE: u64 = 0xc00c_aee0;

#[test]
fn vcpu_threads_get_vcpu_ioctls_by_full_number_only() {
    let got = under(ThreadKind::Vcpu, || {
        vec![
            ioctl(ioctls::KVM_RUN()),
            ioctl(ioctls::KVM_GET_REGS()),
            ioctl(ioctls::KVM_SET_XSAVE()),
            ioctl(ioctls::KVM_CREATE_VM()),
            ioctl(ioctls::KVM_SET_USER_MEMORY_REGION()),
            ioctl(KVM_CREATE_DEVICE),
            ioctl(ioctls::TUNSETIFF()),
            syscall2(libc::SYS_openat, libc::AT_FDCWD as libc::c_long, 0),
            syscall2(
                libc::SYS_socket,
                libc::AF_INET.into(),
                libc::SOCK_STREAM.into(),
            ),
        ]
    });
    let want = [LET_THROUGH, LET_THROUGH, LET_THROUGH];
    assert_eq!(&got[..3], &want, "vCPU ioctls pass");
    assert!(got[3..].iter().all(|e| *e == REFUSED), "{got:?}");
}

#[test]
fn vcpu_threads_create_no_threads_and_make_no_worker_syscalls() {
    // Device activation runs on the VMM thread: a vCPU thread needs none of the refused calls.
    // A driver's reset after DRIVER_OK does stop the worker here: it writes the worker's stop
    // eventfd, joins it (futex, in common) and closes the eventfd (with std's F_GETFD check).
    let got = under(ThreadKind::Vcpu, || {
        vec![
            syscall2(libc::SYS_write, BAD_FD, 0),
            syscall2(libc::SYS_fcntl, BAD_FD, libc::F_GETFD.into()),
            syscall2(libc::SYS_close, BAD_FD, 0),
            syscall2(libc::SYS_clone3, 0, 0),
            syscall2(libc::SYS_clone, 0, 0),
            syscall2(libc::SYS_eventfd2, 0, 0),
            syscall2(libc::SYS_epoll_create1, 0, 0),
            syscall2(libc::SYS_epoll_wait, BAD_FD, 0),
            syscall2(libc::SYS_pread64, BAD_FD, 0),
            syscall2(libc::SYS_pwrite64, BAD_FD, 0),
            syscall2(libc::SYS_fdatasync, BAD_FD, 0),
            syscall2(libc::SYS_readv, BAD_FD, 0),
            syscall2(libc::SYS_fcntl, BAD_FD, libc::F_DUPFD_CLOEXEC.into()),
            syscall2(libc::SYS_dup, BAD_FD, 0),
        ]
    });
    assert_eq!(got[0], LET_THROUGH, "eventfd and log writes pass: {got:?}");
    assert_eq!(
        got[1], LET_THROUGH,
        "std's fd check on close passes: {got:?}"
    );
    assert_eq!(
        got[2], LET_THROUGH,
        "closing a stopped worker's eventfd: {got:?}"
    );
    assert!(got[3..].iter().all(|e| *e == REFUSED), "{got:?}");
}

#[test]
fn workers_get_no_ioctl_no_open_and_only_fd_cloning_fcntl() {
    let got = under(ThreadKind::Worker, || {
        vec![
            syscall2(libc::SYS_fcntl, BAD_FD, libc::F_DUPFD_CLOEXEC.into()),
            syscall2(libc::SYS_pread64, BAD_FD, 0),
            syscall2(libc::SYS_fcntl, BAD_FD, libc::F_SETLK.into()),
            syscall2(libc::SYS_fcntl, BAD_FD, libc::F_SETOWN.into()),
            ioctl(ioctls::TUNSETIFF()),
            ioctl(libc::FIONBIO),
            ioctl(ioctls::KVM_RUN()),
            syscall2(libc::SYS_openat, libc::AT_FDCWD as libc::c_long, 0),
            syscall2(
                libc::SYS_socket,
                libc::AF_UNIX.into(),
                libc::SOCK_STREAM.into(),
            ),
            syscall2(libc::SYS_clone3, 0, 0),
        ]
    });
    assert_eq!(&got[..2], &[LET_THROUGH, LET_THROUGH], "{got:?}");
    assert!(got[2..].iter().all(|e| *e == REFUSED), "{got:?}");
}

#[test]
fn api_threads_may_not_open_files_nor_make_inet_sockets_nor_touch_kvm() {
    let got = under(ThreadKind::Api, || {
        vec![
            syscall2(libc::SYS_accept4, BAD_FD, 0),
            ioctl(libc::FIONBIO),
            syscall2(libc::SYS_openat, libc::AT_FDCWD as libc::c_long, 0),
            syscall2(
                libc::SYS_socket,
                libc::AF_INET.into(),
                libc::SOCK_STREAM.into(),
            ),
            syscall2(libc::SYS_listen, BAD_FD, 0),
            ioctl(ioctls::KVM_RUN()),
            ioctl(ioctls::TUNSETIFF()),
        ]
    });
    assert_eq!(&got[..2], &[LET_THROUGH, LET_THROUGH], "{got:?}");
    assert!(got[2..].iter().all(|e| *e == REFUSED), "{got:?}");
}

#[test]
fn vmm_thread_builds_vms_but_gets_no_netlink_nor_unused_kvm_ioctls() {
    let got = under(ThreadKind::Vmm, || {
        vec![
            ioctl(ioctls::KVM_CREATE_VM()),
            ioctl(ioctls::KVM_GET_DIRTY_LOG()),
            ioctl(ioctls::TUNSETIFF()),
            syscall2(libc::SYS_listen, BAD_FD, 0),
            ioctl(KVM_CREATE_DEVICE),
            syscall2(
                libc::SYS_socket,
                libc::AF_NETLINK.into(),
                libc::SOCK_RAW.into(),
            ),
            syscall2(
                libc::SYS_socket,
                libc::AF_PACKET.into(),
                libc::SOCK_RAW.into(),
            ),
            syscall2(libc::SYS_mount, 0, 0),
        ]
    });
    assert_eq!(&got[..4], &[LET_THROUGH; 4], "{got:?}");
    assert!(got[4..].iter().all(|e| *e == REFUSED), "{got:?}");
}

#[test]
fn ft_and_migration_threads_stream_and_build_vms_but_never_listen() {
    for kind in [ThreadKind::Ft, ThreadKind::Migration] {
        let got = under(kind, || {
            vec![
                syscall2(libc::SYS_connect, BAD_FD, 0),
                syscall2(libc::SYS_sendto, BAD_FD, 0),
                ioctl(ioctls::KVM_CREATE_VCPU()),
                syscall2(libc::SYS_listen, BAD_FD, 0),
                syscall2(libc::SYS_kill, 0, 0),
                syscall2(libc::SYS_rt_sigaction, 0, 0),
                ioctl(KVM_CREATE_DEVICE),
            ]
        });
        assert_eq!(&got[..3], &[LET_THROUGH; 3], "{}: {got:?}", kind.name());
        assert!(
            got[3..].iter().all(|e| *e == REFUSED),
            "{}: {got:?}",
            kind.name()
        );
    }
}

#[test]
fn ft_threads_can_create_and_read_the_directory_arbiters_identity() {
    arbiter_identity_under(ThreadKind::Ft, "ft");
}

#[test]
fn migration_threads_can_claim_through_the_directory_arbiter() {
    // A migration given an arbiter reads its identity and claims the hand-over's generation on
    // its own thread.
    arbiter_identity_under(ThreadKind::Migration, "migration");
}

fn arbiter_identity_under(kind: ThreadKind, tag: &'static str) {
    let dir = std::env::temp_dir().join(format!(
        "tandem-seccomp-arbiter-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.clone();
    // Under the ft filter, as a pair thread would (create: O_EXCL temporary file + linkat).
    let got = std::thread::spawn(move || {
        let bpf = compile_with(kind, SeccompAction::Errno(REFUSED as u32)).unwrap();
        seccompiler::apply_filter(&bpf).unwrap();
        use ft::arbiter::{Arbiter, Claim, Outcome};
        let a = ft::arbiter::FileArbiter::open(&d).map_err(|e| e.to_string())?;
        let first = a.identity().map_err(|e| e.to_string())?;
        let again = a.identity().map_err(|e| e.to_string())?;
        let claim = Claim::here(ft::status::Role::Standalone, "seccomp test");
        match a.try_acquire(1, &claim).map_err(|e| e.to_string())? {
            Outcome::Won => {}
            o => return Err(format!("{o:?}")),
        }
        Ok::<_, String>((first, again))
    })
    .join()
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let (first, again) = got.unwrap_or_else(|e| panic!("refused under the {tag} filter: {e}"));
    assert_eq!(first, again);
}

#[test]
fn the_ft_epoch_thread_may_set_its_own_scheduling_but_no_other_threads() {
    for kind in [ThreadKind::Vmm, ThreadKind::Ft] {
        let got = under(kind, || {
            vec![
                // A null attr: the kernel answers EINVAL once the filter lets it through.
                syscall2(libc::SYS_sched_setattr, 0, 0),
                syscall2(libc::SYS_sched_setattr, 1, 0),
            ]
        });
        assert_eq!(got, vec![libc::EINVAL, REFUSED], "{}", kind.name());
    }
    let got = under(ThreadKind::Migration, || {
        vec![syscall2(libc::SYS_sched_setattr, 0, 0)]
    });
    assert_eq!(
        got,
        vec![REFUSED],
        "migration threads start no epoch thread"
    );
}
