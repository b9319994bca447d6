//! vCPU threads: each runs KVM_RUN in a loop, dispatches port I/O to the bus, and parks when asked
//! to pause. The VMM interrupts KVM_RUN with a signal ([`kick_signal`]) and re-sends it until the
//! thread acknowledges, which covers a signal landing just before the thread enters KVM_RUN.

use super::bell::ParkBell;
use super::internal_error::InternalError;
use devices::bus::PioBus;
use devices::mmio_bus::MmioBus;
use devices::{GuestEvent, GuestEventHandler};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op kick handler once per process (an installed handler makes the signal
/// interrupt the ioctl with EINTR instead of killing the process).
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Per-vCPU exit counters, read by `vm.counters`.
#[derive(Default, Debug)]
pub struct VcpuCounters {
    /// Every exit from KVM_RUN.
    pub exits: AtomicU64,
    /// Port I/O exits (IN and OUT).
    pub io_exits: AtomicU64,
    /// MMIO exits (reads and writes).
    pub mmio_exits: AtomicU64,
    /// Port accesses no device claimed (reads see 0xff bytes).
    pub unhandled_io: AtomicU64,
    /// MMIO accesses no device claimed (reads see 0xff bytes).
    pub unhandled_mmio: AtomicU64,
}

/// Work a parked vCPU thread runs on its own vCPU fd (state capture), since the thread owns
/// the fd and `KVM_RUN` needs it exclusively; every vCPU then captures in parallel.
pub type VcpuJob = Box<dyn FnOnce(&VcpuFd) + Send>;

#[derive(Default)]
struct Control {
    pause: bool,
    stop: bool,
    parked: bool,
    job: Option<VcpuJob>,
}

/// What the VMM and one vCPU thread share.
#[derive(Default)]
pub struct VcpuShared {
    control: Mutex<Control>,
    /// Tells the VMM the thread parked.
    changed: Condvar,
    /// Wakes the thread while parked; one for all of the VM's vCPUs.
    bell: Arc<ParkBell>,
    /// Mirrors `pause || stop` so the run loop can check without the lock.
    attention: AtomicBool,
    /// This vCPU's exit counters.
    pub counters: VcpuCounters,
}

/// How a vCPU thread tells the VMM it stopped on an error.
pub type VcpuFailureHandler = Arc<dyn Fn(u8, String) + Send + Sync>;

/// A vCPU whose thread runs.
pub struct VcpuHandle {
    /// The vCPU's index (also its APIC ID).
    pub id: u8,
    /// The pause and stop requests the thread obeys, and its counters.
    pub shared: Arc<VcpuShared>,
    /// The vCPU's fd: its thread holds the lock while in KVM_RUN and handling the exit, so that
    /// another thread can read a parked vCPU's state without waking it (see [`VcpuHandle::with_fd`]).
    fd: Arc<Mutex<VcpuFd>>,
    thread: Option<JoinHandle<()>>,
}

/// vCPU thread errors.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The vCPU thread cannot be spawned.
    #[error("cannot spawn the thread of vCPU {id}")]
    Spawn {
        /// The vCPU's index.
        id: u8,
        /// What `thread::Builder::spawn` said.
        #[source]
        source: std::io::Error,
    },
    /// A vCPU (the first number) did not park within the time (the second) when asked to.
    #[error("vCPU {0} did not stop within {1:?}")]
    Timeout(u8, Duration),
}

/// Everything a vCPU thread needs.
pub struct VcpuContext {
    /// The vCPU's index (also its APIC ID).
    pub id: u8,
    /// The KVM vCPU, set up for boot or restored.
    pub fd: VcpuFd,
    /// The port I/O bus that IN/OUT exits go to.
    pub pio: Arc<PioBus>,
    /// The MMIO bus that MMIO exits go to.
    pub mmio: Arc<MmioBus>,
    /// Where the devices report guest resets and power-offs.
    pub guest_events: GuestEventHandler,
    /// Called once when the thread stops on an error (KVM_RUN failed, an unhandled exit).
    pub on_failure: VcpuFailureHandler,
    /// The VM's bell, which wakes its parked vCPU threads.
    pub bell: Arc<ParkBell>,
}

