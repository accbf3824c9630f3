//! Logs and traces of the `kodomasu` binary: a `tracing` subscriber writing text or JSON to
//! stderr, optionally exporting spans over OTLP/HTTP (cargo feature `otel`), and the HTTP
//! request span.
//!
//! Span fields are stable (dashboards and log queries use them): `workflow.id`,
//! `workflow.type`, `worker.id`, `lease.epoch` on a worker's drive of a workflow; `activity.name`,
//! `call_seq`, `attempt` on each activity attempt; `http.method`, `http.route` on a request.
//! Requests are never logged with their URI's query, headers or body, so tokens cannot reach
//! a log line.

use crate::settings::LogFormat;
use axum::extract::MatchedPath;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, TraceLayer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The request span: method and matched route only.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteSpan;

impl<B> MakeSpan<B> for RouteSpan {
    fn make_span(&mut self, req: &axum::http::Request<B>) -> tracing::Span {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str);
        tracing::info_span!("http", http.method = %req.method(), http.route = route)
    }
}

/// The server's `TraceLayer`, with [`RouteSpan`].
pub fn http_trace_layer() -> TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RouteSpan> {
    TraceLayer::new_for_http().make_span_with(RouteSpan)
}

/// Keeps the trace exporter alive; dropping it flushes and stops it. Drop it outside the async
/// runtime (the OTLP client blocks).
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Installs the process's subscriber: `RUST_LOG` (default `info`, quieter sqlx and tower-http),
/// text or JSON lines on stderr, and with `otlp_endpoint` an OTLP/HTTP span exporter.
///
/// # Errors
/// When the exporter cannot be built.
pub fn init(
    format: LogFormat,
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))] otlp_endpoint: Option<&str>,
) -> Result<TelemetryGuard, String> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt).with(filter);
    #[allow(unused_mut)]
    let mut guard = TelemetryGuard::default();
    #[cfg(feature = "otel")]
    {
        let layer = match otlp_endpoint.map(str::trim).filter(|e| !e.is_empty()) {
            Some(endpoint) => {
                let (layer, provider) = otel::layer(endpoint)?;
                guard.provider = Some(provider);
                Some(layer)
            }
            None => None,
        };
        registry.with(layer).init();
    }
    #[cfg(not(feature = "otel"))]
    registry.init();
    Ok(guard)
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// `endpoint` with `/v1/traces` when it names only the collector.
    fn traces_url(endpoint: &str) -> String {
        let trimmed = endpoint.trim_end_matches('/');
        let has_path = trimmed
            .split_once("://")
            .map_or(trimmed, |(_, rest)| rest)
            .contains('/');
        if has_path {
            trimmed.to_owned()
        } else {
            format!("{trimmed}/v1/traces")
        }
    }

    pub(super) fn layer<S>(
        endpoint: &str,
    ) -> Result<
        (
            tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
            SdkTracerProvider,
        ),
        String,
    >
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url(endpoint))
            .build()
            .map_err(|e| format!("building the OTLP exporter for {endpoint}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("kodomasu").build())
            .build();
        let tracer = provider.tracer("kodomasu");
        Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_traces_path_is_added_to_a_bare_collector_url() {
            assert_eq!(
                super::traces_url("http://c:4318"),
                "http://c:4318/v1/traces"
            );
            assert_eq!(
                super::traces_url("http://c:4318/"),
                "http://c:4318/v1/traces"
            );
            assert_eq!(
                super::traces_url("http://c/x/v1/traces"),
                "http://c/x/v1/traces"
            );
        }
    }
}
