//! A device's worker thread and the means to stop it: a stop eventfd the thread waits on
//! alongside its queues, and a join that hands back what the thread owned (its queues), so that
//! reset, VM stop and (later) FT state capture all end in a thread that is provably gone.
//!
//! A worker that panics (a bug: no guest input may cause one) does not take the process down:
//! the panic is caught at the thread's top, logged, counted ([`panics`]) and the device is marked
//! broken (DEVICE_NEEDS_RESET) until its driver resets it; the queues' progress died with the
//! thread, so the transport does not restart it from stale copies.

use super::device::Interrupt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// epoll token of the stop eventfd; device tokens must differ from it.
pub const STOP_TOKEN: u64 = u64::MAX;

/// A running worker thread that returns `T` when stopped.
pub struct Worker<T> {
    stop: EventFd,
    /// `None` from the thread: its body panicked.
    thread: Option<JoinHandle<Option<T>>>,
}

/// What the thread's body gets: an epoll set that already watches the stop eventfd.
pub struct WorkerEpoll {
    epoll: Epoll,
    // Kept open for as long as the epoll set watches it.
    _stop: EventFd,
}

impl WorkerEpoll {
    /// Watches `fd` for `events`, reported with `token`.
    pub fn add(&self, fd: RawFd, events: EventSet, token: u64) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Changes what `fd` is watched for (an empty set pauses it).
    pub fn modify(&self, fd: RawFd, events: EventSet, token: u64) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    /// Waits for events and returns their tokens; `None` when the worker must stop.
    pub fn wait(&self, events: &mut [EpollEvent]) -> io::Result<Option<Vec<u64>>> {
        loop {
            match self.epoll.wait(-1, events) {
                Ok(n) => {
                    let tokens: Vec<u64> = events.iter().take(n).map(|e| e.data()).collect();
                    if tokens.contains(&STOP_TOKEN) {
                        return Ok(None);
                    }
                    test_panic_point();
                    return Ok(Some(tokens));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Device workers that panicked in this process.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// How many device workers have panicked in this process (`tandem_device_worker_panics_total`).
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Test only: `TANDEM_TEST_WORKER_PANIC=<thread name>` (e.g. `tandem_blk_d0`) makes that worker
/// panic the first time it wakes for work, so that a test can watch a real process survive a
/// worker panic. Unset (always, outside tests), this is one load of a cached `None`.
fn test_panic_point() {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    let target = TARGET.get_or_init(|| std::env::var("TANDEM_TEST_WORKER_PANIC").ok());
    if let Some(t) = target {
        if std::thread::current().name() == Some(t.as_str()) {
            panic!("TANDEM_TEST_WORKER_PANIC: {t} panics on purpose");
        }
    }
}

/// The panic's message, where it is a string.
fn panic_message(cause: &(dyn std::any::Any + Send)) -> &str {
    cause
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| cause.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

static THREAD_START_HOOK: OnceLock<fn()> = OnceLock::new();

/// Sets what every worker thread runs first (the VMM installs its seccomp filter there). Only the
/// first call counts.
pub fn set_thread_start_hook(hook: fn()) {
    let _ = THREAD_START_HOOK.set(hook);
}

/// Runs the hook set by [`set_thread_start_hook`] on the calling thread (device threads that are
/// not [`Worker`]s call it themselves).
pub fn thread_started() {
    if let Some(hook) = THREAD_START_HOOK.get() {
        hook();
    }
}

impl<T: Send + 'static> Worker<T> {
    /// Starts a thread named `name` running `body`; if `body` panics, the device whose line is
    /// `interrupt` is marked broken (DEVICE_NEEDS_RESET).
    pub fn spawn(
        name: String,
        interrupt: Arc<Interrupt>,
        body: impl FnOnce(WorkerEpoll) -> T + Send + 'static,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let thread_stop = stop.try_clone()?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            thread_stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        let ep = WorkerEpoll {
            epoll,
            _stop: thread_stop,
        };
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                thread_started();
                // Nothing the body owned is used after a panic: it is all dropped here.
                match catch_unwind(AssertUnwindSafe(|| body(ep))) {
                    Ok(out) => Some(out),
                    Err(cause) => {
                        PANICS.fetch_add(1, Ordering::Relaxed);
                        crate::guest_error!(
                            "{name}: device worker panicked ({}); the device needs a reset",
                            panic_message(cause.as_ref())
                        );
                        interrupt.set_needs_reset();
                        None
                    }
                }
            })?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and returns what it handed back; `None` if it panicked.
    pub fn stop(mut self) -> Option<T> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Option<T> {
        let thread = self.thread.take()?;
        if let Err(e) = self.stop.write(1) {
            // Cannot happen for a fresh eventfd; the join below would then hang, so say why.
            crate::guest_error!("cannot signal a device worker to stop: {e}");
        }
        thread.join().ok().flatten()
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn line() -> Arc<Interrupt> {
        Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()))
    }

    #[test]
    fn stop_joins_and_returns_the_result() {
        let w = Worker::spawn("t".into(), line(), |ep| {
            let mut events = vec![EpollEvent::default(); 4];
            let mut rounds = 0;
            while let Ok(Some(_)) = ep.wait(&mut events) {
                rounds += 1;
            }
            rounds + 42
        })
        .unwrap();
        assert_eq!(w.stop(), Some(42));
    }

    #[test]
    fn drop_joins_too() {
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Worker::spawn("t".into(), line(), move |ep| {
            let mut events = vec![EpollEvent::default(); 4];
            while let Ok(Some(_)) = ep.wait(&mut events) {}
            tx.send(()).unwrap();
        })
        .unwrap();
        drop(w);
        rx.try_recv().unwrap();
    }

    #[test]
    fn a_panicking_body_marks_the_device_broken_and_the_process_goes_on() {
        let interrupt = line();
        let before = panics();
        let w = Worker::spawn("t".into(), interrupt.clone(), |_ep| -> u32 {
            panic!("a bug in a device model");
        })
        .unwrap();
        // The thread ends on its own; stop() joins it and gets nothing back.
        assert_eq!(w.stop(), None);
        assert!(interrupt.needs_reset(), "the device is marked broken");
        assert_eq!(
            interrupt.status() & 2,
            2,
            "and the driver is told (config interrupt)"
        );
        assert!(panics() > before);
    }
}
