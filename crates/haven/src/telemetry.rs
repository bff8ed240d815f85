//! Logs: JSON lines on standard error by default. Events carry ids, never secrets or PHI.
//!
//! Lines are formatted where they happen but written by a thread of their own: a request's
//! runtime thread never makes the `write` system call itself (one per line, an access log line
//! per request), and never waits on a slow terminal, pipe or disk. That thread writes what has
//! queued in one buffered write and flushes whenever the queue runs empty, so a quiet server's
//! lines appear at once. The queue holds up to [`QUEUED_LINES`]; past that, loggers wait for it
//! (back-pressure, no line is dropped). What is queued is written at exit; a kill -9 can lose
//! the lines of the last moment, never the audit log or any stored state.

use haven_platform::config::{LogConfig, LogFormat};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines that may wait for the log thread before a logger waits for it.
const QUEUED_LINES: usize = 65_536;

/// Installs the logger. Keep the guard until the process ends: dropping it writes what is
/// still queued.
pub fn init(config: &LogConfig, serving: bool) -> Option<WorkerGuard> {
    let default = if serving {
        config.level.as_str()
    } else {
        "warn"
    };
    let filter = EnvFilter::try_new(default).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("haven-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    installed.ok().map(|()| guard)
}
