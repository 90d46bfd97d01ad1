//! The node endpoint: /metrics, /healthz, /readyz and /api/v1/connections.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use crate::{conntrack::ConnTable, metrics::Metrics};

#[derive(Clone)]
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub table: Arc<Mutex<ConnTable>>,
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: Endpoint) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/connections", get(connections))
        .with_state(state)
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(state): State<Endpoint>, headers: HeaderMap) -> impl IntoResponse {
    let body = state.metrics.encode();
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = if wants_openmetrics {
        (OPENMETRICS, body)
    } else {
        (TEXT, openmetrics_to_text(&body))
    };
    // A scrape of a high-cardinality node allocates megabytes on whichever runtime thread
    // serves it, which then keeps them for reuse: give back what the last scrapes freed.
    crate::release_freed_memory();
    ([(header::CONTENT_TYPE, content_type)], body)
}

async fn readyz(State(state): State<Endpoint>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "eBPF programs not attached yet\n",
        )
    }
}

async fn connections(State(state): State<Endpoint>) -> impl IntoResponse {
    let table = state.table.lock().unwrap_or_else(|e| e.into_inner());
    Json(table.snapshot())
}

/// Converts prometheus-client's OpenMetrics output to the Prometheus text format 0.0.4 that
/// curl, promtool and older scrapers expect: counter families are named with their `_total`
/// suffix, and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub fn openmetrics_to_text(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut counters = std::collections::HashSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    for line in body.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_in_metadata() {
        let om = "# HELP meshtap_events Kernel events.\n# TYPE meshtap_events counter\nmeshtap_events_total{kind=\"data\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        let text = openmetrics_to_text(om);
        assert_eq!(
            text,
            "# HELP meshtap_events_total Kernel events.\n# TYPE meshtap_events_total counter\nmeshtap_events_total{kind=\"data\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
