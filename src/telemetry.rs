//! Our own log lines (stderr, text or JSON) and, when a collector is configured, OpenTelemetry
//! traces of worker lives, exported as OTLP over HTTP.
//!
//! The supervisor calls one method per event and owns the handles ([`WorkerLife`], [`LifeLink`]);
//! this module never decides anything. Export runs on the SDK's batch thread with a bounded queue:
//! a collector that refuses or hangs costs spans, never a restart or a signal. Telemetry is off
//! (and every call a no-op) unless `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `telemetry/config.rs` lists the variables honoured.
//!
//! What a trace looks like:
//!
//! | span | trace | from .. to | carries |
//! |---|---|---|---|
//! | `worker` | its own, one per life | spawn .. reap | `cluster_init.worker.slot`, `cluster_init.worker.generation`, `process.pid`, `process.executable.name`, `process.exit.code`, `cluster_init.exit.signal`, `error.type`; a link to the slot's previous life; forwarded signals and "ready" as events |
//! | `worker.spawn` | child of `worker` | spawn .. exec (or ready) | |
//! | `worker.stop` | child of `worker` | stop signal .. reap | `cluster_init.stop.signal`, `cluster_init.stop.timeout_ms`, `cluster_init.stop.killed` |
//! | `worker.restart.backoff` | child of the life that ended | the delay, known in advance | `cluster_init.worker.slot`, `cluster_init.backoff.delay_ms` |
//! | `cluster_init.start`, `pool.scale`, `cluster_init.shutdown` | their own | | links to the lives they touch |
//!
//! A span reaches the collector when it ends, so a three-day `worker` span shows up after three
//! days: the short child spans are what shows a restart at once. Each worker gets `TRACEPARENT`
//! ([`Telemetry::traceparent`]) so an instrumented server can hang its own spans under its life.
//! Argument and environment values are never exported unless [`Settings::export_command_args`].
//!
//! Lifecycle spans are `tracing` spans bridged by tracing-opentelemetry, so that the log lines the
//! supervisor writes inside [`WorkerLife::in_scope`] become events of that worker's span. They are
//! hidden from the log output, whose lines already carry the same fields.

mod config;
mod http;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing::{info, warn, Dispatch, Level, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, Registry};

pub use config::DEFAULT_SERVICE_NAME;

use crate::pool::ExitReason;

/// Target of the lifecycle spans: the log layer skips them, the OpenTelemetry layer exports them.
/// Their integer fields are given as i64: tracing-opentelemetry turns a u64 field into a string.
const LIFE: &str = "cluster_init::life";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One object per line, fields flattened (`cluster_init.worker.slot`, `process.pid`, ...).
    Json,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub log_format: LogFormat,
    pub log_level: LevelFilter,
    /// `--trace-command-args`: put the command's arguments on worker spans. Off by default
    /// because arguments often carry secrets.
    pub export_command_args: bool,
    /// Bound on the final flush in [`Telemetry::shutdown`]; keep it inside the stop timeout.
    pub flush_timeout: Duration,
}

/// Logs and traces, owned by the supervisor and used from its thread only.
pub struct Telemetry {
    export: Option<Exporter>,
    notes: Option<Notes>,
}

struct Exporter {
    provider: SdkTracerProvider,
    /// For the spans whose times are known in advance (backoff), which `tracing` cannot express.
    tracer: SdkTracer,
    command_args: bool,
    flush_timeout: Duration,
    start: Option<Span>,
    shutdown: Option<Span>,
    /// Lives that ended while `shutdown` was open: its links.
    ended_in_shutdown: Vec<LifeLink>,
}

/// One life of one worker, from spawn to reap. A null pointer when telemetry is off.
#[derive(Default)]
pub struct WorkerLife(Option<Box<Life>>);

impl fmt::Debug for WorkerLife {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(life) => write!(
                f,
                "WorkerLife({:032x}-{:016x})",
                life.context.trace_id(),
                life.context.span_id()
            ),
            None => write!(f, "WorkerLife(off)"),
        }
    }
}

struct Life {
    span: Span,
    context: SpanContext,
    spawn: Option<Span>,
    stop: Option<(Span, String)>,
}

/// What a later span needs to point at a life after it ended: the restarted life's link, the
/// backoff's parent, the shutdown's links.
#[derive(Clone, Debug)]
pub struct LifeLink(SpanContext);

