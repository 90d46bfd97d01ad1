//! The Zipkin v2 query API over the [`TraceStore`], as zipkin2-api.yaml defines it, so that the
//! Zipkin UI (or anything speaking the API) can read the agent's recent traces:
//! `GET /api/v2/{services, spans, remoteServices, traces, trace/{traceId}, traceMany,
//! dependencies, autocompleteKeys, autocompleteValues}`.
//!
//! Status codes: 200 with JSON; 400 with a one-line reason for a missing or malformed
//! parameter; 404 for an unknown trace.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};

use super::{
    model::{DependencyLink, Span, normalize_trace_id},
    store::{QueryError, TraceQuery, TraceStore, parse_annotation_query},
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing required parameter {0}")]
    Missing(&'static str),
    #[error("{name} must be {expected}: {value:?}")]
    Malformed {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("trace {0} not found")]
    NotFound(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, format!("{self}\n")).into_response()
    }
}

pub fn router(store: Arc<TraceStore>) -> Router {
    Router::new()
        .route("/api/v2/services", get(services))
        .route("/api/v2/spans", get(span_names))
        .route("/api/v2/remoteServices", get(remote_services))
        .route("/api/v2/traces", get(traces))
        .route("/api/v2/trace/{traceId}", get(trace))
        .route("/api/v2/traceMany", get(trace_many))
        .route("/api/v2/dependencies", get(dependencies))
        .route(
            "/api/v2/autocompleteKeys",
            get(|| async { Json(Vec::<String>::new()) }),
        )
        .route("/api/v2/autocompleteValues", get(autocomplete_values))
        .with_state(store)
}

type Params = Query<HashMap<String, String>>;

/// A non-empty parameter; Zipkin treats an empty one as absent.
fn text<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// A service or span name as stored: lowercase.
fn label(params: &HashMap<String, String>, name: &str) -> Option<String> {
    text(params, name).map(str::to_lowercase)
}

fn required_label(
    params: &HashMap<String, String>,
    name: &'static str,
) -> Result<String, ApiError> {
    label(params, name).ok_or(ApiError::Missing(name))
}

fn number(params: &HashMap<String, String>, name: &'static str) -> Result<Option<u64>, ApiError> {
    text(params, name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| ApiError::Malformed {
                name,
                value: v.to_string(),
                expected: "a non-negative integer",
            })
        })
        .transpose()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(1)
}

async fn services(State(store): State<Arc<TraceStore>>) -> Json<Vec<String>> {
    Json(store.services())
}

async fn span_names(
    State(store): State<Arc<TraceStore>>,
    Query(params): Params,
) -> Result<Json<Vec<String>>, ApiError> {
    let service = required_label(&params, "serviceName")?;
    Ok(Json(store.span_names(&service)))
}

async fn remote_services(
    State(store): State<Arc<TraceStore>>,
    Query(params): Params,
) -> Result<Json<Vec<String>>, ApiError> {
    let service = required_label(&params, "serviceName")?;
    Ok(Json(store.remote_services(&service)))
}

/// `GET /traces` parameters into a query; `now_ms` fills a missing `endTs`.
pub fn trace_query(
    params: &HashMap<String, String>,
    now_ms: u64,
    default_lookback_ms: u64,
) -> Result<TraceQuery, ApiError> {
    let end_ts = number(params, "endTs")?.unwrap_or(now_ms);
    let mut query = TraceQuery::new(
        end_ts,
        number(params, "lookback")?.unwrap_or(default_lookback_ms),
    );
    query.service_name = label(params, "serviceName");
    query.remote_service_name = label(params, "remoteServiceName");
    // The Zipkin UI sends spanName=all for "any".
    query.span_name = label(params, "spanName").filter(|n| n != "all");
    query.annotation_query = text(params, "annotationQuery")
        .map(parse_annotation_query)
        .unwrap_or_default();
    query.min_duration = number(params, "minDuration")?;
    query.max_duration = number(params, "maxDuration")?;
    if let Some(limit) = number(params, "limit")? {
        query.limit = usize::try_from(limit).unwrap_or(usize::MAX);
    }
    query.validate()?;
    Ok(query)
}

async fn traces(
    State(store): State<Arc<TraceStore>>,
    Query(params): Params,
) -> Result<Json<Vec<Vec<Span>>>, ApiError> {
    let query = trace_query(&params, now_ms(), store.config().default_lookback_ms)?;
    Ok(Json(store.traces(&query)?))
}