impl VcpuHandle {
    /// Starts the thread; the vCPU runs at once unless `start_paused`.
    pub fn spawn(ctx: VcpuContext, start_paused: bool) -> Result<Self, VcpuError> {
        let VcpuContext {
            id,
            fd,
            pio,
            mmio,
            guest_events,
            on_failure,
            bell,
        } = ctx;
        let shared = Arc::new(VcpuShared {
            bell,
            ..VcpuShared::default()
        });
        if start_paused {
            shared.update(|c| c.pause = true);
        }
        let s = shared.clone();
        let fd = Arc::new(Mutex::new(fd));
        let env = ExitEnv {
            id,
            pio,
            mmio,
            guest_events,
        };
        let thread_fd = fd.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tandem_vcpu{id}"))
            .spawn(move || {
                crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu);
                run_loop(env, &thread_fd, s, on_failure)
            })
            .map_err(|source| VcpuError::Spawn { id, source })?;
        Ok(VcpuHandle {
            id,
            shared,
            fd,
            thread: Some(thread),
        })
    }

    /// Runs `f` on the vCPU's fd from the calling thread; only while the vCPU is parked
    /// ([`VcpuHandle::pause`]), else this waits until it leaves KVM_RUN. Saves the parked
    /// thread a wakeup (a state capture's ioctls need no particular thread).
    pub fn with_fd<T>(&self, f: impl FnOnce(&VcpuFd) -> T) -> T {
        f(&self.fd.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn kick(&self) {
        if let Some(t) = &self.thread {
            // ESRCH only means the thread has already exited, which is what we want anyway.
            let _ = t.kill(kick_signal());
        }
    }

    /// Asks the thread to park and waits until it has.
    pub fn pause(&self, timeout: Duration) -> Result<(), VcpuError> {
        self.ask_pause();
        self.wait_parked(timeout)
    }

    /// Asks the thread to park and kicks it out of KVM_RUN, without waiting: pausing several
    /// vCPUs asks them all first, so that they stop in parallel.
    pub fn ask_pause(&self) {
        // No ring: a parked thread stays parked, and a running one is kicked.
        self.shared.update(|c| c.pause = true);
        // A thread inside KVM_RUN sees the flag only once it exits: kick it now, not after
        // wait_for's first 1 ms wait (every FT checkpoint pauses, so that wait was most of it).
        self.kick();
    }

    /// Waits until the thread has parked after [`VcpuHandle::ask_pause`].
    pub fn wait_parked(&self, timeout: Duration) -> Result<(), VcpuError> {
        self.wait_for(timeout, |c| c.parked || self.finished())
    }

    /// Hands `job` to the thread, which runs it once parked and the VM's bell has rung (a
    /// running thread, once it parks). A thread that has exited drops the job unrun.
    pub fn post_unrung(&self, job: VcpuJob) {
        self.shared.update(|c| c.job = Some(job));
    }

    /// Lets a parked thread run again; a job posted for this pause and not run yet is dropped.
    pub fn resume(&self) {
        self.resume_unrung();
        self.shared.bell.ring();
    }

    /// [`VcpuHandle::resume`] that takes effect when the VM's bell next rings: resuming every
    /// vCPU is then one wakeup ([`ParkBell`]).
    pub fn resume_unrung(&self) {
        self.shared.update(|c| {
            c.pause = false;
            c.job = None;
        });
    }

    /// Stops the thread for good and joins it.
    pub fn stop(&mut self, timeout: Duration) -> Result<(), VcpuError> {
        self.shared.set(|c| c.stop = true);
        self.wait_for(timeout, |_| self.finished())?;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&Control) -> bool,
    ) -> Result<(), VcpuError> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let c = self.shared.lock();
                if done(&c) {
                    return Ok(());
                }
                let _ = self
                    .shared
                    .changed
                    .wait_timeout(c, Duration::from_millis(1));
            }
            if Instant::now() >= deadline {
                return Err(VcpuError::Timeout(self.id, timeout));
            }
            self.kick();
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop(Duration::from_secs(5));
        }
    }
}

impl VcpuShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the requests and wakes the thread if parked.
    fn set(&self, f: impl FnOnce(&mut Control)) {
        self.update(f);
        self.bell.ring();
    }

    /// Changes the requests; a parked thread sees them when the VM's bell next rings.
    fn update(&self, f: impl FnOnce(&mut Control)) {
        let mut c = self.lock();
        f(&mut c);
        self.attention.store(c.pause || c.stop, Ordering::SeqCst);
    }

    /// Parks while paused, running posted jobs; returns true when the thread must exit.
    fn check_in(&self, fd: &Mutex<VcpuFd>) -> bool {
        let mut c = self.lock();
        while c.pause && !c.stop {
            if !c.parked {
                c.parked = true;
                self.changed.notify_all();
            }
            if let Some(job) = c.job.take() {
                drop(c);
                job(&fd.lock().unwrap_or_else(|p| p.into_inner()));
                c = self.lock();
                continue;
            }
            // Read under the requests' lock: a change made after it rings past `seen`, so no
            // wakeup is lost between here and the wait.
            let seen = self.bell.rung_so_far();
            drop(c);
            self.bell.wait_past(seen);
            c = self.lock();
        }
        c.parked = false;
        c.stop
    }
}