impl WorkerLife {
    pub fn link(&self) -> Option<LifeLink> {
        self.0.as_ref().map(|l| LifeLink(l.context.clone()))
    }

    /// Runs `f` inside this life's span: log lines written in it become events of the exported
    /// `worker` span (and nothing changes in the log output).
    pub fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.0 {
            Some(life) => life.span.in_scope(f),
            None => f(),
        }
    }
}

impl Telemetry {
    /// Installs the global subscriber (logs, plus the OpenTelemetry layer when exporting). Call
    /// once, before anything logs. `Err` is one line, for configuration the user must fix (the
    /// caller exits 2); an unreachable collector is never an error, only a warning later.
    pub fn init(
        settings: &Settings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Telemetry, String> {
        let (mut telemetry, dispatch, notes) = Telemetry::build(settings, &env)?;
        // A second init (tests) keeps the first subscriber; nothing else can fail here.
        let _ = tracing::dispatcher::set_global_default(dispatch);
        // Logged by [`Telemetry::log_notes`], after the line that names our version.
        telemetry.notes = Some(notes);
        Ok(telemetry)
    }

    /// Logs what setting up telemetry had to say (exporting where, or why not).
    pub fn log_notes(&mut self) {
        if let Some(notes) = self.notes.take() {
            notes.log();
        }
    }

    /// Like [`Telemetry::init`] without installing anything: for tests, which install the
    /// returned dispatcher with `tracing::dispatcher::set_default` (one per test thread).
    pub fn new(
        settings: &Settings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Telemetry, Dispatch), String> {
        let (telemetry, dispatch, notes) = Telemetry::build(settings, &env)?;
        tracing::dispatcher::with_default(&dispatch, || notes.log());
        Ok((telemetry, dispatch))
    }

    fn build(
        settings: &Settings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Telemetry, Dispatch, Notes), String> {
        let plan = config::plan(env)?;
        let logs = log_layer(settings);
        let export = match plan {
            config::Plan::Off(warning) => {
                let dispatch = Dispatch::new(Registry::default().with(logs));
                return Ok((
                    Telemetry {
                        export: None,
                        notes: None,
                    },
                    dispatch,
                    Notes::warn(warning),
                ));
            }
            config::Plan::Export(export) => export,
        };
        // Building the provider spawns the batch thread, and the SDK panics when it cannot
        // (a tight pids limit): that costs the traces, not the pool, and it must not print a
        // panic either. Only this thread runs yet, so silencing the hook hides no other panic.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let built = catch_unwind(|| provider(&export));
        std::panic::set_hook(hook);
        let provider = match built {
            Ok(Ok(provider)) => provider,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let dispatch = Dispatch::new(Registry::default().with(logs));
                let note = "cannot start the trace exporter (thread creation failed?); traces are not exported";
                return Ok((
                    Telemetry {
                        export: None,
                        notes: None,
                    },
                    dispatch,
                    Notes {
                        warnings: export
                            .warnings
                            .iter()
                            .cloned()
                            .chain([note.to_string()])
                            .collect(),
                        info: None,
                    },
                ));
            }
        };
        let tracer = provider.tracer("cluster-init");
        // Our spans are INFO; the collector gets them whatever --log-level says.
        let otel_level = settings.log_level.max(LevelFilter::INFO);
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer.clone())
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_target(false)
            .with_filter(otel_level);
        let dispatch = Dispatch::new(Registry::default().with(logs).with(otel));
        let note = format!(
            "exporting traces to {} as service {:?}",
            export.endpoint, export.service_name
        );
        let telemetry = Telemetry {
            export: Some(Exporter {
                provider,
                tracer,
                command_args: settings.export_command_args,
                flush_timeout: settings.flush_timeout,
                start: None,
                shutdown: None,
                ended_in_shutdown: Vec::new(),
            }),
            notes: None,
        };
        Ok((
            telemetry,
            dispatch,
            Notes {
                warnings: export.warnings.clone(),
                info: Some(note),
            },
        ))
    }

    pub fn enabled(&self) -> bool {
        self.export.is_some()
    }

    /// Opens `cluster_init.start`.
    pub fn start(&mut self, workers: u32, detail: &str) {
        if let Some(ex) = &mut self.export {
            ex.start = shielded(|| {
                tracing::span!(
                    target: LIFE,
                    parent: None,
                    Level::INFO,
                    "cluster_init.start",
                    cluster_init.workers = i64::from(workers),
                    cluster_init.sizing = detail
                )
            });
        }
    }

    /// Ends `cluster_init.start`, linked to the lives it started.
    pub fn started(&mut self, lives: Vec<LifeLink>) {
        if let Some(span) = self.export.as_mut().and_then(|ex| ex.start.take()) {
            shielded(|| {
                link_all(&span, lives);
                end(span);
            });
        }
    }

    /// Opens the `worker` span of a new life (and its `worker.spawn` child), linked to the
    /// slot's previous life. `pid` is 0 when the span opens before the fork (so that
    /// `TRACEPARENT` can point at it); [`Telemetry::worker_exec_ok`] fills it in.
    #[allow(clippy::too_many_arguments)]
    pub fn worker_spawned(
        &mut self,
        slot: u32,
        generation: u64,
        pid: i32,
        exe: &str,
        args: &[String],
        previous: Option<&LifeLink>,
    ) -> WorkerLife {
        let Some(ex) = &self.export else {
            return WorkerLife(None);
        };
        let command_args = ex.command_args;
        let life = shielded(|| {
            let span = tracing::span!(
                target: LIFE,
                parent: None,
                Level::INFO,
                "worker",
                cluster_init.worker.slot = i64::from(slot),
                cluster_init.worker.generation = generation as i64,
                process.executable.name = exe
            );
            if pid > 0 {
                span.set_attribute("process.pid", i64::from(pid));
            }
            if command_args {
                span.set_attribute("process.command_args", string_array(args));
            }
            // Links must be in place before the span starts, and a child starts its parent.
            link_all(&span, previous.cloned());
            let spawn = tracing::span!(target: LIFE, parent: &span, Level::INFO, "worker.spawn");
            let context = span.context().span().span_context().clone();
            Box::new(Life {
                span,
                context,
                spawn: Some(spawn),
                stop: None,
            })
        });
        WorkerLife(life)
    }

    /// Exec succeeded: records the pid and ends `worker.spawn`, unless it should last until
    /// the worker is ready.
    pub fn worker_exec_ok(&mut self, life: &mut WorkerLife, pid: i32, awaiting_ready: bool) {
        if let Some(life) = &mut life.0 {
            shielded(|| {
                life.span.set_attribute("process.pid", i64::from(pid));
                if !awaiting_ready {
                    if let Some(spawn) = life.spawn.take() {
                        end(spawn);
                    }
                }
            });
        }
    }

    /// No process ran (the fork or the exec failed): ends the life at once, with `error.type`
    /// the reason and the errno's text as the status.
    pub fn worker_exec_failed(
        &mut self,
        life: WorkerLife,
        reason: ExitReason,
        code: i32,
        error: &str,
    ) {
        if let Some(life) = &life.0 {
            shielded(|| {
                life.span.set_attribute("error.type", reason.as_str());
                life.span
                    .set_attribute("cluster_init.exit.reason", reason.as_str());
                if code != 0 {
                    life.span
                        .set_attribute("process.exit.code", i64::from(code));
                }
                life.span.set_status(Status::error(error.to_string()));
            });
        }
        self.close_life(life);
    }

    /// The worker said it is ready: an event, and the end of `worker.spawn` if still open.
    pub fn worker_ready(&mut self, life: &mut WorkerLife) {
        if let Some(life) = &mut life.0 {
            shielded(|| {
                life.span.add_event("ready", Vec::new());
                if let Some(spawn) = life.spawn.take() {
                    end(spawn);
                }
            });
        }
    }

    /// A signal forwarded to the worker's process group: an event of its span.
    pub fn worker_signal(&mut self, life: &WorkerLife, signal: &str) {
        if let Some(life) = &life.0 {
            shielded(|| {
                let attrs = vec![KeyValue::new("cluster_init.signal", signal.to_string())];
                life.span.add_event("signal forwarded", attrs);
            });
        }
    }

    /// The stop signal went out: opens `worker.stop`.
    pub fn worker_stopping(&mut self, life: &mut WorkerLife, signal: &str, timeout: Duration) {
        if let Some(life) = &mut life.0 {
            shielded(|| {
                let span = tracing::span!(
                    target: LIFE,
                    parent: &life.span,
                    Level::INFO,
                    "worker.stop",
                    cluster_init.stop.signal = signal,
                    cluster_init.stop.timeout_ms = timeout.as_millis() as i64
                );
                life.stop = Some((span, signal.to_string()));
            });
        }
    }

    /// The worker was reaped: ends `worker.stop` (if any) and `worker`, with the exit reason
    /// as `cluster_init.exit.reason` and, for a failure, as `error.type` with status Error.
    pub fn worker_exited(
        &mut self,
        life: WorkerLife,
        code: Option<i32>,
        signal: Option<&str>,
        reason: ExitReason,
    ) {
        let Some(inner) = &life.0 else {
            return;
        };
        shielded(|| {
            let span = &inner.span;
            if let Some(code) = code {
                span.set_attribute("process.exit.code", i64::from(code));
            }
            if let Some(signal) = signal {
                span.set_attribute("cluster_init.exit.signal", signal.to_string());
            }
            span.set_attribute("cluster_init.exit.reason", reason.as_str());
            if reason.is_failure() {
                span.set_attribute("error.type", reason.as_str());
                let description = match (code, signal) {
                    (Some(c), _) => format!("{}: exit code {c}", reason.as_str()),
                    (None, Some(s)) => format!("{}: {s}", reason.as_str()),
                    _ => reason.as_str().to_string(),
                };
                span.set_status(Status::error(description));
            }
            if let Some((stop, _)) = &inner.stop {
                stop.set_attribute(
                    "cluster_init.stop.killed",
                    reason == ExitReason::KilledAfterTimeout,
                );
            }
        });
        self.close_life(life);
    }

    /// Ends every span of a life, children first (a child keeps its parent open).
    fn close_life(&mut self, life: WorkerLife) {
        let Some(life) = life.0 else {
            return;
        };
        let Life {
            span,
            context,
            spawn,
            stop,
        } = *life;
        shielded(move || {
            if let Some((stop, _)) = stop {
                end(stop);
            }
            if let Some(spawn) = spawn {
                end(spawn);
            }
            end(span);
        });
        if let Some(ex) = self.export.as_mut().filter(|ex| ex.shutdown.is_some()) {
            ex.ended_in_shutdown.push(LifeLink(context));
        }
    }

    /// The delay before restarting `slot`: a `worker.restart.backoff` span under the life that
    /// ended, stamped with its known end and sent at once rather than after the wait.
    pub fn backoff(&mut self, slot: u32, previous: Option<&LifeLink>, delay: Duration) {
        if let Some(ex) = &self.export {
            shielded(|| {
                let now = SystemTime::now();
                let parent = match previous {
                    Some(p) => opentelemetry::Context::new().with_remote_span_context(p.0.clone()),
                    None => opentelemetry::Context::new(),
                };
                let mut span = ex
                    .tracer
                    .span_builder("worker.restart.backoff")
                    .with_start_time(now)
                    .with_attributes([
                        KeyValue::new("cluster_init.worker.slot", i64::from(slot)),
                        KeyValue::new("cluster_init.backoff.delay_ms", delay.as_millis() as i64),
                    ])
                    .start_with_context(&ex.tracer, &parent);
                span.end_with_timestamp(now + delay);
            });
        }
    }

    /// The pool changed size: a `pool.scale` span linked to the lives it stopped, with the
    /// reason (`manual`, `budget`).
    pub fn scale(&mut self, from: u32, to: u32, reason: &str, lives: Vec<LifeLink>) {
        if self.export.is_some() {
            shielded(|| {
                let span = tracing::span!(
                    target: LIFE,
                    parent: None,
                    Level::INFO,
                    "pool.scale",
                    cluster_init.pool.from = i64::from(from),
                    cluster_init.pool.to = i64::from(to),
                    cluster_init.scale.reason = reason
                );
                link_all(&span, lives);
                end(span);
            });
        }
    }

    /// Opens `cluster_init.shutdown`.
    pub fn shutdown_begin(&mut self, reason: &str) {
        if let Some(ex) = &mut self.export {
            ex.shutdown = shielded(|| {
                tracing::span!(
                    target: LIFE,
                    parent: None,
                    Level::INFO,
                    "cluster_init.shutdown",
                    cluster_init.shutdown.reason = reason
                )
            });
        }
    }

    /// Ends `cluster_init.shutdown` (linked to the lives that ended since
    /// [`Telemetry::shutdown_begin`]) and flushes everything, waiting at most
    /// `Settings::flush_timeout`. Spans ended after this are not exported.
    pub fn shutdown(&mut self) {
        let Some(mut ex) = self.export.take() else {
            return;
        };
        let flushed = catch_unwind(AssertUnwindSafe(|| {
            if let Some(span) = ex.start.take() {
                end(span);
            }
            if let Some(span) = ex.shutdown.take() {
                link_all(&span, ex.ended_in_shutdown.drain(..));
                end(span);
            }
            ex.provider.shutdown_with_timeout(ex.flush_timeout)
        }));
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(
                "traces not flushed within {:?}: {e}; the last spans may be lost",
                ex.flush_timeout
            ),
            Err(_) => warn!("trace flush failed (panic); the last spans may be lost"),
        }
    }

    /// `TRACEPARENT` for the worker (W3C trace context), pointing at its life's span; None when
    /// telemetry is off.
    pub fn traceparent(life: &WorkerLife) -> Option<String> {
        let cx = &life.0.as_ref()?.context;
        cx.is_valid().then(|| {
            format!(
                "00-{:032x}-{:016x}-{:02x}",
                cx.trace_id(),
                cx.span_id(),
                cx.trace_flags()
            )
        })
    }
}

