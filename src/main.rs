//! Parse the command line, run the pool, exit with the right status: nothing else.

use std::process::ExitCode;
use std::time::Duration;

use cluster_init::cli::{self, Parsed};
use cluster_init::config::{Config, PlanError};
use cluster_init::telemetry::{self, LogFormat, Settings, Telemetry};
use cluster_init::{ctl, machine, signals, suggest, supervisor};
use tracing::level_filters::LevelFilter;

fn main() -> ExitCode {
    // `cluster-init ctl ...` is a client of a running init, not an init: it keeps the signal
    // state it was started with, so it goes before the take-over.
    if let Some(code) = ctl::dispatch(std::env::args_os()) {
        return ExitCode::from(code as u8);
    }
    // First, before any thread exists: every signal we handle waits for the loop's signalfd.
    let signals = signals::take_over();
    machine::mount_proc_if_missing();
    let code = run(signals);
    if machine::is_init() {
        // PID 1 of the whole machine (a VM's rdinit): exiting would panic the kernel.
        machine::power_off(code);
    }
    ExitCode::from(code as u8)
}

fn run(signals: std::io::Result<()>) -> i32 {
    let cli = match cli::parse(std::env::args_os()) {
        Parsed::Run(cli) => cli,
        Parsed::Print(text) => {
            println!("{text}");
            return 0;
        }
        Parsed::Usage {
            message,
            log_format,
        } => {
            early_error(log_format, 2, &message);
            return 2;
        }
    };
    let settings = Settings {
        log_format: log_format(cli.log_format),
        log_level: match cli.log_level {
            cli::LogLevel::Error => LevelFilter::ERROR,
            cli::LogLevel::Warn => LevelFilter::WARN,
            cli::LogLevel::Info => LevelFilter::INFO,
            cli::LogLevel::Debug => LevelFilter::DEBUG,
            cli::LogLevel::Trace => LevelFilter::TRACE,
        },
        export_command_args: cli.trace_command_args,
        // Inside the stop timeout, so that flushing spans never makes Kubernetes SIGKILL us.
        flush_timeout: (cli.stop_timeout / 5)
            .clamp(Duration::from_millis(200), Duration::from_secs(3)),
    };
    let mut telemetry = match Telemetry::init(&settings, |k| std::env::var(k).ok()) {
        Ok(t) => t,
        Err(message) => {
            early_error(cli.log_format, 2, &message);
            return 2;
        }
    };
    // The first line says what runs: an operator reading a crash loop's logs starts here.
    tracing::info!(
        service.version = env!("CARGO_PKG_VERSION"),
        process.pid = std::process::id(),
        "cluster-init {} starting",
        env!("CARGO_PKG_VERSION")
    );
    telemetry.log_notes();
    let names: Vec<_> = std::env::vars_os().map(|(name, _)| name).collect();
    for warning in suggest::unknown_vars(names, &cli::env_names()) {
        tracing::warn!("{warning}");
    }
    if let Err(e) = signals {
        tracing::error!("cannot take over signal handling: {e}");
        return 1;
    }
    let (config, plan) = match Config::from_cli(&cli, !cli.dry_run) {
        Ok(v) => v,
        Err(PlanError::Usage(message)) => {
            tracing::error!(process.exit.code = 2, "{message}");
            return 2;
        }
        Err(PlanError::CannotRun(e)) => {
            tracing::error!(process.exit.code = e.code, "{}", e.message);
            return e.code;
        }
    };
    if cli.dry_run {
        tracing::info!("{}", config.sizing);
        println!("{plan}");
        return 0;
    }
    supervisor::run(config, telemetry)
}

fn log_format(format: cli::LogFormat) -> LogFormat {
    match format {
        cli::LogFormat::Text => LogFormat::Text,
        cli::LogFormat::Json => LogFormat::Json,
    }
}

/// An error line written before (or without) the global subscriber. In JSON it is the very line
/// the subscriber would write, so that an alert on `level` sees why a pod never started; in text
/// it is the classic `cluster-init: ...` of a command-line tool.
fn early_error(format: cli::LogFormat, code: i32, message: &str) {
    match format {
        cli::LogFormat::Text => eprintln!("cluster-init: {message}"),
        cli::LogFormat::Json => {
            let settings = Settings {
                log_format: log_format(format),
                log_level: LevelFilter::ERROR,
                export_command_args: false,
                flush_timeout: Duration::ZERO,
            };
            tracing::dispatcher::with_default(&telemetry::log_dispatch(&settings), || {
                tracing::error!(process.exit.code = code, "{message}");
            });
        }
    }
}
