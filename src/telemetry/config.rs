//! The standard `OTEL_*` variables, read through a lookup function so that tests stay pure.
//!
//! The SDK reads some of these from the process environment itself and ignores others
//! (`OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER`, `OTEL_BSP_EXPORT_TIMEOUT` on the thread-based
//! processor). We read them all here, once, and hand the SDK explicit values.

use std::time::Duration;

use super::http::{BadEndpoint, Target};

/// What the environment asks for.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// No export. The string, when present, is a warning to log (the user asked for traces
    /// but gets none).
    Off(Option<String>),
    Export(Box<Export>),
}

#[derive(Debug, PartialEq)]
pub struct Export {
    /// The full URL spans are posted to, `/v1/traces` included.
    pub endpoint: String,
    pub target: Target,
    /// Percent-decoded.
    pub headers: Vec<(String, String)>,
    /// Bound on one export, retries included (the tighter of the OTLP and BSP timeouts).
    pub timeout: Duration,
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, percent-decoded, `service.name` removed (it is above).
    pub resource: Vec<(String, String)>,
    pub schedule_delay: Duration,
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    /// Values that were out of bounds and were capped, one line each, for the start log.
    pub warnings: Vec<String>,
}

/// The service name when neither `OTEL_SERVICE_NAME` nor `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES` says otherwise. The spans describe what the init did; the command
/// is on every worker span as `process.executable.name`.
pub const DEFAULT_SERVICE_NAME: &str = "cluster-init";

const OTLP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
const BSP_SCHEDULE_DELAY_DEFAULT: Duration = Duration::from_secs(5);
const BSP_MAX_QUEUE_DEFAULT: usize = 2048;
const BSP_MAX_BATCH_DEFAULT: usize = 512;
const BSP_EXPORT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Spans held while the collector is slow: a queued span costs about a kilobyte of PID 1's memory.
const BSP_MAX_QUEUE_CAP: u64 = 16_384;
/// Longer waits would only hold spans (and the final flush is bounded anyway).
const MILLIS_CAP: u64 = 60_000;