/// What `build` wants logged once a subscriber is in place: warnings, then a line of info.
struct Notes {
    warnings: Vec<String>,
    info: Option<String>,
}

impl Notes {
    fn warn(w: Option<String>) -> Notes {
        Notes {
            warnings: w.into_iter().collect(),
            info: None,
        }
    }

    fn log(self) {
        for w in self.warnings {
            warn!("{w}");
        }
        if let Some(i) = self.info {
            info!("{i}");
        }
    }
}

/// Our lines on stderr (stdout belongs to the workers), without the lifecycle spans, whose fields
/// the supervisor's lines already carry.
/// The log lines alone, for what is written before (or without) [`Telemetry::init`]: usage
/// errors and setup failures, in the same format as every later line.
pub fn log_dispatch(settings: &Settings) -> Dispatch {
    Dispatch::new(Registry::default().with(log_layer(settings)))
}

fn log_layer(settings: &Settings) -> Box<dyn Layer<Registry> + Send + Sync> {
    let not_life = filter_fn(|meta| !(meta.is_span() && meta.target() == LIFE));
    let filter = settings.log_level.and(not_life);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(crate::sink::MakeEventWriter(crate::sink::stderr()))
        .with_ansi(false)
        .with_target(false);
    match settings.log_format {
        LogFormat::Text => layer.with_filter(filter).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    }
}

