//! `ft-status --watch`: polls `ft.status` until Ctrl-C (exit 0) or until the VMM stops answering
//! (exit 3, or 1 for an API error, with the reason on stderr). On a terminal it redraws one
//! screen; otherwise (a pipe, a log file) it prints one line per refresh, so `grep` and `tail -f`
//! work. A closed stdout (`| head`) ends it quietly.

use api_client::{ft_view, ApiClient, Response};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by the SIGINT handler.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C ends the loop between refreshes instead of killing the process mid-draw.
fn catch_sigint() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; `signal` with a
    // valid function pointer has no other precondition.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// Sleeps `d` in short steps; `false` once Ctrl-C was pressed.
fn pause(d: Duration) -> bool {
    let until = Instant::now() + d;
    while !STOP.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
    false
}

/// Runs the watch; the exit code says how it ended.
pub fn run(client: &ApiClient, socket: &Path, interval: Duration) -> ExitCode {
    catch_sigint();
    let tty = std::io::stdout().is_terminal();
    // A refresh that takes longer than a few intervals is a VMM that stopped answering.
    let client = client
        .clone()
        .with_timeout(interval.saturating_mul(5).max(Duration::from_secs(5)));
    let title = format!(
        "tandem-remote ft-status --watch   {}   every {} ms   (Ctrl-C to stop)",
        socket.display(),
        interval.as_millis()
    );
    loop {
        let status = match client.get("ft.status").and_then(Response::into_result) {
            Ok(Some(v)) => v,
            Ok(None) => serde_json::Value::Null,
            Err(e) => {
                if tty {
                    println!();
                }
                eprintln!("tandem-remote: ft-status --watch: the VMM stopped answering");
                super::report(&e);
                return ExitCode::from(e.exit_code() as u8);
            }
        };
        let text = if tty {
            // Home, clear, redraw: one screen that updates in place.
            format!(
                "\x1b[H\x1b[2J{}",
                ft_view::screen(&status, &format!("{title}   {} UTC", ft_view::clock_utc()))
            )
        } else {
            format!("{}\n", ft_view::line(&status))
        };
        let mut out = std::io::stdout().lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return ExitCode::SUCCESS; // the reader went away (`| head`)
        }
        drop(out);
        if !pause(interval) {
            return ExitCode::SUCCESS;
        }
    }
}