/// Reads the plan. `Err` is one line naming the variable, for configuration the user must fix.
pub fn plan(env: &dyn Fn(&str) -> Option<String>) -> Result<Plan, String> {
    // Empty means unset, as the specification says.
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());

    let endpoint = match (
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        var("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(traces), _) => traces.trim().to_string(),
        (None, Some(base)) => {
            // Only the generic endpoint gets the signal's path.
            let base = base.trim();
            format!("{}/v1/traces", base.strip_suffix('/').unwrap_or(base))
        }
        (None, None) => return Ok(Plan::Off(None)),
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(Plan::Off(None));
    }
    if let Some(exporters) = var("OTEL_TRACES_EXPORTER") {
        let mut names = exporters.split(',').map(|n| n.trim().to_ascii_lowercase());
        if names.clone().any(|n| n == "none") {
            return Ok(Plan::Off(None));
        }
        if let Some(other) = names.find(|n| n != "otlp") {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={exporters}: {other:?} is not supported (only otlp or none)"
            ));
        }
    }
    let (name, protocol) = first_of(
        &var,
        &[
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ],
    );
    if let Some(protocol) = protocol {
        if protocol.trim() != "http/protobuf" {
            return Err(format!(
                "{name}={protocol} is not supported: cluster-init exports OTLP over HTTP only; \
                 set http/protobuf and an endpoint on the collector's HTTP port (4318)"
            ));
        }
    }
    let endpoint_var = if var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    } else {
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    };
    let target = match Target::parse(&endpoint) {
        Ok(t) => t,
        Err(BadEndpoint::Https) => {
            return Ok(Plan::Off(Some(format!(
                "{endpoint_var}: https is not supported (no TLS in cluster-init); traces are \
                 not exported. Use the collector's plain http:// endpoint."
            ))))
        }
        Err(BadEndpoint::Malformed(why)) => {
            return Err(format!("{endpoint_var}={endpoint}: {why}"));
        }
    };

    let (name, headers) = first_of(
        &var,
        &[
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ],
    );
    let headers = match headers {
        Some(h) => parse_pairs(&h).map_err(|e| format!("{name}: {e}"))?,
        None => Vec::new(),
    };
    for (key, value) in &headers {
        let key_ok = key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !key_ok || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("{name}: {key:?} is not a valid HTTP header"));
        }
    }

    let (name, timeout) = first_of(
        &var,
        &[
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ],
    );
    let mut warnings = Vec::new();
    let w = &mut warnings;
    let otlp_timeout = millis(name, timeout, w)?.unwrap_or(OTLP_TIMEOUT_DEFAULT);
    let bsp_timeout = millis("OTEL_BSP_EXPORT_TIMEOUT", var("OTEL_BSP_EXPORT_TIMEOUT"), w)?
        .unwrap_or(BSP_EXPORT_TIMEOUT_DEFAULT);
    let schedule_delay = millis("OTEL_BSP_SCHEDULE_DELAY", var("OTEL_BSP_SCHEDULE_DELAY"), w)?
        .unwrap_or(BSP_SCHEDULE_DELAY_DEFAULT);
    let max_queue_size = count(
        "OTEL_BSP_MAX_QUEUE_SIZE",
        var("OTEL_BSP_MAX_QUEUE_SIZE"),
        BSP_MAX_QUEUE_CAP,
        w,
    )?
    .unwrap_or(BSP_MAX_QUEUE_DEFAULT);
    // A batch larger than the queue could never fill: the specification clamps it.
    let max_export_batch_size = count(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
        BSP_MAX_QUEUE_CAP,
        w,
    )?
    .unwrap_or(BSP_MAX_BATCH_DEFAULT)
    .min(max_queue_size);

    let mut resource = match var("OTEL_RESOURCE_ATTRIBUTES") {
        Some(r) => parse_pairs(&r).map_err(|e| format!("OTEL_RESOURCE_ATTRIBUTES: {e}"))?,
        None => Vec::new(),
    };
    let from_resource = resource
        .iter()
        .position(|(k, _)| k == "service.name")
        .map(|i| resource.remove(i).1);
    let service_name = var("OTEL_SERVICE_NAME")
        .map(|s| s.trim().to_string())
        .or(from_resource)
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());

    Ok(Plan::Export(Box::new(Export {
        endpoint,
        target,
        headers,
        // Zero means "no limit" in the specification; ours must stay bounded.
        timeout: nonzero_or(otlp_timeout.min(bsp_timeout), OTLP_TIMEOUT_DEFAULT),
        service_name,
        resource,
        schedule_delay: nonzero_or(schedule_delay, BSP_SCHEDULE_DELAY_DEFAULT),
        max_queue_size,
        max_export_batch_size,
        warnings,
    })))
}

fn first_of(
    var: &dyn Fn(&str) -> Option<String>,
    names: &[&'static str],
) -> (&'static str, Option<String>) {
    for name in names {
        if let Some(v) = var(name) {
            return (name, Some(v));
        }
    }
    (names[names.len() - 1], None)
}

fn nonzero_or(d: Duration, default: Duration) -> Duration {
    if d.is_zero() {
        default
    } else {
        d
    }
}

/// A whole number at least 1: plain digits, or a float form of one (`1e12`), which huge
/// values are often written as.
fn whole(v: &str) -> Option<u64> {
    let v = v.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Some(n);
    }
    let f: f64 = v.parse().ok()?;
    (f.is_finite() && f >= 1.0 && f.fract() == 0.0).then(|| f.min(u64::MAX as f64) as u64)
}

/// `value` capped at `cap`, with a warning when it was above.
fn capped(name: &str, v: &str, n: u64, cap: u64, warnings: &mut Vec<String>) -> u64 {
    if n > cap {
        warnings.push(format!("{name}={v} is more than {cap}: using {cap}"));
    }
    n.min(cap)
}

