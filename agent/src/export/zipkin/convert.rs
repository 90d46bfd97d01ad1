//! From the agent's span to Zipkin's: ids as lower-hex, times in microseconds (a duration of at
//! least 1 µs), endpoints with the service names, and tags under Zipkin's own names for HTTP
//! (`http.method`, `http.path` for the route, `http.status_code`, `error`) next to the
//! process's (`process.pid`, `process.executable.name`) and the pod's (`k8s.*`). The sink and
//! the built-in store take spans through [`SpanExporter`].

use std::{borrow::Cow, collections::BTreeMap, sync::Arc};

use super::{
    model::{Endpoint, Kind, Span, format_span_id, format_trace_id},
    sink::ZipkinSink,
    store::TraceStore,
};
use crate::{
    semconv::key,
    trace::{
        SpanExporter,
        span::{self, SpanKind, Status},
    },
};

/// Semantic-convention keys written under another name in Zipkin (its HTTP conventions), or
/// not at all (`None`: the raw path stays out of the store's tag index; the addresses are the
/// endpoints').
fn zipkin_tag(k: &'static str) -> Option<&'static str> {
    match k {
        key::HTTP_REQUEST_METHOD => Some("http.method"),
        key::HTTP_ROUTE => Some("http.path"),
        key::HTTP_RESPONSE_STATUS_CODE => Some("http.status_code"),
        key::URL_PATH
        | key::SERVER_ADDRESS
        | key::SERVER_PORT
        | key::CLIENT_ADDRESS
        | key::CLIENT_PORT
        | key::NETWORK_PEER_ADDRESS
        | key::NETWORK_PEER_PORT
        | key::ERROR_TYPE => None,
        other => Some(other),
    }
}

impl Span {
    /// The Zipkin v2 form of an agent span.
    pub fn from_domain(s: &span::Span) -> Span {
        let mut tags: BTreeMap<Cow<'static, str>, String> = BTreeMap::new();
        for (k, v) in &s.attributes {
            if let Some(tag) = zipkin_tag(k) {
                tags.insert(Cow::Borrowed(tag), v.to_text().into_owned());
            }
        }
        if let Status::Error { error_type } = &s.status {
            tags.insert(Cow::Borrowed("error"), error_type.to_string());
        }
        let r = &s.resource;
        tags.insert(Cow::Borrowed(key::PROCESS_PID), r.pid.to_string());
        tags.insert(
            Cow::Borrowed(key::PROCESS_EXECUTABLE_NAME),
            r.executable.to_string(),
        );
        if let Some(pod) = &r.pod {
            tags.insert(
                Cow::Borrowed(key::K8S_NAMESPACE_NAME),
                pod.namespace.clone(),
            );
            tags.insert(Cow::Borrowed(key::K8S_POD_NAME), pod.name.clone());
            if let Some((kind, name)) = &pod.workload {
                tags.insert(Cow::Borrowed(kind.tag()), name.clone());
            }
        }
        Span {
            trace_id: format_trace_id(s.trace_id),
            id: format_span_id(s.span_id),
            parent_id: s.parent_id.map(format_span_id),
            kind: Some(match s.kind {
                SpanKind::Server => Kind::Server,
                SpanKind::Client => Kind::Client,
            }),
            name: s.name.clone(),
            timestamp: s.start_unix_ns / 1000,
            duration: (s.duration_ns() / 1000).max(1),
            local_endpoint: Some(Endpoint::new(Some(&r.service), Some(s.local))),
            remote_endpoint: Some(Endpoint::new(
                s.remote.service.as_deref(),
                Some(s.remote.addr),
            )),
            tags,
            debug: s.debug,
            shared: s.shared,
        }
    }
}

impl SpanExporter for ZipkinSink {
    fn name(&self) -> &'static str {
        "zipkin"
    }

    fn export(&mut self, spans: &[span::Span]) {
        for s in spans {
            // A refused span is counted by the sink (meshtap_spans_dropped_total).
            let _ = self.offer(Span::from_domain(s));
        }
    }
}

/// The built-in store as an exporter.
pub struct StoreExporter(pub Arc<TraceStore>);

impl SpanExporter for StoreExporter {
    fn name(&self) -> &'static str {
        "store"
    }

    fn export(&mut self, spans: &[span::Span]) {
        for s in spans {
            // A span the store rejects is counted by the store.
            let _ = self.0.insert(Span::from_domain(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metadata::kube::{PodMeta, WorkloadKind},
        semconv::Value,
        trace::span::{Remote, Resource},
    };

    #[test]
    fn http_span_keeps_zipkin_names() {
        let s = span::Span {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x00f067aa0ba902b7,
            parent_id: Some(1),
            kind: SpanKind::Server,
            name: "get /users/*".into(),
            start_unix_ns: 1_700_000_000_123_456_789,
            end_unix_ns: 1_700_000_000_123_457_000,
            status: Status::Error {
                error_type: "503".into(),
            },
            resource: Resource {
                service: "Backend".into(),
                pid: 42,
                executable: "python3.11".into(),
                pod: Some(Arc::new(PodMeta {
                    namespace: "shop".into(),
                    name: "api-1".into(),
                    uid: "u".into(),
                    workload: Some((WorkloadKind::Deployment, "api".into())),
                })),
            },
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: Remote {
                service: Some("web".into()),
                addr: "127.0.0.1:40000".parse().unwrap(),
            },
            attributes: vec![
                (key::HTTP_REQUEST_METHOD, Value::Str("GET".into())),
                (key::HTTP_ROUTE, Value::Str("/users/*".into())),
                (key::URL_PATH, Value::Str("/users/7".into())),
                (key::HTTP_RESPONSE_STATUS_CODE, Value::Int(503)),
            ],
            shared: false,
            debug: false,
        };
        let z = Span::from_domain(&s);
        assert_eq!(z.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(z.id, "00f067aa0ba902b7");
        assert_eq!(z.parent_id.as_deref(), Some("0000000000000001"));
        assert_eq!((z.timestamp, z.duration), (1_700_000_000_123_456, 1));
        let tags: Vec<(&str, &str)> = z.tags.iter().map(|(k, v)| (&**k, v.as_str())).collect();
        assert_eq!(
            tags,
            [
                ("error", "503"),
                ("http.method", "GET"),
                ("http.path", "/users/*"),
                ("http.status_code", "503"),
                ("k8s.deployment.name", "api"),
                ("k8s.namespace.name", "shop"),
                ("k8s.pod.name", "api-1"),
                ("process.executable.name", "python3.11"),
                ("process.pid", "42"),
            ]
        );
        assert!(z.validate().is_ok());
        assert_eq!(
            z.local_endpoint.unwrap().service_name.as_deref(),
            Some("backend")
        );
        assert_eq!(z.remote_endpoint.unwrap().port, Some(40000));
    }
}
