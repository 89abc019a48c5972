//! A real OTLP/HTTP trace receiver for the tests: `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest`, decoded with the generated prost messages (no gRPC server: its
//! crates' features would unify into the binary under test). It can also misbehave the ways a
//! collector does: refuse connections, hang, or answer 500.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;

/// How the receiver behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Accepts, stores, answers 200.
    Normal,
    /// Nothing listens on the port: connection refused.
    Refuse,
    /// Accepts connections and never answers.
    Hang,
    /// Reads each request and answers 500.
    Fail500,
}

/// An attribute value, as the collector received it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Array(Vec<Value>),
    Other,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Double(d) => write!(f, "{d}"),
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", items.join(","))
            }
            Value::Other => write!(f, "?"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCode {
    Unset,
    Ok,
    Error,
}

#[derive(Clone, Debug)]
pub struct Link {
    pub trace_id: String,
    pub span_id: String,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    pub unix_nanos: u64,
    pub attrs: HashMap<String, Value>,
}

/// One received span, ids in lowercase hex.
#[derive(Clone, Debug)]
pub struct Span {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// None for a root span.
    pub parent: Option<String>,
    pub attrs: HashMap<String, Value>,
    pub status: StatusCode,
    pub status_message: String,
    pub links: Vec<Link>,
    pub events: Vec<Event>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub resource: HashMap<String, Value>,
    pub scope: String,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attrs.get(key)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nanos.saturating_sub(self.start_unix_nanos))
    }
}

/// One HTTP request as received (any path), for checks on headers.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lowercase names.
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    spans: Vec<Span>,
    requests: Vec<Request>,
    /// Hung connections, kept open until the receiver is dropped.
    held: Vec<TcpStream>,
}

/// A receiver on 127.0.0.1, stopped when dropped.
pub struct Receiver {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn start(mode: Mode) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = if mode == Mode::Refuse {
            // The port was free a moment ago and nothing listens on it now.
            drop(listener);
            None
        } else {
            let (state, stop) = (state.clone(), stop.clone());
            Some(std::thread::spawn(move || {
                serve(listener, mode, &state, &stop)
            }))
        };
        Receiver {
            port,
            state,
            stop,
            thread,
        }
    }

    /// The base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is appended by the exporter).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.state.lock().unwrap().spans.clone()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The first received span named `name`.
    pub fn span(&self, name: &str) -> Option<Span> {
        self.spans().into_iter().find(|s| s.name == name)
    }

    /// A resource attribute of the received spans.
    pub fn resource_attr(&self, key: &str) -> Option<Value> {
        self.spans()
            .iter()
            .find_map(|s| s.resource.get(key).cloned())
    }

    /// Polls until `ok(spans)` holds or `limit` passes; returns the spans either way, so that a
    /// failed assertion can show them.
    pub fn wait_for(
        &self,
        limit: Duration,
        ok: impl Fn(&[Span]) -> bool,
    ) -> Result<Vec<Span>, Vec<Span>> {
        let end = Instant::now() + limit;
        loop {
            let spans = self.spans();
            if ok(&spans) {
                return Ok(spans);
            }
            if Instant::now() >= end {
                return Err(spans);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for s in self.state.lock().unwrap().held.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, mode: Mode, state: &Mutex<State>, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        if mode == Mode::Hang {
            state.lock().unwrap().held.push(conn);
            continue;
        }
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let Some((request, body)) = read_request(&mut conn) else {
            continue;
        };
        let answer = if mode == Mode::Fail500 {
            response(500, "text/plain", b"collector unhappy")
        } else if request.method != "POST" || request.path != "/v1/traces" {
            response(404, "text/plain", b"not found")
        } else if request.headers.get("content-type").map(String::as_str)
            != Some("application/x-protobuf")
        {
            response(415, "text/plain", b"protobuf only")
        } else {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(req) => {
                    state.lock().unwrap().spans.extend(flatten(req));
                    let ok = ExportTraceServiceResponse::default().encode_to_vec();
                    response(200, "application/x-protobuf", &ok)
                }
                Err(e) => response(400, "text/plain", e.to_string().as_bytes()),
            }
        };
        state.lock().unwrap().requests.push(request);
        let _ = conn.write_all(&answer);
    }
}

fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn read_request(conn: &mut TcpStream) -> Option<(Request, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(len);
    Some((
        Request {
            method,
            path,
            headers,
        },
        body,
    ))
}

fn flatten(req: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let resource = attrs(rs.resource.map(|r| r.attributes).unwrap_or_default());
        for ss in rs.scope_spans {
            let scope = ss.scope.map(|s| s.name).unwrap_or_default();
            for s in ss.spans {
                let status = s.status.unwrap_or_default();
                out.push(Span {
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                    attrs: attrs(s.attributes),
                    status: match status.code {
                        1 => StatusCode::Ok,
                        2 => StatusCode::Error,
                        _ => StatusCode::Unset,
                    },
                    status_message: status.message,
                    links: s
                        .links
                        .into_iter()
                        .map(|l| Link {
                            trace_id: hex(&l.trace_id),
                            span_id: hex(&l.span_id),
                        })
                        .collect(),
                    events: s
                        .events
                        .into_iter()
                        .map(|e| Event {
                            name: e.name,
                            unix_nanos: e.time_unix_nano,
                            attrs: attrs(e.attributes),
                        })
                        .collect(),
                    start_unix_nanos: s.start_time_unix_nano,
                    end_unix_nanos: s.end_time_unix_nano,
                    resource: resource.clone(),
                    scope: scope.clone(),
                });
            }
        }
    }
    out
}

fn attrs(kvs: Vec<KeyValue>) -> HashMap<String, Value> {
    kvs.into_iter()
        .map(|kv| (kv.key, value(kv.value)))
        .collect()
}

fn value(v: Option<AnyValue>) -> Value {
    match v.and_then(|v| v.value) {
        Some(any_value::Value::StringValue(s)) => Value::Str(s),
        Some(any_value::Value::IntValue(i)) => Value::Int(i),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(b),
        Some(any_value::Value::DoubleValue(d)) => Value::Double(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.into_iter().map(|v| value(Some(v))).collect())
        }
        _ => Value::Other,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
