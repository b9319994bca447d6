//! A device's worker thread and the means to stop it: a stop eventfd the thread waits on
//! alongside its queues, and a join that hands back what the thread owned (its queues), so that
//! reset, VM stop and (later) FT state capture all end in a thread that is provably gone.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// epoll token of the stop eventfd; device tokens must differ from it.
pub const STOP_TOKEN: u64 = u64::MAX;

/// A running worker thread that returns `T` when stopped.
pub struct Worker<T> {
    stop: EventFd,
    thread: Option<JoinHandle<T>>,
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
                    return Ok(Some(tokens));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

static THREAD_START_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

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
    /// Starts a thread named `name` running `body`.
    pub fn spawn(
        name: String,
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
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            thread_started();
            body(ep)
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
            log::error!("cannot signal a device worker to stop: {e}");
        }
        thread.join().ok()
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

    #[test]
    fn stop_joins_and_returns_the_result() {
        let w = Worker::spawn("t".into(), |ep| {
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
        let w = Worker::spawn("t".into(), move |ep| {
            let mut events = vec![EpollEvent::default(); 4];
            while let Ok(Some(_)) = ep.wait(&mut events) {}
            tx.send(()).unwrap();
        })
        .unwrap();
        drop(w);
        rx.try_recv().unwrap();
    }
}
