//! The smallest HTTP/1.1 client the OTLP exporter needs: one blocking `POST` per export over
//! `std::net`, plain `http://` only, every step bounded by one deadline.
//!
//! It runs on the SDK's batch-processor thread, never on the supervisor's. A TLS stack would cost
//! more than the whole rest of the binary, and a full HTTP crate more than this file; a collector
//! sidecar or node agent on plain HTTP is the common setup inside a cluster.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use tracing::{info, warn};

/// A collector answers an export with an empty or tiny message; anything this big is not one.
const MAX_RESPONSE: usize = 1 << 20;

/// Where exports go: parsed once at start, so a bad endpoint is a start-up error, not a
/// warning every five seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, as given (a name is resolved at each export: the collector may move).
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Why an endpoint cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum BadEndpoint {
    /// `https://`: valid, but we carry no TLS stack.
    Https,
    Malformed(String),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, BadEndpoint> {
        let rest = if let Some(rest) = strip_prefix_ignore_case(url, "http://") {
            rest
        } else if strip_prefix_ignore_case(url, "https://").is_some() {
            return Err(BadEndpoint::Https);
        } else {
            return Err(BadEndpoint::Malformed(
                "it must start with http://".to_string(),
            ));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if authority.contains('@') {
            return Err(BadEndpoint::Malformed(
                "user:password@ is not supported; use OTEL_EXPORTER_OTLP_HEADERS".to_string(),
            ));
        }
        let (host, port) = split_host_port(authority)?;
        if host.is_empty() {
            return Err(BadEndpoint::Malformed("it has no host".to_string()));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(BadEndpoint::Malformed(
                "its path has spaces or control characters".to_string(),
            ));
        }
        Ok(Target {
            authority: authority.to_string(),
            host,
            port,
            path,
        })
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn split_host_port(authority: &str) -> Result<(String, u16), BadEndpoint> {
    let bad_port = || BadEndpoint::Malformed(format!("bad port in {authority:?}"));
    // [v6]:port keeps its colons inside the brackets.
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| BadEndpoint::Malformed("unclosed [ in the host".to_string()))?;
        let host = rest[..end].to_string();
        return match &rest[end + 1..] {
            "" => Ok((host, 80)),
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .map(|port| (host, port))
                .ok_or_else(bad_port),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_string(), port.parse().map_err(|_| bad_port())?)),
        None => Ok((authority.to_string(), 80)),
    }
}

/// The client handed to the exporter. It owns its deadline because the exporter's retry loop
/// only checks time *between* attempts: a hung collector would otherwise hold an attempt forever.
#[derive(Debug)]
pub struct Client {
    target: Target,
    /// Bound on one request, from connect to the last byte of the answer.
    timeout: Duration,
    /// Whether the last export failed: we warn once per outage, not once per batch.
    failing: AtomicBool,
}

impl Client {
    pub fn new(target: Target, timeout: Duration) -> Client {
        Client {
            target,
            timeout,
            failing: AtomicBool::new(false),
        }
    }

    fn note(&self, outcome: &Result<u16, String>) {
        match outcome {
            Ok(status) if (200..300).contains(status) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!("trace export works again");
                }
            }
            Ok(status) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!(
                        "trace export to http://{}{} refused with HTTP {status}; spans are dropped until it works (no further warning)",
                        self.target.authority, self.target.path
                    );
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!(
                        "trace export to http://{}{} failed: {e}; spans are dropped until it works (no further warning)",
                        self.target.authority, self.target.path
                    );
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for Client {
    // Blocking inside an async fn is right here: the batch processor drives this future with
    // `block_on` on its own thread, and no runtime is involved.
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let deadline = Instant::now() + self.timeout;
        // A bug in here must cost a batch of spans, never the process (or the exporter thread).
        let result = catch_unwind(AssertUnwindSafe(|| post(&self.target, &request, deadline)))
            .unwrap_or_else(|_| Err("the HTTP client panicked".to_string()));
        self.note(
            &result
                .as_ref()
                .map(|r| r.status().as_u16())
                .map_err(Clone::clone),
        );
        result.map_err(HttpError::from)
    }
}

