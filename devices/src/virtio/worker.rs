//! A device's worker thread and the means to pause or stop it.
//!
//! Stopping: a stop eventfd the thread waits on alongside its queues, and a join that hands back
//! what the thread owned (its queues), so that reset and VM stop end in a thread that is
//! provably gone.
//!
//! Parking: every state capture (each FT checkpoint, many a second) needs the queues' progress
//! and a worker that touches nothing until the VM resumes. Stopping and respawning the thread for
//! that costs a join, a clone and a seccomp install per device per checkpoint, so instead
//! [`Worker::park`] asks the thread (through a park eventfd in the same epoll set) to finish what
//! it is doing and hand over a copy of its state; the thread then blocks, touching neither guest
//! memory nor queues, until [`Worker::unpark`] lets it go on where it was or [`Worker::stop`]
//! (or a drop) ends it. The body sees none of this beyond the snapshot closure it passes to
//! [`WorkerEpoll::wait`].
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
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// epoll token of the stop eventfd; device tokens must differ from it.
pub const STOP_TOKEN: u64 = u64::MAX;
/// epoll token of the park eventfd; device tokens must differ from it.
pub const PARK_TOKEN: u64 = u64::MAX - 1;

/// What the owner wants of the thread.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Run,
    Park,
    Stop,
}

/// The owner's and the thread's shared view of a park.
struct Ctl<T> {
    cmd: Cmd,
    /// Park requests made so far. A thread still parked (it has not yet seen the unpark) may
    /// be asked again; the count tells it that a new snapshot is owed.
    requested: u64,
    /// The park request the thread last answered.
    answered: u64,
    /// What a parking thread handed over for the latest request, until the owner takes it.
    snapshot: Option<T>,
    /// The body returned or panicked: no park request will ever be answered.
    done: bool,
}

/// [`Ctl`] and the condition variable both sides wait on (futexes only: every thread's seccomp
/// filter allows them).
struct Control<T> {
    ctl: Mutex<Ctl<T>>,
    changed: Condvar,
}

impl<T> Control<T> {
    fn lock(&self) -> MutexGuard<'_, Ctl<T>> {
        // Nothing panics while holding the lock except a snapshot closure, and a poisoned `Ctl`
        // is still consistent (each field is written whole).
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, Ctl<T>>) -> MutexGuard<'a, Ctl<T>> {
        self.changed.wait(g).unwrap_or_else(|p| p.into_inner())
    }
}

/// A worker thread that returns `T` when stopped and hands over a `T` (a copy of its state)
/// when parked.
pub struct Worker<T> {
    stop: EventFd,
    park: EventFd,
    control: Arc<Control<T>>,
    /// The thread is parked: it handed over its state and waits for unpark or stop.
    parked: bool,
    /// `None` from the thread: its body panicked.
    thread: Option<JoinHandle<Option<T>>>,
}

/// What the thread's body gets: an epoll set that already watches the stop and park eventfds.
pub struct WorkerEpoll<T> {
    epoll: Epoll,
    // Kept open for as long as the epoll set watches it.
    _stop: EventFd,
    park: EventFd,
    control: Arc<Control<T>>,
}

impl<T> WorkerEpoll<T> {
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