fn run_loop(
    env: ExitEnv,
    fd: &Mutex<VcpuFd>,
    shared: Arc<VcpuShared>,
    on_failure: VcpuFailureHandler,
) {
    let id = env.id;
    // The last exit was an access KVM completes only on the next KVM_RUN.
    let mut pending = false;
    loop {
        if shared.attention.load(Ordering::SeqCst) {
            if pending {
                let mut guard = fd.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(err) = complete_pending(&mut guard, &env, &shared.counters) {
                    devices::guest_error!("vCPU {id}: {err}");
                    (on_failure)(id, err);
                    return;
                }
            }
            if shared.check_in(fd) {
                return;
            }
        }
        // Held through KVM_RUN and the exit's handling (the exit borrows the fd's run area);
        // released before parking, so that a parked vCPU's fd is free for `with_fd`.
        let mut guard = fd.lock().unwrap_or_else(|p| p.into_inner());
        // This KVM_RUN completes what the last exit left (an EINTR one included).
        pending = false;
        match guard.run() {
            Ok(exit) => {
                pending = completes_on_next_run(&exit);
                let err = match handle_exit(exit, &env, &shared.counters) {
                    None => continue,
                    Some(stop) => stop.describe(&mut guard),
                };
                devices::guest_error!("vCPU {id}: {err}");
                (on_failure)(id, err);
                return;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                let err = format!("KVM_RUN failed: {e}");
                devices::guest_error!("vCPU {id}: {err}");
                (on_failure)(id, err);
                return;
            }
        }
    }
}

/// Whether KVM finishes `exit`'s access only on the next KVM_RUN: it stores a port or MMIO
/// read's data in the guest's register, and moves the guest past the instruction, then.
fn completes_on_next_run(exit: &VcpuExit) -> bool {
    matches!(
        exit,
        VcpuExit::IoIn(..) | VcpuExit::IoOut(..) | VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..)
    )
}

/// Lets KVM finish the access the last exit handed us without running any guest instruction
/// (KVM_RUN with `immediate_exit`), as KVM's API asks before the state is saved: state read
/// before it points at the instruction again, so a restored guest (snapshot, migration, FT
/// failover) would repeat a port write or lose a read the device already answered. Completing a
/// string access may exit again for its next part, which is handled like any exit.
fn complete_pending(fd: &mut VcpuFd, env: &ExitEnv, counters: &VcpuCounters) -> Result<(), String> {
    fd.set_kvm_immediate_exit(1);
    let done = loop {
        match fd.run() {
            Ok(exit) => {
                if let Some(stop) = handle_exit(exit, env, counters) {
                    break Err(stop.describe(fd));
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => break Ok(()),
            Err(e) => break Err(format!("KVM_RUN to complete an access failed: {e}")),
        }
    };
    fd.set_kvm_immediate_exit(0);
    done
}

/// What exit handling needs, apart from the vCPU fd itself.
struct ExitEnv {
    id: u8,
    pio: Arc<PioBus>,
    mmio: Arc<MmioBus>,
    guest_events: GuestEventHandler,
}

/// Why a vCPU cannot go on after an exit.
enum Stop {
    /// The message says why.
    Failed(String),
    /// KVM_EXIT_INTERNAL_ERROR: the details are in the vCPU's kvm_run.
    InternalError,
}

impl Stop {
    /// What went wrong, in words (an internal error's details are in the vCPU's kvm_run).
    fn describe(self, fd: &mut VcpuFd) -> String {
        match self {
            Stop::Failed(err) => err,
            Stop::InternalError => InternalError::from_run(fd.get_kvm_run()).to_string(),
        }
    }
}

/// Handles one exit; says why when the vCPU cannot go on.
fn handle_exit(exit: VcpuExit, ctx: &ExitEnv, counters: &VcpuCounters) -> Option<Stop> {
    counters.exits.fetch_add(1, Ordering::Relaxed);
    match exit {
        VcpuExit::IoIn(port, data) => {
            counters.io_exits.fetch_add(1, Ordering::Relaxed);
            if !ctx.pio.read(port, data) {
                counters.unhandled_io.fetch_add(1, Ordering::Relaxed);
            }
        }
        VcpuExit::IoOut(port, data) => {
            counters.io_exits.fetch_add(1, Ordering::Relaxed);
            if !ctx.pio.write(port, data) {
                counters.unhandled_io.fetch_add(1, Ordering::Relaxed);
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            counters.mmio_exits.fetch_add(1, Ordering::Relaxed);
            // Unclaimed addresses read 0xff, as on an empty bus.
            if !ctx.mmio.read(addr, data) {
                counters.unhandled_mmio.fetch_add(1, Ordering::Relaxed);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            counters.mmio_exits.fetch_add(1, Ordering::Relaxed);
            if !ctx.mmio.write(addr, data) {
                counters.unhandled_mmio.fetch_add(1, Ordering::Relaxed);
            }
        }
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => {}
        VcpuExit::Shutdown => {
            // A triple fault: real hardware resets.
            devices::guest_warn!("vCPU {}: triple fault, resetting the VM", ctx.id);
            (ctx.guest_events)(GuestEvent::Reset);
        }
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => (ctx.guest_events)(GuestEvent::PowerOff),
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => (ctx.guest_events)(GuestEvent::Reset),
            other => return Some(Stop::Failed(format!("unhandled system event {other}"))),
        },
        VcpuExit::FailEntry(reason, cpu) => {
            return Some(Stop::Failed(format!(
                "VM entry failed: reason {reason:#x} on host cpu {cpu}"
            )))
        }
        VcpuExit::InternalError => return Some(Stop::InternalError),
        other => return Some(Stop::Failed(format!("unexpected exit {other:?}"))),
    }
    None
}
