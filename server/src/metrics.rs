//! `/metrics` in the Prometheus text format (R-MONITOR): the platform's counts (jobs and
//! exports by state, the gate's refusals by check, the audit log) and the API's latency by
//! route. Labels are states, check names, methods and route templates (`/v1/jobs/{id}`):
//! never an identifier, a name or a value.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tidegate_runtime::PlatformCounts;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    /// Per bucket, the requests at or under its bound (cumulative when written).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The API's latency by (route template, method).
#[derive(Default)]
pub(crate) struct HttpMetrics {
    routes: Mutex<BTreeMap<(String, String), Histogram>>,
}

impl HttpMetrics {
    fn observe(&self, route: &str, method: &str, seconds: f64) {
        let mut routes = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = routes
            .entry((route.to_string(), method.to_string()))
            .or_default();
        h.count += 1;
        h.sum += seconds;
        if let Some(at) = BUCKETS.iter().position(|b| seconds <= *b) {
            h.buckets[at] += 1;
        }
    }
}

/// Times every request to a matched API route (a route layer: the template is known).
pub(crate) async fn track(
    State(metrics): State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    // A span per request (exported when `serve --otlp-endpoint` names a collector): the
    // route's template, never its path, query or body.
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    metrics.observe(&route, &method, started.elapsed().as_secs_f64());
    response
}

/// A label value as the text format writes it.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition: the platform's counts and the API's latency.
pub(crate) fn render(counts: &PlatformCounts, http: &HttpMetrics) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, key: &str, values: &BTreeMap<String, u64>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (k, v) in values {
            let _ = writeln!(out, "{name}{{{key}=\"{}\"}} {v}", label(k));
        }
    };
    gauge("tidegate_jobs", "Jobs by state.", "state", &counts.jobs);
    gauge(
        "tidegate_exports",
        "Export requests by state.",
        "state",
        &counts.exports,
    );
    gauge(
        "tidegate_gate_refusals",
        "Export requests the gate refused, by the check that failed.",
        "check",
        &counts.gate_refusals,
    );
    gauge(
        "tidegate_alerts_open",
        "Alerts not acknowledged yet, by kind.",
        "kind",
        &counts.alerts_open,
    );
    let name = "tidegate_alerts_raised";
    let _ = writeln!(
        out,
        "# HELP {name} Alerts raised, by kind.\n# TYPE {name} counter"
    );
    for (k, v) in &counts.alerts {
        let _ = writeln!(out, "{name}_total{{kind=\"{}\"}} {v}", label(k));
    }
    for (name, help, value) in [
        (
            "tidegate_job_seconds",
            "Wall-clock seconds of the jobs that ended.",
            counts.job_seconds.to_string(),
        ),
        (
            "tidegate_guest_fuel",
            "Guest fuel burnt by the jobs that ended.",
            counts.guest_fuel.to_string(),
        ),
        (
            "tidegate_import_bytes",
            "Bytes of the dataset versions imported.",
            counts.import_bytes.to_string(),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}_total {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP tidegate_audit_entries Entries in the audit log.\n# TYPE tidegate_audit_entries counter\ntidegate_audit_entries_total {}",
        counts.audit_entries
    );
    let _ = writeln!(
        out,
        "# HELP tidegate_audit_broken 1 when a failed write has stopped the audit log (actions are refused until restart).\n# TYPE tidegate_audit_broken gauge\ntidegate_audit_broken {}",
        u8::from(counts.audit_broken)
    );
    let name = "tidegate_http_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} API request latency by route template and method.\n# TYPE {name} histogram"
    );
    let routes = http
        .routes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for ((route, method), h) in routes.iter() {
        let labels = format!("route=\"{}\",method=\"{}\"", label(route), label(method));
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(h.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_labels_are_escaped() {
        let http = HttpMetrics::default();
        http.observe("/v1/jobs/{id}", "GET", 0.003);
        http.observe("/v1/jobs/{id}", "GET", 0.2);
        http.observe("/v1/jobs/{id}", "GET", 60.0);
        let mut counts = PlatformCounts::default();
        counts.gate_refusals.insert("a \"quoted\" check".into(), 2);
        let text = render(&counts, &http);
        let bucket = |le: &str| {
            format!(
                "tidegate_http_request_duration_seconds_bucket{{route=\"/v1/jobs/{{id}}\",method=\"GET\",le=\"{le}\"}}"
            )
        };
        assert!(text.contains(&format!("{} 1\n", bucket("0.005"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", bucket("0.25"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", bucket("10"))), "{text}");
        assert!(text.contains(&format!("{} 3\n", bucket("+Inf"))), "{text}");
        assert!(
            text.contains("tidegate_gate_refusals{check=\"a \\\"quoted\\\" check\"} 2"),
            "{text}"
        );
    }
}
