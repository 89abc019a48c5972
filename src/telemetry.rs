//! Logs of cluster-init's own lines (stderr, text or JSON). OpenTelemetry export joins later.

use tracing::level_filters::LevelFilter;

use crate::cli::{LogFormat, LogLevel};

/// Installs the global subscriber. Our lines go to stderr so that stdout stays the workers'.
pub fn init_logs(format: LogFormat, level: LogLevel) {
    let level = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
