//! Panic reports a confined thread can make. std's default panic hook resolves a backtrace when
//! `RUST_BACKTRACE` is set, and that calls getcwd and opens files: syscalls that API, vCPU and
//! worker threads may not make, so the report itself would end the process on a seccomp violation
//! before a device worker's `catch_unwind` could keep it up. On those threads the hook writes
//! the thread, the place and the message only; everywhere else std's hook runs as before.

use super::ThreadKind;
use std::cell::Cell;
use std::io::Write;
use std::sync::Once;

thread_local! {
    /// This thread runs under a filter that allows no file access.
    static NO_FILES: Cell<bool> = const { Cell::new(false) };
}

/// Records that the calling thread now runs under `kind`'s filter.
pub(super) fn confined(kind: ThreadKind) {
    let no_files = matches!(
        kind,
        ThreadKind::Api | ThreadKind::Vcpu | ThreadKind::Worker
    );
    NO_FILES.with(|c| c.set(no_files));
}

/// Installs the hook (once; later calls do nothing).
pub(super) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !NO_FILES.with(Cell::get) {
                return default(info);
            }
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("<unnamed>");
            let place = info
                .location()
                .map_or_else(String::new, |l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()));
            let message = info.payload_as_str().unwrap_or("Box<dyn Any>");
            // One write: stderr is all this thread may touch; a failed report has nowhere to go.
            let _ = std::io::stderr().write_all(
                format!("\nthread '{name}' panicked{place}:\n{message}\n(no backtrace: this thread's seccomp filter allows no file access)\n")
                    .as_bytes(),
            );
        }));
    });
}
