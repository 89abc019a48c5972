//! The built binary exporting worker lives to a real OTLP/HTTP receiver (official protobufs),
//! and collectors that refuse or hang changing neither restarts nor the time to stop.

mod common;

use std::time::{Duration, Instant};

use common::otlp::{Mode as Collector, Receiver, StatusCode};
use common::{lines, scratch, wait_for, Init, Mode};

const SECRET: &str = "s3cr3t-arg";

#[test]
fn worker_lives_reach_the_collector_with_links_and_traceparent() {
    let rx = Receiver::start(Collector::Normal);
    let dir = scratch();
    let out = dir.path().display();
    // First life writes its TRACEPARENT and fails with 3; the second writes its own and waits.
    let script = format!(
        "echo $TRACEPARENT >> {out}/tp; if [ ! -e {out}/once ]; then touch {out}/once; exit 3; fi; exec sleep 1000"
    );
    let endpoint = rx.endpoint();
    let Some(mut init) = Init::start(
        Mode::Subreaper,
        &[
            "-w",
            "1",
            "--backoff-initial",
            "100ms",
            "--",
            "sh",
            "-c",
            &script,
            "sh",
            SECRET,
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "checkout"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    ) else {
        return;
    };
    wait_for(Duration::from_secs(10), || {
        (lines(&dir.path().join("tp")).len() == 2).then_some(())
    })
    .expect("two lives");
    // Short spans of the running life are exported while it runs.
    let spawned = rx.wait_for(Duration::from_secs(10), |s| {
        s.iter().filter(|s| s.name == "worker.spawn").count() >= 2
    });
    assert!(
        spawned.is_ok(),
        "worker.spawn spans did not arrive while the pool ran: {spawned:#?}"
    );

    init.signal(libc::SIGTERM);
    assert_eq!(
        init.wait(Duration::from_secs(10)),
        Some(0),
        "log:\n{}",
        init.log()
    );
    // Everything, including the life that ended at shutdown, arrived before the init exited.
    let spans = rx.spans();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "cluster_init.start",
        "worker",
        "worker.spawn",
        "worker.restart.backoff",
        "worker.stop",
        "cluster_init.shutdown",
    ] {
        assert!(names.contains(&want), "no {want} span in {names:?}");
    }
    assert_eq!(
        rx.resource_attr("service.name")
            .and_then(|v| v.as_str().map(String::from))
            .as_deref(),
        Some("checkout")
    );

    let mut lives: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "worker")
        .cloned()
        .collect();
    lives.sort_by_key(|s| s.start_unix_nanos);
    assert_eq!(lives.len(), 2, "{lives:#?}");
    let (crashed, second) = (&lives[0], &lives[1]);
    assert_eq!(
        crashed.attr("process.exit.code").and_then(|v| v.as_int()),
        Some(3)
    );
    assert_eq!(crashed.status, StatusCode::Error);
    assert_eq!(
        crashed
            .attr("cluster_init.worker.slot")
            .and_then(|v| v.as_int()),
        Some(0)
    );
    assert_eq!(
        crashed
            .attr("process.executable.name")
            .and_then(|v| v.as_str().map(String::from))
            .as_deref(),
        Some("sh")
    );
    assert!(crashed
        .attr("process.pid")
        .and_then(|v| v.as_int())
        .is_some_and(|p| p > 1));
    assert_ne!(
        second.status,
        StatusCode::Error,
        "a life stopped by our SIGTERM is no error"
    );
    assert!(
        second
            .links
            .iter()
            .any(|l| l.span_id == crashed.span_id && l.trace_id == crashed.trace_id),
        "the restarted life does not link to the crashed one: {:?}",
        second.links
    );
    // Each worker's TRACEPARENT names its own life's span.
    let tps = lines(&dir.path().join("tp"));
    for (tp, life) in tps.iter().zip([crashed, second]) {
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(
            parts[1], life.trace_id,
            "TRACEPARENT {tp} is not the life's trace"
        );
        assert_eq!(
            parts[2], life.span_id,
            "TRACEPARENT {tp} is not the life's span"
        );
    }
    // Secrets stay home: no argument of the command anywhere in what was exported.
    let dump = format!("{spans:?}");
    assert!(
        !dump.contains(SECRET),
        "the command's argument was exported"
    );
}

/// Starts of a crash-looping worker within `window`, and how long SIGTERM takes to end the init.
fn crash_loop(collector: Option<&Receiver>, window: Duration) -> (usize, Duration) {
    let dir = scratch();
    let script = format!("date +%s%N >> {}/starts; exit 1", dir.path().display());
    let endpoint = collector.map(|c| c.endpoint()).unwrap_or_default();
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10000"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    if collector.is_some() {
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()));
    }
    let mut init = Init::start(
        Mode::Subreaper,
        &[
            "-w",
            "2",
            "--backoff-initial",
            "50ms",
            "--backoff-max",
            "100ms",
            "--stop-timeout",
            "5s",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &env,
    )
    .expect("subreaper mode needs nothing");
    std::thread::sleep(window);
    let starts = lines(&dir.path().join("starts")).len();
    let t = Instant::now();
    init.signal(libc::SIGTERM);
    init.wait(Duration::from_secs(20)).expect("init exits");
    (starts, t.elapsed())
}

#[test]
fn refusing_or_hanging_collectors_delay_neither_restarts_nor_the_stop() {
    let window = Duration::from_millis(1500);
    let (baseline, _) = crash_loop(None, window);
    for mode in [Collector::Refuse, Collector::Hang, Collector::Fail500] {
        let rx = Receiver::start(mode);
        let (starts, stop) = crash_loop(Some(&rx), window);
        // Same backoff, same window: the count may differ by jitter, not by blocking.
        assert!(
            starts + 6 >= baseline,
            "{mode:?}: {starts} starts against {baseline} without telemetry"
        );
        // The flush at exit is bounded: stop-timeout 5s gives a flush bound of 1s.
        assert!(
            stop < Duration::from_millis(2500),
            "{mode:?}: stopping took {stop:?}"
        );
    }
}

#[test]
fn a_kill_after_the_stop_timeout_is_an_error_with_the_log_line_as_event() {
    let dir = common::scratch();
    let up = dir.path().join("up");
    let rx = Receiver::start(Collector::Normal);
    let endpoint = rx.endpoint();
    let Some(mut init) = Init::start(
        Mode::Subreaper,
        &[
            "-w",
            "1",
            "--stop-timeout",
            "500ms",
            "--",
            "sh",
            "-c",
            &format!(
                "trap '' TERM; touch {}; while :; do sleep 0.05; done",
                up.display()
            ),
        ],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    ) else {
        return;
    };
    // SIGTERM is ignored only once the file is there.
    common::wait_for(Duration::from_secs(10), || up.exists().then_some(())).expect("worker up");
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(Duration::from_secs(10)), Some(137));
    let life = rx
        .span("worker")
        .expect("the life was exported before exit");
    assert_eq!(life.status, StatusCode::Error, "{life:#?}");
    assert_eq!(
        life.attr("cluster_init.exit.signal")
            .and_then(|v| v.as_str().map(String::from))
            .as_deref(),
        Some("SIGKILL")
    );
    let events: Vec<String> = life
        .events
        .iter()
        .map(|e| format!("{} {:?}", e.name, e.attrs))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.contains("SIGKILL to the worker's process group")),
        "{events:#?}"
    );
    assert!(rx.span("worker.stop").is_some());
}
