//! Operator-facing settings against the built binary: usage errors as one line (one JSON object
//! with `--log-format json`, even when the parse failed), warnings for `CLUSTER_INIT_*`
//! variables that are not options, boolean and negative values, the admin address grammar
//! (dual-stack `:PORT`, host names), a dry run that refuses what the real run refuses and
//! lists every setting, and a `--help` that fits 100 columns.
//!
//! The option lists are walked from clap's own definitions (`cli::command()`), so a new option
//! is covered without touching this file.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use cluster_init::cli;
use serde_json::Value;

/// `cluster-init ARGS` with only the `CLUSTER_INIT_*`, `OTEL_*` (and CPU share) variables given
/// here: the test's own environment (CI's `CLUSTER_INIT_STRICT_TESTS`, a developer's exports)
/// stays out.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::bin());
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        // The CPU share variables too: --per-worker-cpu-env sets only those that are unset.
        let cpu_share = [
            "GOMAXPROCS",
            "DOTNET_PROCESSOR_COUNT",
            "UV_THREADPOOL_SIZE",
            "OMP_NUM_THREADS",
            "PYTHON_CPU_COUNT",
        ];
        if n.starts_with("CLUSTER_INIT_") || n.starts_with("OTEL_") || cpu_share.contains(&&*n) {
            cmd.env_remove(&name);
        }
    }
    cmd.args(args).envs(env.iter().copied());
    cmd.stdin(std::process::Stdio::null());
    cmd.output().expect("run cluster-init")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one line of a usage error; panics unless the exit is 2 with exactly one stderr line.
fn usage_line(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(args, env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?} {env:?}: not one line:\n{err}"
    );
    err.trim_end().to_string()
}

