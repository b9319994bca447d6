//! Seccomp filters, one per kind of thread (`--seccomp=true`, the default; `false` turns them
//! off, `log` lets forbidden calls through and has the kernel log them, for auditing a new
//! deployment).
//!
//! Every Tandem thread installs the filter of its kind as its first action, on itself only (no
//! TSYNC). A thread created later inherits its creator's filter *and* adds its own, so a creator's
//! list must hold what its children need (the VMM thread creates everything, device workers
//! included: a guest's DRIVER_OK is handed from the vCPU to the VMM thread, so vCPU threads
//! create no thread at all).
//!
//! A syscall outside the list gets `SECCOMP_RET_TRAP`: the kernel sends SIGSYS, whose handler
//! ([`install_sigsys_handler`]) writes the thread name and syscall number to standard error and
//! ends the process with status [`SIGSYS_EXIT_CODE`]. That is as final as `KillProcess` but says
//! what went wrong, where `KillProcess` leaves only "killed by signal 31".
//!
//! The rules, kind by kind, are in this folder: [`api`], [`vmm`], [`vcpu`], [`worker`],
//! [`migration`], [`ft`]; [`common`] holds what every Rust thread needs and [`ioctls`] the ioctl
//! requests, by full number.

// Host-side: startup and self-test lines.
#![allow(clippy::disallowed_macros)]

pub mod api;
pub mod common;
#[cfg(test)]
mod filter_tests;
pub mod ft;
pub mod ioctls;
pub mod migration;
mod panic_report;
pub mod vcpu;
pub mod vmm;
pub mod worker;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::OnceLock;

/// Exit status of a process that made a forbidden syscall.
pub const SIGSYS_EXIT_CODE: i32 = 159;

/// The kinds of thread, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// `tandem_api`, `tandem_metrics` and tiny_http's threads under them.
    Api,
    /// The main thread: the VMM loop, which builds and tears down VMs.
    Vmm,
    /// `tandem_vcpu<N>`.
    Vcpu,
    /// Virtio device workers (`tandem_net_*`, `tandem_blk_*`).
    Worker,
    /// `tandem_migrate_out` / `tandem_migrate_in` and the ft stream threads under them.
    Migration,
    /// `tandem_ft_primary` / `tandem_ft_backup`, everything the ft crate starts under them, and
    /// the output releaser.
    Ft,
}

impl ThreadKind {
    /// Every kind, each with its own filter.
    pub const ALL: [ThreadKind; 6] = [
        ThreadKind::Api,
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Worker,
        ThreadKind::Migration,
        ThreadKind::Ft,
    ];

    /// The kind's short name, for logs and the seccomp report.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Api => "api",
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Worker => "worker",
            ThreadKind::Migration => "migration",
            ThreadKind::Ft => "ft",
        }
    }

    fn rules(self) -> Rules {
        let mut r = common::rules();
        match self {
            ThreadKind::Api => api::add(&mut r),
            ThreadKind::Vmm => vmm::add(&mut r),
            ThreadKind::Vcpu => vcpu::add(&mut r),
            ThreadKind::Worker => worker::add(&mut r),
            ThreadKind::Migration => migration::add(&mut r),
            ThreadKind::Ft => ft::add(&mut r),
        }
        r
    }
}

/// Syscall number → the rules under which it is allowed (an empty list allows it outright).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// Allows each syscall outright.
pub(crate) fn allow(r: &mut Rules, syscalls: &[libc::c_long]) {
    for s in syscalls {
        r.insert(*s, vec![]);
    }
}

/// Allows `syscall` when argument `arg` equals one of `values` (32-bit compare), on top of what
/// was allowed before.
pub(crate) fn allow_arg(r: &mut Rules, syscall: libc::c_long, arg: u8, values: &[u64]) {
    if r.get(&syscall).is_some_and(|e| e.is_empty()) {
        return; // already allowed outright
    }
    let entry = r.entry(syscall).or_default();
    for v in values {
        entry.push(rule(arg, SeccompCmpOp::Eq, *v));
    }
}

/// Allows `ioctl` for these full request numbers (see [`ioctls`]), on top of what was allowed.
pub(crate) fn allow_ioctls(r: &mut Rules, requests: &[u64]) {
    let entry = r.entry(libc::SYS_ioctl).or_default();
    for q in requests {
        let rule = rule(1, SeccompCmpOp::Eq, *q);
        if !entry.contains(&rule) {
            entry.push(rule);
        }
    }
}

