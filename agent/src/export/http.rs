//! The node endpoint: /metrics, /healthz, /readyz and /api/v1/connections.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use tokio::sync::{mpsc, oneshot};

use crate::{conntrack::ConnectionView, metrics::Registry};

/// A request for the connections tracked now, answered by the processing stage between two
/// batches: the endpoint never touches the connection table itself.
pub type ConnectionsQuery = oneshot::Sender<Vec<ConnectionView>>;

#[derive(Clone)]
pub struct Endpoint {
    pub registry: Arc<Registry>,
    pub connections: mpsc::Sender<ConnectionsQuery>,
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
    let body = state.registry.encode();
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
    crate::alloc::release_freed_memory();
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
    let (reply, answer) = oneshot::channel();
    if state.connections.send(reply).await.is_err() {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"));
    }
    match answer.await {
        Ok(connections) => Ok(Json(connections)),
        Err(_) => Err((StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")),
    }
}

/// Converts prometheus-client's OpenMetrics output to the Prometheus text format 0.0.4 that
/// curl, promtool and older scrapers expect: counter families are named with their `_total`
/// suffix, and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
///
/// Only comment lines change, a few per family, so only they are looked at: the sample lines
/// between them (megabytes on a busy node) are copied in bulk. A `#` after a newline always
/// starts a comment line: a label value's newline is escaped as `\n`.
pub fn openmetrics_to_text(body: &str) -> String {
    let bytes = body.as_bytes();
    let mut comments: Vec<usize> = Vec::new();
    if bytes.first() == Some(&b'#') {
        comments.push(0);
    }
    comments.extend(memchr::memmem::find_iter(bytes, b"\n#").map(|i| i + 1));
    let line_at = |start: usize| -> &str {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |n| start + n);
        &body[start..end]
    };
    let counters: std::collections::HashSet<&str> = comments
        .iter()
        .filter_map(|&start| {
            line_at(start)
                .strip_prefix("# TYPE ")?
                .strip_suffix(" counter")
        })
        .collect();
    let mut out = String::with_capacity(body.len() + 8 * comments.len());
    let mut copied = 0;
    for &start in &comments {
        out.push_str(&body[copied..start]);
        let line = line_at(start);
        copied = (start + line.len() + 1).min(body.len());
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let counter = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
            let (name, tail) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters.contains(name).then_some((prefix, name, tail))
        });
        match counter {
            Some((prefix, name, tail)) => {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push_str(&body[copied..]);
    if !out.is_empty() && !out.ends_with('\n') {
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

    /// What prometheus-client writes for a histogram with a unit, a counter whose label values
    /// hold `#` and an escaped newline, and a gauge, converted line for line.
    #[test]
    fn only_metadata_lines_change() {
        let om = concat!(
            "# HELP d Duration.\n# TYPE d histogram\n# UNIT d seconds\n",
            "d_bucket{le=\"0.1\"} 1\nd_bucket{le=\"+Inf\"} 2\nd_sum 0.3\nd_count 2\n",
            "# HELP c Things.\n# TYPE c counter\n",
            "c_total{path=\"/a\\n# TYPE x counter\"} 1\nc_total{path=\"#b\"} 2\n",
            "# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n",
        );
        let want = concat!(
            "# HELP d Duration.\n# TYPE d histogram\n",
            "d_bucket{le=\"0.1\"} 1\nd_bucket{le=\"+Inf\"} 2\nd_sum 0.3\nd_count 2\n",
            "# HELP c_total Things.\n# TYPE c_total counter\n",
            "c_total{path=\"/a\\n# TYPE x counter\"} 1\nc_total{path=\"#b\"} 2\n",
            "# HELP g A gauge.\n# TYPE g gauge\ng 1\n",
        );
        assert_eq!(openmetrics_to_text(om), want);
        // Without the final newline, and empty.
        assert_eq!(openmetrics_to_text("g 1"), "g 1\n");
        assert_eq!(openmetrics_to_text(""), "");
    }
}