/// The one ERROR line of a usage error found once the log subscriber is up, where warnings
/// about the machine (a CPU budget oddity) may come first.
fn late_error_line(args: &[&str]) -> String {
    let out = run(args, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {err}");
    errors[0].to_string()
}

/// The plan of `cluster-init --dry-run ARGS -- true`.
fn plan(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut argv = vec!["--dry-run"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--", "true"]);
    let out = run(&argv, env);
    assert_eq!(out.status.code(), Some(0), "{argv:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("the plan is JSON")
}

/// Long names of the options that take a value (not flags, not the command).
fn value_options() -> Vec<String> {
    cli::command()
        .get_arguments()
        .filter(|a| !a.is_positional() && a.get_action().takes_values())
        .map(|a| {
            a.get_long()
                .expect("every option has a long name")
                .to_string()
        })
        .collect()
}

/// Ids of the boolean options, with their variables.
fn bool_options() -> Vec<(String, String)> {
    cli::command()
        .get_arguments()
        .filter(|a| matches!(a.get_action(), clap::ArgAction::SetTrue))
        .map(|a| {
            let env = a.get_env().expect("every option has a variable");
            (a.get_id().to_string(), env.to_string_lossy().into_owned())
        })
        .collect()
}

/// Arguments, environment, and what the line must name.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn usage_errors_in_json_are_one_error_object_with_exit_code_2() {
    let cases: &[Case] = &[
        (
            &["--log-format", "json", "--workers", "banana", "--", "true"],
            &[],
            "--workers",
        ),
        (
            &["--log-format=json", "--worker", "2", "--", "true"],
            &[],
            "--worker",
        ),
        (
            &["--bogus", "--", "true"],
            &[("CLUSTER_INIT_LOG_FORMAT", "json")],
            "--bogus",
        ),
        (
            &["--", "true"],
            &[
                ("CLUSTER_INIT_LOG_FORMAT", "json"),
                ("CLUSTER_INIT_STOP_TIMEOUT", "10"),
            ],
            "CLUSTER_INIT_STOP_TIMEOUT",
        ),
        (&["--log-format", "json"], &[], "no command"),
        (
            &[
                "-w",
                "2",
                "--log-format",
                "json",
                "--admin-listen",
                "unix:/x",
                "--",
                "true",
            ],
            &[],
            "--admin-listen",
        ),
        // Set up after the parse, before the subscriber: the trace export's configuration.
        (
            &["--log-format", "json", "--dry-run", "--", "true"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ];
    for (args, env, needle) in cases {
        let line = usage_line(args, env);
        assert!(line.starts_with("{\"timestamp\":"), "{args:?}: {line}");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["level"], "ERROR", "{line}");
        assert_eq!(v["process.exit.code"], 2, "{line}");
        let message = v["message"].as_str().expect("a message");
        assert!(
            message.contains(needle),
            "{args:?}: `{needle}` not in {line}"
        );
        assert!(!message.starts_with("cluster-init:"), "{line}");
    }
}

#[test]
fn early_json_lines_have_the_shape_of_the_later_ones() {
    // A usage error found after the subscriber is up (the pool is smaller than --min-ready)...
    let late = late_error_line(&[
        "--log-format",
        "json",
        "--dry-run",
        "-w",
        "2",
        "--min-ready",
        "3",
        "--",
        "true",
    ]);
    // ... and one found by clap before it.
    let early = usage_line(
        &["--log-format", "json", "--min-ready", "0", "--", "true"],
        &[],
    );
    let keys = |line: &str| -> Vec<String> {
        let v: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
        v.keys().cloned().collect()
    };
    assert_eq!(keys(&early), keys(&late), "{early}\n{late}");
    let order = |line: &str| {
        [
            "\"timestamp\"",
            "\"level\"",
            "\"message\"",
            "\"process.exit.code\"",
        ]
        .map(|k| {
            line.find(k)
                .unwrap_or_else(|| panic!("{k} missing: {line}"))
        })
    };
    assert_eq!(order(&early), {
        let mut o = order(&early);
        o.sort();
        o
    });
}

#[test]
fn text_usage_errors_and_a_bad_log_format_stay_plain_lines() {
    let line = usage_line(&["--workers", "banana", "--", "true"], &[]);
    assert!(
        line.starts_with("cluster-init: invalid value 'banana' for --workers"),
        "{line}"
    );
    // The bad value is the log format itself: there is no JSON to speak.
    let line = usage_line(&["--log-format", "xml", "--", "true"], &[]);
    assert!(
        line.starts_with("cluster-init: invalid value 'xml' for --log-format"),
        "{line}"
    );
    let line = usage_line(&["--", "true"], &[("CLUSTER_INIT_LOG_FORMAT", "xml")]);
    assert!(
        line.starts_with("cluster-init: invalid value 'xml' for CLUSTER_INIT_LOG_FORMAT"),
        "{line}"
    );
    // The command's own `--log-format json` is the server's business.
    let line = usage_line(&["--workers", "0", "sh", "--log-format", "json"], &[]);
    assert!(line.starts_with("cluster-init: "), "{line}");
}

#[test]
fn help_and_version_are_plain_text_on_stdout() {
    for flag in ["--help", "-h", "--version"] {
        let out = run(
            &["--log-format", "json", flag],
            &[("CLUSTER_INIT_LOG_FORMAT", "json")],
        );
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(out.stderr.is_empty(), "{flag}: {}", stderr(&out));
        assert!(!stdout(&out).starts_with('{'), "{flag}: {}", stdout(&out));
        assert!(stdout(&out).contains("cluster-init"), "{flag}");
    }
}

#[test]
fn help_fits_100_columns_and_says_examples_signals_and_exit_codes() {
    let mut cmd = cli::command().term_width(100);
    let rendered = [
        cmd.render_help().to_string(),
        cmd.render_long_help().to_string(),
    ];
    let mut outputs: Vec<(String, String)> = rendered
        .into_iter()
        .map(|h| ("rendered at 100".to_string(), h))
        .collect();
    // The binary, in a pipe and in a terminal that claims to be wider.
    for (flag, columns) in [("-h", None), ("--help", None), ("--help", Some("300"))] {
        let env: Vec<(&str, &str)> = columns.map(|c| ("COLUMNS", c)).into_iter().collect();
        let out = run(&[flag], &env);
        assert_eq!(out.status.code(), Some(0));
        outputs.push((format!("{flag} COLUMNS={columns:?}"), stdout(&out)));
    }
    for (what, help) in &outputs {
        for line in help.lines() {
            assert!(
                line.chars().count() <= 100,
                "{what}: {} columns: {line}",
                line.len()
            );
        }
        for needle in [
            "Examples:",
            "cluster-init -- node server.js",
            "cluster-init -w max-1 --listen :8080 -- ./server",
            "CLUSTER_INIT_WORKERS=",
            "Signals:",
            "TTIN",
            "QUIT",
            "Exit status:",
            "128+N",
            "137",
            "127",
        ] {
            assert!(help.contains(needle), "{what}: no `{needle}` in:\n{help}");
        }
    }
}

#[test]
fn unknown_variables_are_warned_about_with_the_closest_option() {
    let out = run(
        &["--dry-run", "--", "true"],
        &[
            ("CLUSTER_INIT_WORKER", "1"),
            ("CLUSTER_INIT_STOP_TIMOUT", "5s"),
            ("CLUSTER_INIT_FROBNICATE", "1"),
            ("CLUSTER_INIT_WORKERS", "2"),
            ("CLUSTER_INIT_STRICT_TESTS", "1"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("is not an option"))
        .collect();
    assert_eq!(warnings.len(), 3, "one line per unknown variable:\n{err}");
    let has = |needle: &str| {
        warnings
            .iter()
            .any(|l| l.contains("WARN") && l.contains(needle))
    };
    assert!(
        has("CLUSTER_INIT_WORKER is not an option of cluster-init (did you mean CLUSTER_INIT_WORKERS?)"),
        "{err}"
    );
    assert!(has("CLUSTER_INIT_STOP_TIMOUT is not an option of cluster-init (did you mean CLUSTER_INIT_STOP_TIMEOUT?)"), "{err}");
    assert!(has("CLUSTER_INIT_FROBNICATE is not an option"), "{err}");
    let far = warnings.iter().find(|l| l.contains("FROBNICATE")).unwrap();
    assert!(!far.contains("did you mean"), "{far}");
    // The known names (and the test harness's own) get no line.
    assert!(!err.contains("CLUSTER_INIT_WORKERS is not"), "{err}");
    assert!(!err.contains("STRICT_TESTS"), "{err}");

    // In JSON, like every other line.
    let out = run(
        &["--dry-run", "--log-format", "json", "--", "true"],
        &[("CLUSTER_INIT_WORKER", "1")],
    );
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("is not an option"))
        .expect("a warning");
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "WARN", "{line}");
}

#[test]
fn a_clean_environment_or_only_known_variables_give_no_warning() {
    let known: Vec<(String, String)> = vec![
        ("CLUSTER_INIT_WORKERS".into(), "2".into()),
        ("CLUSTER_INIT_STOP_TIMEOUT".into(), "5s".into()),
        ("CLUSTER_INIT_WORKER_OUTPUT".into(), "json".into()),
        ("CLUSTER_INIT_MEMORY_RESERVE".into(), "0".into()),
    ];
    let known: Vec<(&str, &str)> = known
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for env in [&[][..], &known[..]] {
        let out = run(&["--dry-run", "--", "true"], env);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(!err.contains("is not an option"), "{env:?}: {err}");
        assert!(!err.contains("WARN"), "{env:?}: {err}");
    }
}

#[test]
fn booleans_from_the_environment_take_the_usual_spellings() {
    let options = bool_options();
    assert!(options.iter().any(|(id, _)| id == "dry_run"), "{options:?}");
    for (id, var) in &options {
        for (value, want) in [
            ("1", true),
            ("0", false),
            ("true", true),
            ("false", false),
            ("yes", true),
            ("no", false),
            ("on", true),
            ("off", false),
        ] {
            if id == "dry_run" {
                // Without --dry-run on the command line: the variable alone decides.
                let out = run(
                    &["-w", "1", "--restart", "never", "--", "true"],
                    &[(var, value)],
                );
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{var}={value}: {}",
                    stderr(&out)
                );
                let printed_plan = serde_json::from_slice::<Value>(&out.stdout).is_ok();
                assert_eq!(printed_plan, want, "{var}={value}: {}", stdout(&out));
                continue;
            }
            let plan = plan(&[], &[(var, value)]);
            match &plan[id] {
                Value::Bool(b) => assert_eq!(*b, want, "{var}={value}"),
                // --per-worker-cpu-env shows what it sets rather than a flag.
                Value::Object(vars) if id == "per_worker_cpu_env" => {
                    assert_eq!(!vars.is_empty(), want, "{var}={value}: {vars:?}")
                }
                other => panic!("{id} in the plan is {other}"),
            }
        }
        let line = usage_line(&["--", "true"], &[(var, "maybe")]);
        assert!(line.contains(var) && line.contains("'maybe'"), "{line}");
    }
}

#[test]
fn negative_values_name_the_option_and_the_value() {
    let options = value_options();
    assert!(options.len() >= 16, "{options:?}");
    for long in &options {
        let flag = format!("--{long}");
        for value in ["-1", "-1s"] {
            let line = usage_line(&[&flag, value, "--", "true"], &[]);
            assert!(
                line.contains(&format!("invalid value '{value}' for {flag}")),
                "{flag} {value}: {line}"
            );
        }
        // A flag where the value was due is refused as that option's value, never taken.
        let line = usage_line(&[&flag, "--dry-run", "--", "true"], &[]);
        assert!(line.contains(&flag), "{flag} --dry-run: {line}");
    }
    let line = usage_line(&["-w", "-1", "--", "true"], &[]);
    assert!(line.contains("invalid value '-1' for --workers"), "{line}");
}

#[test]
fn separate_values_and_the_command_keep_working() {
    let p = plan(&["-w", "2", "--stop-timeout", "5s", "--listen", ":0"], &[]);
    assert_eq!(p["workers"], 2);
    assert_eq!(p["stop_timeout_ms"], 5000);
    assert_eq!(p["listen"], serde_json::json!([":0"]));
    // The command's own flags stay the command's, with `--` or without.
    for argv in [
        &[
            "--dry-run",
            "-w",
            "1",
            "--",
            "sh",
            "-c",
            "x",
            "--workers",
            "-1",
        ][..],
        &["--dry-run", "-w", "1", "sh", "-c", "x", "--workers", "-1"][..],
    ] {
        let out = run(argv, &[]);
        assert_eq!(out.status.code(), Some(0), "{argv:?}: {}", stderr(&out));
        let p: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(p["workers"], 1);
        assert_eq!(
            p["command"],
            serde_json::json!(["sh", "-c", "x", "--workers", "-1"])
        );
    }
}

#[test]
fn unknown_flags_suggest_the_right_one() {
    let line = usage_line(&["--worker", "2", "--", "true"], &[]);
    assert_eq!(
        line,
        "cluster-init: unexpected argument '--worker' found; did you mean '--workers'?"
    );
    let line = usage_line(&["--stop-timout=5s", "--", "true"], &[]);
    assert!(line.ends_with("did you mean '--stop-timeout'?"), "{line}");
    let line = usage_line(&["--frobnicate", "--", "true"], &[]);
    assert!(!line.contains("did you mean"), "{line}");
}

#[test]
fn dry_run_refuses_a_command_the_real_run_cannot_run() {
    let dir = common::scratch();
    let plain = dir.path().join("plain-file");
    std::fs::write(&plain, "not a program").unwrap();
    let plain = plain.to_str().unwrap();
    let dir_path = dir.path().to_str().unwrap();
    for (cmd, code, reason) in [
        ("./no-such-server", 127, "No such file or directory"),
        ("no-such-server-in-path", 127, "No such file or directory"),
        (plain, 126, "Permission denied"),
        (dir_path, 126, "Permission denied"),
    ] {
        let out = run(&["--dry-run", "--", cmd], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{cmd}: {err}");
        assert!(out.stdout.is_empty(), "{cmd}: a plan was printed");
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{cmd}: {err}");
        assert!(
            errors[0].contains(&format!("cannot run {cmd}: {reason}")),
            "{cmd}: {err}"
        );
    }
    let out = run(
        &[
            "--dry-run",
            "--log-format",
            "json",
            "--",
            "./no-such-server",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(127));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("cannot run"))
        .expect("the error");
    let v: Value = serde_json::from_str(line).expect("a JSON line");
    assert_eq!(v["level"], "ERROR");
    assert_eq!(v["process.exit.code"], 127);
    assert_eq!(
        v["message"],
        "cannot run ./no-such-server: No such file or directory"
    );
}

#[test]
fn dry_run_refuses_what_the_real_run_refuses() {
    let line = late_error_line(&["--dry-run", "-w", "2", "--min-ready", "3", "--", "true"]);
    assert!(line.contains("--min-ready"), "{line}");
    // A bad admin address is a parse error: found before anything else, even a missing command.
    for (args, env, named) in [
        (&["--admin-listen", "localhost"][..], None, "--admin-listen"),
        (
            &["--admin-listen", "unix:/run/admin.sock"][..],
            None,
            "--admin-listen",
        ),
        (
            &["--admin-listen", "metrics=:9090"][..],
            None,
            "--admin-listen",
        ),
        (&["--admin-listen", ":99999"][..], None, "--admin-listen"),
        (
            &[][..],
            Some(("CLUSTER_INIT_ADMIN_LISTEN", "::9090")),
            "CLUSTER_INIT_ADMIN_LISTEN",
        ),
    ] {
        let mut argv = vec!["--dry-run"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--", "./no-such-server"]);
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        let line = usage_line(&argv, &env);
        assert!(line.starts_with("cluster-init: invalid value '"), "{line}");
        assert!(line.contains(named), "{argv:?} {env:?}: {line}");
    }
}

#[test]
fn dry_run_lists_every_setting() {
    // Where the plan shows an option that is not under its own id (with _ms or _bytes when it
    // is a duration or a size).
    let elsewhere = |id: &str| -> Option<&'static str> {
        Some(match id {
            "workers" => "/workers_spec",
            "backoff_initial" => "/backoff/initial_ms",
            "backoff_max" => "/backoff/max_ms",
            "backoff_reset" => "/backoff/reset_after_ms",
            "cpus" | "cpu_millis" => "/cpu/explicit",
            "cpu_round" => "/cpu/rounding",
            _ => return None,
        })
    };
    let p = plan(&[], &[]);
    let cmd = cli::command();
    let ids: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        // The plan is the dry run; the command is `command`.
        .filter(|id| id != "dry_run")
        .collect();
    assert!(ids.len() >= 30, "{ids:?}");
    for id in &ids {
        let found = match elsewhere(id) {
            Some(pointer) => p.pointer(pointer).is_some(),
            None => ["", "_ms", "_bytes"]
                .iter()
                .any(|suffix| p.get(format!("{id}{suffix}")).is_some()),
        };
        assert!(
            found,
            "the plan does not show --{}: {p}",
            id.replace('_', "-")
        );
    }

    let p = plan(
        &[
            "--ready-timeout",
            "2m",
            "--watchdog",
            "10s",
            "--max-worker-memory",
            "512M",
            "--memory-check-interval",
            "1s",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--stall-timeout",
            "30s",
            "--budget-interval",
            "0",
            "--worker-memory",
            "300M",
            "--memory-reserve",
            "64M",
            "--worker-output",
            "json",
            "--trace-command-args",
            "--no-subreaper",
            "--restart",
            "on-failure",
            "--admin-listen",
            ":9090",
            "--give-up-after",
            "0",
        ],
        &[],
    );
    let want = serde_json::json!({
        "ready_timeout_ms": 120_000, "watchdog_ms": 10_000, "max_worker_memory_bytes": 512u64 << 20,
        "memory_check_interval_ms": 1000, "log_format": "json", "log_level": "debug",
        "stall_timeout_ms": 30_000, "budget_interval_ms": 0, "worker_memory_bytes": 300u64 << 20,
        "memory_reserve_bytes": 64u64 << 20, "worker_output": "json", "trace_command_args": true,
        "no_subreaper": true, "restart": "on-failure", "admin_listen": ":9090",
        "give_up_after_ms": null,
    });
    for (key, value) in want.as_object().unwrap() {
        assert_eq!(&p[key], value, "{key}");
    }
    // What is in force, not what was typed.
    let p = plan(
        &[
            "--memory-check-interval",
            "10ms",
            "--backoff-initial",
            "2s",
            "--backoff-max",
            "1s",
        ],
        &[],
    );
    assert_eq!(p["memory_check_interval_ms"], 100);
    assert_eq!(p["backoff"]["max_ms"], 2000);
    // Off by default: null, not a number that looks like a setting.
    let p = plan(&[], &[]);
    for key in [
        "watchdog_ms",
        "max_worker_memory_bytes",
        "stall_timeout_ms",
        "admin_listen",
    ] {
        assert!(p[key].is_null(), "{key}: {}", p[key]);
    }
}

/// Whether this machine can bind IPv6 loopback.
fn has_ipv6() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// Starts a one-worker pool with `--admin-listen ADDR`; returns it and the address it logged.
fn admin_pool(addr: &str) -> (common::Init, String) {
    let init = common::Init::start(
        common::Mode::Subreaper,
        &["--admin-listen", addr, "-w", "1", "--", "sleep", "1000"],
        &[],
    )
    .expect("subreaper mode needs nothing");
    let logged = common::wait_for(Duration::from_secs(10), || {
        let log = init.log();
        let at = log.find("admin endpoint on http://")?;
        let rest = &log[at + "admin endpoint on http://".len()..];
        Some(rest.split_whitespace().next()?.to_string())
    })
    .unwrap_or_else(|| panic!("{addr}: no admin address logged:\n{}", init.log()));
    (init, logged)
}

fn livez(addr: &str) -> Result<(u16, String), String> {
    common::http_get(addr, "/livez", Duration::from_secs(5))
}

#[test]
fn admin_endpoint_on_a_host_name_and_on_ipv6() {
    let (init, logged) = admin_pool("localhost:0");
    assert!(
        logged.starts_with("127.0.0.1:"),
        "localhost is its IPv4 address: {logged}"
    );
    assert_eq!(livez(&logged).map(|r| r.0), Ok(200), "{}", init.log());
    drop(init);

    if !common::require(has_ipv6(), "IPv6 on the loopback interface") {
        return;
    }
    let (init, logged) = admin_pool("[::1]:0");
    assert!(logged.starts_with("[::1]:"), "{logged}");
    assert_eq!(livez(&logged).map(|r| r.0), Ok(200), "{}", init.log());
}

#[test]
fn admin_endpoint_on_a_bare_port_is_dual_stack() {
    let (init, logged) = admin_pool(":0");
    let port = logged.rsplit(':').next().unwrap();
    assert_eq!(
        livez(&format!("127.0.0.1:{port}")).map(|r| r.0),
        Ok(200),
        "IPv4 client; {logged}; {}",
        init.log()
    );
    if !common::require(has_ipv6(), "IPv6 on the loopback interface") {
        return;
    }
    assert!(logged.starts_with("[::]:"), "{logged}");
    assert_eq!(
        livez(&format!("[::1]:{port}")).map(|r| r.0),
        Ok(200),
        "IPv6 client; {}",
        init.log()
    );
}