fn rule(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompRule {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )
    .expect("valid condition")])
    .expect("valid rule")
}

/// What `--seccomp` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No filters (`false`).
    Off,
    /// A forbidden syscall ends the process through the SIGSYS handler (`true`, the default).
    Trap,
    /// A forbidden syscall goes through and the kernel logs it (`log`: dmesg/audit show
    /// `type=1326 ... comm="THREAD" ... syscall=NR`), for auditing a deployment.
    Log,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "true" | "on" => Ok(Mode::Trap),
            "false" | "off" => Ok(Mode::Off),
            "log" => Ok(Mode::Log),
            _ => Err(format!("'{s}': use true, false or log")),
        }
    }
}

/// Compiles the filter of `kind` to BPF for x86_64; a syscall off its list gets `on_forbidden`.
pub fn compile_with(
    kind: ThreadKind,
    on_forbidden: SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    let filter = SeccompFilter::new(
        kind.rules(),
        on_forbidden,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    filter.try_into()
}

/// Compiles the filter of `kind` as `--seccomp=true` installs it.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, seccompiler::BackendError> {
    compile_with(kind, SeccompAction::Trap)
}

/// 0 off, 1 trap, 2 log.
static MODE: AtomicU8 = AtomicU8::new(0);
static SELFTEST: OnceLock<Option<String>> = OnceLock::new();

/// Sets the mode for the threads that start from now on (the `tandem` binary does this from
/// `--seccomp`; library users and unit tests run unfiltered). `selftest` names a kind whose
/// threads make a forbidden syscall right after installing their filter (`TANDEM_SECCOMP_SELFTEST`,
/// for the integration tests only); `<kind>:spawn` makes them try to start a thread instead.
pub fn configure(mode: Mode, selftest: Option<String>) {
    if mode != Mode::Off {
        cap_malloc_arenas();
        panic_report::install();
    }
    MODE.store(
        match mode {
            Mode::Off => 0,
            Mode::Trap => 1,
            Mode::Log => 2,
        },
        Ordering::SeqCst,
    );
    let _ = SELFTEST.set(selftest);
}

/// glibc's malloc, when the 9th thread needs an arena, counts CPUs by opening
/// `/sys/devices/system/cpu/online` — an `openat(2)` from whatever thread that is (an API or a
/// worker thread, neither of which may open files). With `M_ARENA_MAX` set it never counts, so
/// set it to glibc's own default (8 per CPU) while opening files is still allowed.
fn cap_malloc_arenas() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = libc::c_int::try_from(cpus.saturating_mul(8)).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes a malloc tunable; it is called before any filter is on.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
}

/// The mode set by [`configure`].
pub fn mode() -> Mode {
    match MODE.load(Ordering::SeqCst) {
        1 => Mode::Trap,
        2 => Mode::Log,
        _ => Mode::Off,
    }
}

/// Installs the filter of `kind` on the calling thread unless filters are off. A filter that
/// cannot be installed ends the process: running unconfined when asked not to is not an option.
pub fn apply(kind: ThreadKind) {
    let action = match mode() {
        Mode::Off => None,
        Mode::Trap => Some(SeccompAction::Trap),
        Mode::Log => Some(SeccompAction::Log),
    };
    if let Some(action) = action {
        let result = compile_with(kind, action)
            .map_err(|e| e.to_string())
            .and_then(|p| seccompiler::apply_filter(&p).map_err(|e| e.to_string()));
        if let Err(e) = result {
            log::error!("cannot install the {} seccomp filter: {e}", kind.name());
            std::process::exit(1);
        }
        panic_report::confined(kind);
    }
    let selftest = SELFTEST.get().and_then(|s| s.as_deref());
    if selftest.and_then(|s| s.strip_suffix(":spawn")) == Some(kind.name()) {
        // Thread creation (clone3) is not on every list: a vCPU thread must never create one.
        // Raw, not through pthread_create, which blocks signals around clone3 so that SIGSYS
        // would kill the process before the handler could name the thread and the syscall.
        // SAFETY: clone3 with a null argument block of size 0 creates nothing; the kernel
        // rejects it with EINVAL.
        let rc = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
        let err = std::io::Error::last_os_error();
        log::warn!(
            "seccomp self-test: the {} thread called clone3 and survived (rc {rc}: {err})",
            kind.name()
        );
    }
    if selftest == Some(kind.name()) {
        // mount(2) is on no list. Null arguments make it fail harmlessly when unfiltered.
        // SAFETY: null pointers are valid arguments; the kernel rejects them with EFAULT.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount,
                std::ptr::null::<u8>(),
                std::ptr::null::<u8>(),
                std::ptr::null::<u8>(),
                0,
                std::ptr::null::<u8>(),
            )
        };
        let err = std::io::Error::last_os_error();
        log::warn!(
            "seccomp self-test: the {} thread called mount(2) and survived (rc {rc}: {err})",
            kind.name()
        );
    }
}