fn post(
    target: &Target,
    request: &Request<Bytes>,
    deadline: Instant,
) -> Result<Response<Bytes>, String> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        target.path,
        target.authority,
        request.body().len()
    );
    for (name, value) in request.headers() {
        let name = name.as_str();
        if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        // HeaderValue already refuses CR and LF, so no header can split the request.
        let value = String::from_utf8_lossy(value.as_bytes());
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");

    let mut stream = connect(target, deadline)?;
    let io = |e: io::Error| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            "timed out waiting for the collector".to_string()
        } else {
            e.to_string()
        }
    };
    set_timeouts(&stream, deadline)?;
    stream.write_all(head.as_bytes()).map_err(io)?;
    set_timeouts(&stream, deadline)?;
    stream.write_all(request.body()).map_err(io)?;
    let raw = read_response(&mut stream, deadline).map_err(io)?;
    parse_response(&raw)
}

fn connect(target: &Target, deadline: Instant) -> Result<TcpStream, String> {
    let addrs = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?;
    let mut last = format!("{} resolves to no address", target.host);
    for addr in addrs {
        let left = remaining(deadline)?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    // Zero would mean "no timeout" to the socket calls.
    if left < Duration::from_millis(1) {
        return Err("timed out waiting for the collector".to_string());
    }
    Ok(left)
}

fn set_timeouts(stream: &TcpStream, deadline: Instant) -> Result<(), String> {
    let left = remaining(deadline)?;
    stream
        .set_read_timeout(Some(left))
        .and_then(|_| stream.set_write_timeout(Some(left)))
        .map_err(|e| e.to_string())
}

/// Reads until the peer closes (we asked for `Connection: close`) or the message is complete.
fn read_response(stream: &mut TcpStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_RESPONSE {
            return Err(io::Error::other("the collector's answer is too large"));
        }
        if message_complete(&raw) {
            return Ok(raw);
        }
    }
}

/// Whether `raw` holds a whole response with a known length, so a collector that keeps the
/// connection open despite `Connection: close` costs no timeout.
fn message_complete(raw: &[u8]) -> bool {
    let Some(end) = find(raw, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    if header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return raw.ends_with(b"0\r\n\r\n");
    }
    match header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(len) => raw.len() >= end + 4 + len,
        None => false,
    }
}

fn parse_response(raw: &[u8]) -> Result<Response<Bytes>, String> {
    let end = find(raw, b"\r\n\r\n").ok_or("the collector's answer is not HTTP")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("the collector's answer is not HTTP: {status_line:?}"))?;
    let mut body = raw[end + 4..].to_vec();
    if header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body).ok_or("bad chunked encoding from the collector")?;
    } else if let Some(len) = header(&head, "content-length").and_then(|v| v.parse().ok()) {
        body.truncate(len);
    }
    let mut response = Response::builder().status(status);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            response = response.header(name.trim(), value.trim());
        }
    }
    response
        .body(Bytes::from(body))
        .map_err(|e| format!("bad answer from the collector: {e}"))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = body.get(line_end + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_into_host_port_and_path() {
        let t = Target::parse("http://otel-collector:4318/v1/traces").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("otel-collector", 4318, "/v1/traces")
        );
        let t = Target::parse("HTTP://[::1]:9/x?y=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 9, "/x?y=1")
        );
        let t = Target::parse("http://collector").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        assert_eq!(
            Target::parse("https://c:4318/v1/traces"),
            Err(BadEndpoint::Https)
        );
        assert!(matches!(
            Target::parse("collector:4318"),
            Err(BadEndpoint::Malformed(_))
        ));
        assert!(matches!(
            Target::parse("http://c:port/"),
            Err(BadEndpoint::Malformed(_))
        ));
        assert!(matches!(
            Target::parse("http://:4318/"),
            Err(BadEndpoint::Malformed(_))
        ));
        assert!(matches!(
            Target::parse("http://u:p@c/"),
            Err(BadEndpoint::Malformed(_))
        ));
    }

    #[test]
    fn responses_parse_with_length_or_chunks() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").unwrap();
        assert_eq!((r.status().as_u16(), r.body().as_ref()), (200, &b"ok"[..]));
        let raw = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert!(message_complete(raw));
        let r = parse_response(raw).unwrap();
        assert_eq!((r.status().as_u16(), r.body().as_ref()), (503, &b"abc"[..]));
        assert!(!message_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"
        ));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"garbage").is_err());
    }
}