fn trace_id(value: &str) -> Result<String, ApiError> {
    normalize_trace_id(value).ok_or_else(|| ApiError::Malformed {
        name: "traceId",
        value: value.chars().take(64).collect(),
        expected: "16 or 32 hex characters",
    })
}

async fn trace(
    State(store): State<Arc<TraceStore>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Span>>, ApiError> {
    let id = trace_id(&id)?;
    store.trace(&id).map(Json).ok_or(ApiError::NotFound(id))
}

async fn trace_many(
    State(store): State<Arc<TraceStore>>,
    Query(params): Params,
) -> Result<Json<Vec<Vec<Span>>>, ApiError> {
    let list = text(&params, "traceIds").ok_or(ApiError::Missing("traceIds"))?;
    let mut ids = Vec::new();
    for id in list.split(',') {
        let id = trace_id(id.trim())?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.len() < 2 {
        return Err(ApiError::Malformed {
            name: "traceIds",
            value: list.chars().take(200).collect(),
            expected: "at least two different trace ids (use /trace/{traceId} for one)",
        });
    }
    Ok(Json(store.traces_by_id(&ids)))
}

async fn dependencies(
    State(store): State<Arc<TraceStore>>,
    Query(params): Params,
) -> Result<Json<Vec<DependencyLink>>, ApiError> {
    let end_ts = number(&params, "endTs")?.ok_or(ApiError::Missing("endTs"))?;
    let lookback = number(&params, "lookback")?.unwrap_or(store.config().default_lookback_ms);
    Ok(Json(store.dependencies(end_ts, lookback)?))
}

async fn autocomplete_values(Query(params): Params) -> Result<Json<Vec<String>>, ApiError> {
    // No keys are configured for autocompletion, so every key has no values.
    text(&params, "key").ok_or(ApiError::Missing("key"))?;
    Ok(Json(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::zipkin::{
        model::{Endpoint, Kind},
        store::{StoreConfig, StoreMetrics},
    };
    use axum::{body::Body, http::Request};
    use tower::ServiceExt as _;

    const T1: &str = "4e441824ec2b6a44ffdc9bb9a6453df3";

    fn store() -> Arc<TraceStore> {
        let store = TraceStore::new(StoreConfig::default(), StoreMetrics::default());
        let client = Span {
            trace_id: T1.into(),
            id: "0000000000000001".into(),
            kind: Some(Kind::Client),
            name: "get /api".into(),
            timestamp: 1_700_000_000_000_000,
            duration: 2000,
            local_endpoint: Some(Endpoint::new(Some("frontend"), None)),
            remote_endpoint: Some(Endpoint::new(Some("backend"), None)),
            ..Span::default()
        };
        let server = Span {
            id: "0000000000000002".into(),
            parent_id: Some("0000000000000001".into()),
            kind: Some(Kind::Server),
            timestamp: 1_700_000_000_000_500,
            duration: 1000,
            local_endpoint: Some(Endpoint::new(Some("backend"), None)),
            remote_endpoint: None,
            ..client.clone()
        };
        store.insert(client).unwrap();
        store.insert(server).unwrap();
        Arc::new(store)
    }

    async fn get(uri: &str) -> (StatusCode, String) {
        let response = router(store())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn services_and_span_names() {
        assert_eq!(
            get("/api/v2/services").await,
            (StatusCode::OK, r#"["backend","frontend"]"#.into())
        );
        assert_eq!(
            get("/api/v2/spans?serviceName=Frontend").await,
            (StatusCode::OK, r#"["get /api"]"#.into())
        );
        assert_eq!(
            get("/api/v2/spans?serviceName=nobody").await,
            (StatusCode::OK, "[]".into())
        );
        assert_eq!(
            get("/api/v2/remoteServices?serviceName=frontend").await,
            (StatusCode::OK, r#"["backend"]"#.into())
        );
        assert_eq!(
            get("/api/v2/spans").await,
            (
                StatusCode::BAD_REQUEST,
                "missing required parameter serviceName\n".into()
            )
        );
        assert_eq!(
            get("/api/v2/spans?serviceName=").await.0,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn one_trace() {
        let (status, body) = get(&format!("/api/v2/trace/{T1}")).await;
        assert_eq!(status, StatusCode::OK);
        let spans: Vec<Span> = serde_json::from_str(&body).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].kind, Some(Kind::Client));
        // The low 64 bits find the 128-bit trace; uppercase is accepted.
        let (status, body) = get("/api/v2/trace/FFDC9BB9A6453DF3").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(serde_json::from_str::<Vec<Span>>(&body).unwrap().len(), 2);
        assert_eq!(
            get("/api/v2/trace/00000000000000000000000000000001").await,
            (
                StatusCode::NOT_FOUND,
                "trace 0000000000000001 not found\n".into()
            )
        );
        assert_eq!(get("/api/v2/trace/xyz").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(
            get("/api/v2/trace/4e441824ec2b6a44ffdc9bb9a6453df").await.0,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn traces() {
        let end = "endTs=1700000000001";
        let (status, body) = get(&format!("/api/v2/traces?{end}&serviceName=backend")).await;
        assert_eq!(status, StatusCode::OK);
        let traces: Vec<Vec<Span>> = serde_json::from_str(&body).unwrap();
        assert_eq!(traces.len(), 1);
        assert_eq!(traces[0].len(), 2);
        // spanName=all means any name; the trace is outside a lookback ending before it.
        let (_, body) = get(&format!("/api/v2/traces?{end}&spanName=all&limit=5")).await;
        assert_eq!(
            serde_json::from_str::<Vec<Vec<Span>>>(&body).unwrap().len(),
            1
        );
        assert_eq!(
            get("/api/v2/traces?endTs=1699999999999&lookback=1000").await,
            (StatusCode::OK, "[]".into())
        );
        let (_, body) = get(&format!("/api/v2/traces?{end}&minDuration=1500")).await;
        assert_eq!(
            serde_json::from_str::<Vec<Vec<Span>>>(&body).unwrap().len(),
            1
        );
        assert_eq!(
            get(&format!(
                "/api/v2/traces?{end}&serviceName=backend&minDuration=1500"
            ))
            .await
            .1,
            "[]"
        );
        for bad in [
            "maxDuration=5",
            "minDuration=5&maxDuration=4",
            "minDuration=0",
            "limit=0",
            "limit=x",
            "endTs=-1",
            "endTs=0",
            "lookback=0",
        ] {
            let (status, body) = get(&format!("/api/v2/traces?{bad}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        }
    }

    #[tokio::test]
    async fn trace_many() {
        let (status, body) =
            get(&format!("/api/v2/traceMany?traceIds={T1},0000000000000009")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_str::<Vec<Vec<Span>>>(&body).unwrap().len(),
            1
        );
        assert_eq!(
            get(&format!("/api/v2/traceMany?traceIds={T1}")).await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            get(&format!("/api/v2/traceMany?traceIds={T1},{T1}"))
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            get(&format!("/api/v2/traceMany?traceIds={T1},zz")).await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(get("/api/v2/traceMany").await.0, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn dependencies() {
        assert_eq!(
            get("/api/v2/dependencies?endTs=1700000000001&lookback=60000").await,
            (
                StatusCode::OK,
                r#"[{"parent":"frontend","child":"backend","callCount":1,"errorCount":0}]"#.into()
            )
        );
        assert_eq!(
            get("/api/v2/dependencies?endTs=1600000000000").await,
            (StatusCode::OK, "[]".into())
        );
        assert_eq!(
            get("/api/v2/dependencies").await,
            (
                StatusCode::BAD_REQUEST,
                "missing required parameter endTs\n".into()
            )
        );
        assert_eq!(
            get("/api/v2/dependencies?endTs=abc").await.0,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn autocomplete() {
        assert_eq!(
            get("/api/v2/autocompleteKeys").await,
            (StatusCode::OK, "[]".into())
        );
        assert_eq!(
            get("/api/v2/autocompleteValues?key=env").await,
            (StatusCode::OK, "[]".into())
        );
        assert_eq!(
            get("/api/v2/autocompleteValues").await.0,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn query_defaults() {
        let q = trace_query(&HashMap::new(), 5_000, 86_400_000).unwrap();
        assert_eq!(q.end_ts, 5_000);
        assert_eq!(q.lookback, 86_400_000);
        assert_eq!(q.limit, 10);
        let params = HashMap::from([
            (
                "annotationQuery".to_string(),
                "http.method=GET and error".to_string(),
            ),
            ("serviceName".to_string(), "FrontEnd".to_string()),
        ]);
        let q = trace_query(&params, 5_000, 1).unwrap();
        assert_eq!(q.service_name.as_deref(), Some("frontend"));
        assert_eq!(q.annotation_query.len(), 2);
    }
}