    /// Waits for events and returns their tokens; `None` when the worker must stop. A park
    /// request is served here: `snapshot` (a copy of the body's state, progress included) goes
    /// to the owner and the thread blocks until it may go on (the wait goes on) or must stop.
    pub fn wait(
        &self,
        events: &mut [EpollEvent],
        mut snapshot: impl FnMut() -> T,
    ) -> io::Result<Option<Vec<u64>>> {
        loop {
            match self.epoll.wait(-1, events) {
                Ok(n) => {
                    let tokens: Vec<u64> = events.iter().take(n).map(|e| e.data()).collect();
                    if tokens.contains(&STOP_TOKEN) {
                        return Ok(None);
                    }
                    if tokens.contains(&PARK_TOKEN) {
                        // Events that came with the request are left alone: epoll is
                        // level-triggered, so they are reported again after the park.
                        if !self.park_here(&mut snapshot) {
                            return Ok(None);
                        }
                        continue;
                    }
                    test_panic_point();
                    return Ok(Some(tokens));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Hands over the snapshot and blocks while parked; `false` when the worker must stop.
    fn park_here(&self, snapshot: &mut impl FnMut() -> T) -> bool {
        // Consume the request so that the next wait after the park blocks. A request already
        // answered (see `requested`) leaves a stale wakeup behind, which lands here too.
        let _ = self.park.read();
        let mut ctl = self.control.lock();
        loop {
            match ctl.cmd {
                Cmd::Run => return true,
                Cmd::Stop => return false,
                Cmd::Park => {
                    if ctl.answered != ctl.requested {
                        ctl.answered = ctl.requested;
                        ctl.snapshot = Some(snapshot());
                        self.control.changed.notify_all();
                    }
                    ctl = self.control.wait(ctl);
                }
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
        body: impl FnOnce(WorkerEpoll<T>) -> T + Send + 'static,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let park = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let thread_stop = stop.try_clone()?;
        let thread_park = park.try_clone()?;
        for (fd, token) in [(&thread_stop, STOP_TOKEN), (&thread_park, PARK_TOKEN)] {
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        let control = Arc::new(Control {
            ctl: Mutex::new(Ctl {
                cmd: Cmd::Run,
                requested: 0,
                answered: 0,
                snapshot: None,
                done: false,
            }),
            changed: Condvar::new(),
        });
        let ep = WorkerEpoll {
            epoll,
            _stop: thread_stop,
            park: thread_park,
            control: control.clone(),
        };
        let thread_control = control.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                thread_started();
                // Nothing the body owned is used after a panic: it is all dropped here.
                let out = match catch_unwind(AssertUnwindSafe(|| body(ep))) {
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
                };
                // An owner waiting for a park must not wait for a thread that is gone.
                thread_control.lock().done = true;
                thread_control.changed.notify_all();
                out
            })?;
        Ok(Worker {
            stop,
            park,
            control,
            parked: false,
            thread: Some(thread),
        })
    }

    /// Parks the thread: it finishes what it is doing, hands over a copy of its state (returned
    /// here) and then touches nothing until [`Worker::unpark`] or [`Worker::stop`]. If the body
    /// ended instead (it returned on an error, or panicked), the thread is joined and its result
    /// returned (`None` if it panicked); [`Worker::is_parked`] then says `false`. On a worker
    /// already parked this stops it and returns its final state (the same as the snapshot).
    pub fn park(&mut self) -> Option<T> {
        if self.parked || self.thread.is_none() {
            return self.stop_inner();
        }
        {
            let mut ctl = self.control.lock();
            ctl.cmd = Cmd::Park;
            ctl.requested += 1;
            ctl.snapshot = None;
        }
        // A thread that has not yet left its last park sees the request on the condition
        // variable, a running one through epoll.
        self.control.changed.notify_all();
        if let Err(e) = self.park.write(1) {
            // Cannot happen for a fresh eventfd; without the wakeup the wait below would hang.
            crate::guest_error!("cannot signal a device worker to park, stopping it: {e}");
            return self.stop_inner();
        }
        let mut ctl = self.control.lock();
        loop {
            if let Some(snapshot) = ctl.snapshot.take() {
                self.parked = true;
                return Some(snapshot);
            }
            if ctl.done {
                break;
            }
            ctl = self.control.wait(ctl);
        }
        drop(ctl);
        self.stop_inner()
    }

    /// Lets a parked thread go on where it was; `false` (and nothing happens) when it is not
    /// parked. Does not wait for the thread.
    pub fn unpark(&mut self) -> bool {
        if !std::mem::take(&mut self.parked) {
            return false;
        }
        self.control.lock().cmd = Cmd::Run;
        self.control.changed.notify_all();
        true
    }

    /// Whether the thread is parked by [`Worker::park`].
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// Stops the thread (running or parked) and returns what it handed back; `None` if it
    /// panicked.
    pub fn stop(mut self) -> Option<T> {
        self.stop_inner()
    }
}

/// A device's worker, if it has one (none before activation): the stops every device needs.
pub(crate) trait WorkerSlot {
    /// What the worker hands over.
    type State;
    /// Stops the worker, running or parked; what it hands back is dropped (a parked one has
    /// handed over its state already).
    fn stop_worker(&mut self);
    /// Stops the worker only if it is parked, so that the next activation starts a fresh one.
    fn stop_parked_worker(&mut self);
    /// Parks the worker and returns the state it handed over (`None` without a worker); one
    /// that ended instead (see [`Worker::park`]) leaves the slot, its result returned.
    fn park_worker(&mut self) -> Option<Self::State>;
}

/// A device's queues from the states its parked worker handed over; if one cannot be taken
/// (cannot happen: the worker's queues were valid ones), the worker is stopped, as it must not
/// go on either, and `None` returned.
pub(crate) fn queues_or_stop<T: Send + 'static>(
    slot: &mut Option<Worker<T>>,
    states: impl IntoIterator<Item = virtio_queue::QueueState>,
    kind: &str,
    id: &dyn std::fmt::Display,
) -> Option<Vec<virtio_queue::Queue>> {
    let queues: Result<Vec<_>, _> = states
        .into_iter()
        .map(virtio_queue::Queue::try_from)
        .collect();
    match queues {
        Ok(q) => Some(q),
        Err(e) => {
            crate::guest_error!("{kind}: {id}: a worker handed back a bad queue: {e}");
            slot.stop_worker();
            None
        }
    }
}

impl<T: Send + 'static> WorkerSlot for Option<Worker<T>> {
    type State = T;

    fn stop_worker(&mut self) {
        if let Some(w) = self.take() {
            let _ = w.stop();
        }
    }

    fn stop_parked_worker(&mut self) {
        if self.as_ref().is_some_and(Worker::is_parked) {
            self.stop_worker();
        }
    }

    fn park_worker(&mut self) -> Option<T> {
        let w = self.as_mut()?;
        let state = w.park();
        if !w.is_parked() {
            *self = None;
        }
        state
    }
}

impl<T> Worker<T> {
    fn stop_inner(&mut self) -> Option<T> {
        let thread = self.thread.take()?;
        self.parked = false;
        // A parked thread waits on the condition variable, a running one in epoll: tell both.
        self.control.lock().cmd = Cmd::Stop;
        self.control.changed.notify_all();
        if let Err(e) = self.stop.write(1) {
            // Cannot happen for a fresh eventfd; the join below would then hang, so say why.
            crate::guest_error!("cannot signal a device worker to stop: {e}");
        }
        thread.join().ok().flatten()
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        let _ = self.stop_inner();
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
            while let Ok(Some(_)) = ep.wait(&mut events, || rounds) {
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
            while let Ok(Some(_)) = ep.wait(&mut events, || ()) {}
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

    /// A body that counts the kicks it served on `kick` (token 0) and publishes the count in
    /// `seen`; its state, handed over when parked and returned when stopped, is that count.
    fn counter(
        kick: &EventFd,
        seen: Arc<AtomicU64>,
    ) -> impl FnOnce(WorkerEpoll<u64>) -> u64 + Send + 'static {
        let kick = kick.try_clone().unwrap();
        move |ep| {
            ep.add(kick.as_raw_fd(), EventSet::IN, 0).unwrap();
            let mut events = vec![EpollEvent::default(); 4];
            let mut rounds = 0;
            while let Ok(Some(_)) = ep.wait(&mut events, || rounds) {
                let _ = kick.read();
                rounds += 1;
                seen.store(rounds, Ordering::SeqCst);
            }
            rounds
        }
    }

    fn wait_for(seen: &AtomicU64, n: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while seen.load(Ordering::SeqCst) != n {
            assert!(std::time::Instant::now() < deadline, "never saw {n}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn a_parked_worker_hands_over_its_state_idles_and_goes_on_where_it_was() {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let mut w = Worker::spawn("t".into(), line(), counter(&kick, seen.clone())).unwrap();
        assert!(!w.unpark(), "a running worker is not parked");
        kick.write(1).unwrap();
        wait_for(&seen, 1);
        assert_eq!(w.park(), Some(1), "the snapshot is the state so far");
        assert!(w.is_parked());
        // A kick while parked is not served...
        kick.write(1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "a parked worker does nothing"
        );
        // ...until the worker goes on, with its state intact.
        assert!(w.unpark());
        assert!(!w.is_parked());
        wait_for(&seen, 2);
        // It parks again as often as asked, also when asked again before it saw the unpark.
        for _ in 0..1000 {
            assert_eq!(w.park(), Some(2));
            assert!(w.unpark());
        }
        kick.write(1).unwrap();
        wait_for(&seen, 3);
        assert_eq!(w.stop(), Some(3));
    }

    #[test]
    fn a_parked_worker_stops_cleanly_and_drops_cleanly() {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let mut w = Worker::spawn("t".into(), line(), counter(&kick, seen.clone())).unwrap();
        kick.write(1).unwrap();
        wait_for(&seen, 1);
        assert_eq!(w.park(), Some(1));
        // Stopping a parked worker joins it and returns its final state (nothing changed since
        // the park).
        assert_eq!(w.stop(), Some(1));

        let (tx, rx) = std::sync::mpsc::channel();
        let mut w = Worker::spawn("t".into(), line(), move |ep: WorkerEpoll<()>| {
            let mut events = vec![EpollEvent::default(); 4];
            while let Ok(Some(_)) = ep.wait(&mut events, || ()) {}
            tx.send(()).unwrap();
        })
        .unwrap();
        assert_eq!(w.park(), Some(()));
        drop(w);
        rx.try_recv().expect("drop joined the parked thread");
    }

    #[test]
    fn parking_a_worker_that_panicked_gets_nothing_and_leaves_nothing_parked() {
        let interrupt = line();
        let mut w = Worker::spawn("t".into(), interrupt.clone(), |_ep| -> u32 {
            panic!("a bug in a device model");
        })
        .unwrap();
        assert_eq!(w.park(), None);
        assert!(!w.is_parked());
        assert!(!w.unpark());
        assert!(interrupt.needs_reset());
        assert_eq!(w.stop(), None);
    }

    #[test]
    fn parking_a_worker_whose_body_returned_gets_its_result() {
        // A body that ends on its own (an epoll error) hands back its state through the join.
        let mut w = Worker::spawn("t".into(), line(), |_ep| 7u32).unwrap();
        assert_eq!(w.park(), Some(7));
        assert!(!w.is_parked());
        assert_eq!(w.stop(), None, "already joined");
    }
}
