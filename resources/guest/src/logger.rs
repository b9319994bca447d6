//! The `log` facade on the serial console, so that warnings and errors of the
//! third-party drivers are seen.  Info and below would flood the console
//! (and each line costs a ring-0 entry), so they are dropped.

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::say;

struct SerialLogger;

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= Level::Warn
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            say!(
                "tandem-guest: {} {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: SerialLogger = SerialLogger;

/// Install the logger (once; a second call changes nothing).
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Warn);
    }
}
