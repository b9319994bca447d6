//! A hook every ft thread that may start outside the pair thread runs first (the releaser, the
//! heartbeat threads): the `tandem` binary installs its FT seccomp filter there. Threads started
//! under the pair thread inherit its filter anyway.

use std::sync::OnceLock;

static HOOK: OnceLock<fn()> = OnceLock::new();

/// Sets the hook; only the first call counts.
pub fn set_thread_start_hook(hook: fn()) {
    let _ = HOOK.set(hook);
}

/// Runs the hook, if one is set, on the calling thread.
pub fn thread_started() {
    if let Some(hook) = HOOK.get() {
        hook();
    }
}
