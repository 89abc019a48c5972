//! Worker lives exported to a real OTLP/HTTP receiver, and collectors that refuse or hang.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cluster_init::pool::ExitReason;
use cluster_init::telemetry::{LogFormat, Settings, Telemetry};
use common::otlp::{Mode, Receiver, Span, StatusCode, Value};
use tracing::level_filters::LevelFilter;

fn settings(flush: Duration) -> Settings {
    Settings {
        log_format: LogFormat::Text,
        log_level: LevelFilter::WARN,
        export_command_args: false,
        flush_timeout: flush,
    }
}

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn args() -> Vec<String> {
    vec!["--db-password".to_string(), "hunter2".to_string()]
}

fn only<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[test]
fn a_crashed_life_and_its_successor_become_linked_traces() {
    let rx = Receiver::start(Mode::Normal);
    let endpoint = rx.endpoint();
    let (mut t, dispatch) = Telemetry::new(
        &settings(Duration::from_secs(5)),
        env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=blue%20team"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test",
            ),
        ]),
    )
    .unwrap();
    let _guard = tracing::dispatcher::set_default(&dispatch);
    assert!(t.enabled());

    t.start(1, "workers=1: as requested");
    let mut first = t.worker_spawned(0, 1, 4242, "server", &args(), None);
    t.worker_exec_ok(&mut first, 4242, false);
    let traceparent = Telemetry::traceparent(&first).expect("a traceparent");
    t.started(first.link().into_iter().collect());
    first.in_scope(|| tracing::warn!(cluster_init.worker.slot = 0, "worker wrote to stderr"));
    t.worker_signal(&first, "SIGHUP");
    let first_link = first.link().unwrap();
    t.worker_exited(first, Some(3), None, ExitReason::ExitNonzero);
    t.backoff(0, Some(&first_link), Duration::from_millis(250));

    let mut second = t.worker_spawned(0, 2, 0, "server", &args(), Some(&first_link));
    t.worker_exec_ok(&mut second, 4343, true);
    std::thread::sleep(Duration::from_millis(20));
    t.worker_ready(&mut second);
    t.shutdown_begin("SIGTERM");
    t.worker_stopping(&mut second, "SIGTERM", Duration::from_secs(10));
    t.worker_exited(second, None, Some("SIGTERM"), ExitReason::Stopped);
    t.shutdown();

    // shutdown() flushed: everything is there already.
    let spans = rx.spans();
    let names = |n| only(&spans, n).len();
    assert_eq!(names("worker"), 2, "{spans:#?}");
    assert_eq!(names("worker.spawn"), 2);
    assert_eq!(names("worker.stop"), 1);
    assert_eq!(names("worker.restart.backoff"), 1);
    assert_eq!(names("cluster_init.start"), 1);
    assert_eq!(names("cluster_init.shutdown"), 1);
    assert_eq!(
        rx.resource_attr("service.name"),
        Some(Value::Str("cluster-init".into()))
    );
    assert_eq!(
        rx.resource_attr("deployment.environment.name"),
        Some(Value::Str("test".into()))
    );
    let req = &rx.requests()[0];
    assert_eq!(req.path, "/v1/traces");
    assert_eq!(
        req.headers.get("x-tenant").map(String::as_str),
        Some("blue team")
    );

    let workers = only(&spans, "worker");
    let w1 = *workers
        .iter()
        .find(|s| s.attr("process.pid") == Some(&Value::Int(4242)))
        .unwrap();
    let w2 = *workers
        .iter()
        .find(|s| s.attr("process.pid") == Some(&Value::Int(4343)))
        .unwrap();

    // The crashed life.
    assert_eq!(w1.parent, None);
    assert_eq!(w1.attr("cluster_init.worker.slot"), Some(&Value::Int(0)));
    assert_eq!(
        w1.attr("cluster_init.worker.generation"),
        Some(&Value::Int(1))
    );
    assert_eq!(
        w1.attr("process.executable.name"),
        Some(&Value::Str("server".into()))
    );
    assert_eq!(w1.attr("process.exit.code"), Some(&Value::Int(3)));
    assert_eq!(
        w1.attr("error.type"),
        Some(&Value::Str("exit_nonzero".into()))
    );
    assert_eq!(
        w1.attr("cluster_init.exit.reason"),
        Some(&Value::Str("exit_nonzero".into()))
    );
    assert_eq!(w1.status, StatusCode::Error);
    assert_eq!(traceparent, format!("00-{}-{}-01", w1.trace_id, w1.span_id));
    let events: Vec<&str> = w1.events.iter().map(|e| e.name.as_str()).collect();
    assert!(events.contains(&"worker wrote to stderr"), "{events:?}");
    let sig = w1
        .events
        .iter()
        .find(|e| e.name == "signal forwarded")
        .unwrap();
    assert_eq!(
        sig.attrs.get("cluster_init.signal"),
        Some(&Value::Str("SIGHUP".into()))
    );
    // Secrets stay home by default.
    for s in &spans {
        assert!(s.attr("process.command_args").is_none());
        assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");
    }

    // Its successor: a new trace that follows from it, stopped cleanly.
    assert_ne!(w2.trace_id, w1.trace_id);
    assert_eq!(w2.links.len(), 1);
    assert_eq!(
        (w2.links[0].trace_id.as_str(), w2.links[0].span_id.as_str()),
        (w1.trace_id.as_str(), w1.span_id.as_str())
    );
    assert_eq!(
        w2.attr("cluster_init.exit.signal"),
        Some(&Value::Str("SIGTERM".into()))
    );
    assert_eq!(w2.attr("process.exit.code"), None);
    assert_ne!(w2.status, StatusCode::Error);
    let ready = w2.events.iter().find(|e| e.name == "ready").unwrap();
    let spawn2 = only(&spans, "worker.spawn")
        .into_iter()
        .find(|s| s.parent.as_deref() == Some(w2.span_id.as_str()))
        .unwrap();
    // Awaiting readiness, worker.spawn lasts until the worker is ready.
    assert!(spawn2.end_unix_nanos >= ready.unix_nanos);

    // Children sit under their life.
    for spawn in only(&spans, "worker.spawn") {
        assert!(
            spawn.parent == Some(w1.span_id.clone()) || spawn.parent == Some(w2.span_id.clone())
        );
        assert!(
            spawn.end_unix_nanos
                <= spans
                    .iter()
                    .find(|w| Some(&w.span_id) == spawn.parent.as_ref())
                    .unwrap()
                    .end_unix_nanos
        );
    }
    let stop = only(&spans, "worker.stop")[0];
    assert_eq!(
        (stop.trace_id.as_str(), stop.parent.as_deref()),
        (w2.trace_id.as_str(), Some(w2.span_id.as_str()))
    );
    assert_eq!(
        stop.attr("cluster_init.stop.signal"),
        Some(&Value::Str("SIGTERM".into()))
    );
    let backoff = only(&spans, "worker.restart.backoff")[0];
    assert_eq!(backoff.parent.as_deref(), Some(w1.span_id.as_str()));
    assert_eq!(backoff.duration(), Duration::from_millis(250));
    assert_eq!(
        backoff.attr("cluster_init.backoff.delay_ms"),
        Some(&Value::Int(250))
    );

    // The init's own traces point at the lives they touched.
    let start = only(&spans, "cluster_init.start")[0];
    assert_eq!(start.links[0].span_id, w1.span_id);
    assert_eq!(start.attr("cluster_init.workers"), Some(&Value::Int(1)));
    let shutdown = only(&spans, "cluster_init.shutdown")[0];
    assert_eq!(shutdown.links[0].span_id, w2.span_id);
    assert_eq!(
        shutdown.attr("cluster_init.shutdown.reason"),
        Some(&Value::Str("SIGTERM".into()))
    );
}

