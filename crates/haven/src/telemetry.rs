//! Logs: JSON lines on standard output by default. Events carry ids, never secrets or PHI.

use haven_platform::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

pub fn init(config: &LogConfig, serving: bool) {
    let default = if serving {
        config.level.as_str()
    } else {
        "warn"
    };
    let filter = EnvFilter::try_new(default).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