fn provider(export: &config::Export) -> Result<SdkTracerProvider, String> {
    // The exporter url-decodes header values itself; re-escape '%' so ours (already decoded)
    // arrive as written.
    let headers = export
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.replace('%', "%25")))
        .collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(http::Client::new(export.target.clone(), export.timeout))
        .with_endpoint(export.endpoint.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(export.timeout)
        .with_headers(headers)
        .build()
        .map_err(|e| format!("cannot set up trace export: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(export.schedule_delay)
        .with_max_queue_size(export.max_queue_size)
        .with_max_export_batch_size(export.max_export_batch_size)
        .build();
    let resource = Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(
            export
                .resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_service_name(export.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        )
        .with_resource(resource)
        .build())
}

/// Runs a telemetry call on the supervisor's thread: a bug in it costs a span, never PID 1.
fn shielded<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// Ends a lifecycle span now. tracing-opentelemetry stamps a span's end at its last *exit*
/// once it has been entered (by a log line in `in_scope`, hours ago); entering it here makes
/// that moment now.
fn end(span: Span) {
    span.in_scope(|| {});
}

fn link_all(span: &Span, links: impl IntoIterator<Item = LifeLink>) {
    for LifeLink(cx) in links {
        span.add_link(cx);
    }
}

fn string_array(items: &[String]) -> Value {
    let values: Vec<StringValue> = items.iter().map(|a| a.clone().into()).collect();
    Value::Array(Array::from(values))
}