#[test]
fn a_long_life_ends_when_reaped_not_when_last_logged_in() {
    let rx = Receiver::start(Mode::Normal);
    let endpoint = rx.endpoint();
    let (mut t, dispatch) = Telemetry::new(
        &settings(Duration::from_secs(5)),
        env_of(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            &format!("{endpoint}/v1/traces"),
        )]),
    )
    .unwrap();
    let _guard = tracing::dispatcher::set_default(&dispatch);
    let mut life = t.worker_spawned(3, 7, 99, "server", &[], None);
    t.worker_exec_ok(&mut life, 99, false);
    life.in_scope(|| tracing::info!("early line"));
    std::thread::sleep(Duration::from_millis(300));
    t.worker_exited(life, None, Some("SIGKILL"), ExitReason::KilledAfterTimeout);
    t.shutdown();
    let w = rx.span("worker").expect("worker span");
    assert!(
        w.duration() >= Duration::from_millis(300),
        "{:?}",
        w.duration()
    );
    assert_eq!(
        w.attr("error.type"),
        Some(&Value::Str("killed_after_timeout".into()))
    );
    assert_eq!(w.status, StatusCode::Error);
}

#[test]
fn command_args_are_exported_only_when_asked() {
    let rx = Receiver::start(Mode::Normal);
    let endpoint = rx.endpoint();
    let mut s = settings(Duration::from_secs(5));
    s.export_command_args = true;
    let (mut t, dispatch) = Telemetry::new(
        &s,
        env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "shop"),
        ]),
    )
    .unwrap();
    let _guard = tracing::dispatcher::set_default(&dispatch);
    let life = t.worker_spawned(0, 1, 10, "server", &args(), None);
    t.worker_exited(life, Some(0), None, ExitReason::Recycled);
    let doomed = t.worker_spawned(1, 1, 0, "server", &args(), None);
    t.worker_exec_failed(
        doomed,
        ExitReason::ExecFailed,
        126,
        "exec: permission denied",
    );
    t.shutdown();
    let spans = rx.spans();
    let ok = spans
        .iter()
        .find(|s| s.attr("process.pid").is_some())
        .unwrap();
    assert_eq!(
        ok.attr("process.command_args"),
        Some(&Value::Array(vec![
            Value::Str("--db-password".into()),
            Value::Str("hunter2".into())
        ]))
    );
    assert_eq!(ok.status, StatusCode::Unset);
    let failed = spans
        .iter()
        .find(|s| s.attr("error.type") == Some(&Value::Str("exec_failed".into())))
        .unwrap();
    assert_eq!(failed.status, StatusCode::Error);
    assert_eq!(
        rx.resource_attr("service.name"),
        Some(Value::Str("shop".into()))
    );
}