fn millis(
    name: &str,
    value: Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Option<Duration>, String> {
    value
        .map(|v| match whole(&v).or((v.trim() == "0").then_some(0)) {
            Some(n) => Ok(Duration::from_millis(capped(
                name, &v, n, MILLIS_CAP, warnings,
            ))),
            None => Err(format!("{name}={v}: expected milliseconds, like 10000")),
        })
        .transpose()
}

fn count(
    name: &str,
    value: Option<String>,
    cap: u64,
    warnings: &mut Vec<String>,
) -> Result<Option<usize>, String> {
    value
        .map(|v| match whole(&v) {
            Some(n) if n > 0 => Ok(capped(name, &v, n, cap, warnings) as usize),
            _ => Err(format!("{name}={v}: expected a positive number")),
        })
        .transpose()
}

/// `k=v,k2=v2` with percent-encoded values (the W3C baggage form both variables use).
pub fn parse_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{item:?} has an empty key"));
        }
        let value =
            percent_decode(value.trim()).ok_or_else(|| format!("bad %-escape in {item:?}"))?;
        pairs.push((key.to_string(), value));
    }
    Ok(pairs)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn plan_of(vars: &[(&str, &str)]) -> Result<Plan, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        plan(&move |k: &str| map.get(k).cloned())
    }

    fn export_of(vars: &[(&str, &str)]) -> Export {
        match plan_of(vars) {
            Ok(Plan::Export(e)) => *e,
            other => panic!("expected an export plan, got {other:?}"),
        }
    }

    const BASE: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");

    #[test]
    fn telemetry_is_off_without_an_endpoint() {
        assert_eq!(plan_of(&[]), Ok(Plan::Off(None)));
        assert_eq!(plan_of(&[("OTEL_SERVICE_NAME", "x")]), Ok(Plan::Off(None)));
        assert_eq!(
            plan_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]),
            Ok(Plan::Off(None))
        );
    }

    #[test]
    fn v1_traces_is_appended_only_to_the_generic_endpoint() {
        assert_eq!(
            export_of(&[BASE]).endpoint,
            "http://collector:4318/v1/traces"
        );
        let e = export_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/base/")]);
        assert_eq!(e.endpoint, "http://c:4318/base/v1/traces");
        let e = export_of(&[
            BASE,
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://other:9999/custom",
            ),
        ]);
        assert_eq!(e.endpoint, "http://other:9999/custom");
        assert_eq!((e.target.host.as_str(), e.target.port), ("other", 9999));
    }

    #[test]
    fn sdk_disabled_and_exporter_none_turn_export_off() {
        assert_eq!(
            plan_of(&[BASE, ("OTEL_SDK_DISABLED", "TRUE")]),
            Ok(Plan::Off(None))
        );
        assert!(matches!(
            plan_of(&[BASE, ("OTEL_SDK_DISABLED", "false")]),
            Ok(Plan::Export(_))
        ));
        assert_eq!(
            plan_of(&[BASE, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(Plan::Off(None))
        );
        assert!(matches!(
            plan_of(&[BASE, ("OTEL_TRACES_EXPORTER", "otlp")]),
            Ok(Plan::Export(_))
        ));
        let err = plan_of(&[BASE, ("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(err.contains("OTEL_TRACES_EXPORTER"), "{err}");
    }

    #[test]
    fn grpc_is_a_start_up_error_naming_the_variable() {
        let err = plan_of(&[BASE, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), "{err}");
        assert!(!err.contains('\n'));
        let err =
            plan_of(&[BASE, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")]).unwrap_err();
        assert!(
            err.starts_with("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            "{err}"
        );
        assert!(matches!(
            plan_of(&[BASE, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
            Ok(Plan::Export(_))
        ));
    }

    #[test]
    fn https_warns_and_disables_while_garbage_is_an_error() {
        let p = plan_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")]).unwrap();
        assert!(matches!(p, Plan::Off(Some(w)) if w.contains("https")));
        let err = plan_of(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "c:4318")]).unwrap_err();
        assert!(
            err.starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=c:4318"),
            "{err}"
        );
    }

    #[test]
    fn headers_are_pairs_with_percent_decoding_and_the_traces_variant_wins() {
        let e = export_of(&[
            BASE,
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=secret%20one, x-tenant = a%2Cb ,",
            ),
        ]);
        assert_eq!(
            e.headers,
            vec![
                ("api-key".to_string(), "secret one".to_string()),
                ("x-tenant".to_string(), "a,b".to_string())
            ]
        );
        let e = export_of(&[
            BASE,
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
        ]);
        assert_eq!(e.headers, vec![("b".to_string(), "2".to_string())]);
        for bad in ["novalue", "=v", "k=%zz", "bad key=v", "k=a%0Db"] {
            let err = plan_of(&[BASE, ("OTEL_EXPORTER_OTLP_HEADERS", bad)]).unwrap_err();
            assert!(
                err.starts_with("OTEL_EXPORTER_OTLP_HEADERS"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn timeouts_take_the_tighter_bound_and_reject_garbage() {
        assert_eq!(export_of(&[BASE]).timeout, Duration::from_secs(10));
        let e = export_of(&[BASE, ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")]);
        assert_eq!(e.timeout, Duration::from_millis(2500));
        let e = export_of(&[
            BASE,
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "4000"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "3000"),
        ]);
        assert_eq!(e.timeout, Duration::from_millis(3000));
        assert_eq!(
            export_of(&[BASE, ("OTEL_EXPORTER_OTLP_TIMEOUT", "0")]).timeout,
            Duration::from_secs(10)
        );
        let err = plan_of(&[BASE, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).unwrap_err();
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_TIMEOUT=10s"), "{err}");
    }

    #[test]
    fn batch_processor_variables_are_read_and_clamped() {
        let e = export_of(&[BASE]);
        assert_eq!(
            (e.schedule_delay, e.max_queue_size, e.max_export_batch_size),
            (Duration::from_secs(5), 2048, 512)
        );
        let e = export_of(&[
            BASE,
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
        ]);
        assert_eq!(
            (e.schedule_delay, e.max_queue_size, e.max_export_batch_size),
            (Duration::from_millis(200), 100, 100)
        );
        for (k, v) in [
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "-1"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "1.5"),
        ] {
            let err = plan_of(&[BASE, (k, v)]).unwrap_err();
            assert!(err.starts_with(k), "{err}");
        }
    }

    #[test]
    fn huge_batch_values_are_capped_with_a_warning() {
        for v in ["1000000000000", "1e12", "18446744073709551616"] {
            let e = export_of(&[BASE, ("OTEL_BSP_MAX_QUEUE_SIZE", v)]);
            assert_eq!(e.max_queue_size, 16_384, "{v}");
            assert!(
                e.warnings[0].starts_with("OTEL_BSP_MAX_QUEUE_SIZE="),
                "{:?}",
                e.warnings
            );
        }
        let e = export_of(&[BASE, ("OTEL_BSP_SCHEDULE_DELAY", "1e12")]);
        assert_eq!(e.schedule_delay, Duration::from_secs(60));
        assert_eq!(e.warnings.len(), 1);
        assert!(export_of(&[BASE]).warnings.is_empty());
    }

    #[test]
    fn service_name_comes_from_the_variable_then_the_resource_then_the_default() {
        assert_eq!(export_of(&[BASE]).service_name, "cluster-init");
        let e = export_of(&[
            BASE,
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=shop,deployment.environment.name=prod%2Feu",
            ),
        ]);
        assert_eq!(e.service_name, "shop");
        assert_eq!(
            e.resource,
            vec![(
                "deployment.environment.name".to_string(),
                "prod/eu".to_string()
            )]
        );
        let e = export_of(&[
            BASE,
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=shop"),
            ("OTEL_SERVICE_NAME", "api"),
        ]);
        assert_eq!(e.service_name, "api");
        assert!(plan_of(&[BASE, ("OTEL_RESOURCE_ATTRIBUTES", "oops")]).is_err());
    }
}