/// A second fd the SIGSYS handler writes its report to (the `--log-file`), or -1.
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// Has the SIGSYS handler write its report to (a duplicate of) `file` as well as to stderr.
pub fn report_also_to(file: &std::fs::File) {
    if let Ok(dup) = file.try_clone() {
        use std::os::fd::IntoRawFd;
        // Kept open for the life of the process: the handler may run at any time.
        REPORT_FD.store(dup.into_raw_fd(), Ordering::SeqCst);
    }
}

/// Installs the SIGSYS handler that reports a forbidden syscall and ends the process.
pub fn install_sigsys_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler only uses async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            sigsys_handler;
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

extern "C" fn sigsys_handler(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // siginfo_t for SIGSYS: si_signo, si_errno, si_code (3 ints + padding), then
    // _sigsys { void *_call_addr; int _syscall; unsigned int _arch; }.
    // SAFETY: the kernel hands a valid siginfo_t; the offsets are x86_64's.
    let nr = unsafe {
        let base = info as *const u8;
        std::ptr::read_unaligned(base.add(16 + 8) as *const i32)
    };
    let mut buf = [0u8; 400];
    let mut n = 0;
    let mut put = |s: &[u8]| {
        for b in s {
            if n < buf.len() {
                buf[n] = *b;
                n += 1;
            }
        }
    };
    put(b"tandem: seccomp: thread '");
    let mut comm = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into comm.
    unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr()) };
    let len = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    put(&comm[..len]);
    put(b"' made forbidden syscall ");
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    let mut v = nr.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[i..]);
    // A forbidden open says what it tried to open: the path names the culprit far better than
    // the syscall's number.
    let path_reg = match i64::from(nr) {
        libc::SYS_openat => Some(libc::REG_RSI),
        libc::SYS_open => Some(libc::REG_RDI),
        _ => None,
    };
    if let (Some(reg), false) = (path_reg, ctx.is_null()) {
        // SAFETY: for a SA_SIGINFO handler the kernel passes a valid ucontext_t; the trapped
        // syscall's arguments are in its saved registers.
        let ptr = unsafe { (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[reg as usize] };
        put(b" (path \"");
        let p = ptr as *const u8;
        if !p.is_null() {
            for k in 0..120 {
                // SAFETY: the thread passed this pointer to open as a NUL-terminated path; we
                // read it only up to its NUL (or 120 bytes).
                let b = unsafe { std::ptr::read_volatile(p.add(k)) };
                if b == 0 {
                    break;
                }
                put(&[b]);
            }
        }
        put(b"\")");
    }
    put(b" (see ausyscall or /usr/include/asm/unistd_64.h); exiting\n");
    let also = REPORT_FD.load(Ordering::Relaxed);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; an atomic load is too.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        if also >= 0 {
            libc::write(also, buf.as_ptr().cast(), n);
        }
        libc::_exit(SIGSYS_EXIT_CODE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_for_x86_64() {
        for kind in ThreadKind::ALL {
            let bpf = compile(kind).unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
            assert!(!bpf.is_empty(), "{}", kind.name());
            // The kernel refuses programs over BPF_MAXINSNS.
            assert!(
                bpf.len() <= 4096,
                "{}: {} instructions",
                kind.name(),
                bpf.len()
            );
        }
    }

    #[test]
    fn no_kind_allows_mount() {
        for kind in ThreadKind::ALL {
            assert!(!kind.rules().contains_key(&libc::SYS_mount));
        }
    }
}