/// Runs a busy supervisor against a bad collector: no call may block, and shutdown must return
/// within the flush bound.
fn supervisor_is_never_held_up_by(mode: Mode) -> Receiver {
    let rx = Receiver::start(mode);
    let endpoint = rx.endpoint();
    let flush = Duration::from_millis(800);
    let (mut t, dispatch) = Telemetry::new(
        &settings(flush),
        env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "20"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
        ]),
    )
    .unwrap();
    let _guard = tracing::dispatcher::set_default(&dispatch);
    let mut slowest = Duration::ZERO;
    let mut previous = None;
    let began = Instant::now();
    // Long enough that exports are in flight (and, when hung, stuck) while we keep going.
    while began.elapsed() < Duration::from_millis(400) {
        let t0 = Instant::now();
        let mut life = t.worker_spawned(0, 1, 1, "server", &[], previous.as_ref());
        t.worker_exec_ok(&mut life, 99, false);
        t.worker_signal(&life, "SIGHUP");
        previous = life.link();
        t.worker_exited(life, Some(1), None, ExitReason::ExitNonzero);
        t.backoff(0, previous.as_ref(), Duration::from_millis(100));
        slowest = slowest.max(t0.elapsed());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        slowest < Duration::from_millis(50),
        "a telemetry call took {slowest:?}"
    );
    let t0 = Instant::now();
    t.shutdown();
    let took = t0.elapsed();
    assert!(
        took < flush + Duration::from_millis(300),
        "shutdown took {took:?}"
    );
    rx
}

#[test]
fn a_refusing_collector_delays_nothing() {
    supervisor_is_never_held_up_by(Mode::Refuse);
}

#[test]
fn a_hanging_collector_delays_nothing_and_shutdown_is_bounded() {
    supervisor_is_never_held_up_by(Mode::Hang);
}

#[test]
fn a_failing_collector_delays_nothing() {
    let rx = supervisor_is_never_held_up_by(Mode::Fail500);
    assert!(!rx.requests().is_empty(), "the exporter never tried");
}

#[test]
fn without_an_endpoint_everything_is_a_cheap_no_op() {
    let (mut t, _dispatch) =
        Telemetry::new(&settings(Duration::from_secs(1)), env_of(&[])).unwrap();
    assert!(!t.enabled());
    let mut life = t.worker_spawned(0, 1, 1, "server", &args(), None);
    assert_eq!(std::mem::size_of_val(&life), std::mem::size_of::<usize>());
    assert!(Telemetry::traceparent(&life).is_none());
    assert!(life.link().is_none());
    t.worker_exec_ok(&mut life, 99, false);
    t.worker_exited(life, Some(1), None, ExitReason::ExitNonzero);
    let t0 = Instant::now();
    t.shutdown();
    assert!(t0.elapsed() < Duration::from_millis(10));
}

#[test]
fn grpc_is_refused_at_start() {
    let err = Telemetry::new(
        &settings(Duration::from_secs(1)),
        env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]),
    )
    .err()
    .expect("an error");
    assert!(err.contains("grpc") && !err.contains('\n'), "{err}");
}
