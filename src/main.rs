//! Parse the command line, run the pool, exit with the right status: nothing else.

use std::process::ExitCode;

use cluster_init::cli::{self, Parsed};
use cluster_init::config::{Config, PlanError};
use cluster_init::{supervisor, telemetry};

fn main() -> ExitCode {
    ExitCode::from(run() as u8)
}

fn run() -> i32 {
    let cli = match cli::parse(std::env::args_os()) {
        Parsed::Run(cli) => cli,
        Parsed::Exit {
            code,
            message,
            to_stderr,
        } => {
            if to_stderr {
                eprintln!("{message}");
            } else {
                println!("{message}");
            }
            return code;
        }
    };
    telemetry::init_logs(cli.log_format, cli.log_level);
    let (config, plan) = match Config::from_cli(&cli) {
        Ok(v) => v,
        Err(PlanError::Usage(message)) => {
            eprintln!("cluster-init: {message}");
            return 2;
        }
        Err(PlanError::CannotRun(e)) => {
            eprintln!("cluster-init: {}", e.message);
            return e.code;
        }
    };
    if cli.dry_run {
        println!("{plan}");
        return 0;
    }
    supervisor::run(config)
}
