//! Logs and traces. Log lines go to stderr (`TIDEGATE_LOG`, default `warn`); with
//! `serve --otlp-endpoint URL` the spans of API requests and jobs also go to an OpenTelemetry
//! collector, over OTLP/HTTP with JSON bodies, in batches posted by our own ureq agent. Off by
//! default. A request's span carries its route template, method and status; a job's, its id
//! and scenario: never a token, a query string, a body or a data value.

use std::time::Duration;

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How long spans wait before their batch is sent, and how long one post may take.
const BATCH_DELAY: Duration = Duration::from_secs(2);
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a collector's answer that is read.
const ANSWER_LIMIT: u64 = 1 << 20;

/// Posts the exporter's batches. Called on the batch processor's own thread, so blocking here
/// holds no async worker.
#[derive(Debug)]
struct Agent(ureq::Agent);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Agent {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let mut answer = self.0.run(Request::from_parts(parts, body.to_vec()))?;
        let status = answer.status();
        let body = answer
            .body_mut()
            .with_config()
            .limit(ANSWER_LIMIT)
            .read_to_vec()?;
        Ok(Response::builder().status(status).body(Bytes::from(body))?)
    }
}

/// The process's tracing, kept for as long as it runs: dropping it sends the spans that wait.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// The collector's traces address: `URL/v1/traces`, as OTLP names it, unless given whole.
fn traces_url(endpoint: &str) -> Result<String> {
    let url = url::Url::parse(endpoint).context("--otlp-endpoint is a URL")?;
    anyhow::ensure!(
        url.scheme() == "http",
        "--otlp-endpoint is an http:// URL (a collector inside the domain; put TLS in front of it)"
    );
    let trimmed = endpoint.trim_end_matches('/');
    Ok(if trimmed.ends_with("/v1/traces") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    })
}

/// Installs the process's subscriber: log lines to stderr and, with an endpoint, the spans of
/// Tidegate's own crates (requests and jobs, at `info`) to the collector. A second install in
/// one process keeps the first.
pub fn install(otlp_endpoint: Option<&str>) -> Result<Tracing> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("TIDEGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    let Some(endpoint) = otlp_endpoint else {
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Ok(Tracing { provider: None });
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(POST_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Agent(agent))
        .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
        .with_endpoint(traces_url(endpoint)?)
        .with_timeout(POST_TIMEOUT)
        .build()
        .context("the OTLP exporter")?;
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(BATCH_DELAY)
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name("tidegate")
                .build(),
        )
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tidegate"))
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("tidegate_server", tracing::Level::INFO)
                .with_target("tidegate_runtime", tracing::Level::INFO),
        );
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Ok(Tracing {
        provider: Some(provider),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_is_reached_at_its_traces_path_over_http_only() {
        assert_eq!(
            traces_url("http://10.0.0.5:4318").unwrap(),
            "http://10.0.0.5:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert!(traces_url("https://c:4318").is_err());
        assert!(traces_url("not a url").is_err());
    }
}
