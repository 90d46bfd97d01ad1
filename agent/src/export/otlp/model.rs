//! The agent's spans as one OTLP `ExportTraceServiceRequest` (opentelemetry-proto's prost
//! types, encoded by prost): one `ResourceSpans` per process, its spans under the `meshtap`
//! instrumentation scope.
//!
//! Ids are big-endian bytes (trace 16, span 8; no parent = empty), times Unix nanoseconds.
//! Attributes are the span's own, typed as they are, plus what OpenTelemetry's semantic
//! conventions derive from the connection where the span does not carry it already:
//! `network.peer.address`/`.port` (the other end), `server.address`/`.port` (the observing
//! process on a SERVER span, the other end on a CLIENT span), `client.address`/`.port` (the
//! other end of a SERVER span), and `error.type` on an error.
//! <https://opentelemetry.io/docs/specs/semconv/http/http-spans/>

use std::net::SocketAddr;

use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource as OtlpResource,
    trace::v1::{
        ResourceSpans, ScopeSpans, Span as OtlpSpan, Status as OtlpStatus, span::SpanKind as Kind,
        status::StatusCode,
    },
};
use prost::Message as _;

use crate::{
    semconv::{Value, key},
    trace::span::{Resource, Span, SpanKind, Status},
};

/// The instrumentation scope of every span.
pub const SCOPE_NAME: &str = "meshtap";
/// W3C trace flags, in the low byte of `Span.flags`: every exported span was sampled.
const FLAG_SAMPLED: u32 = 0x01;

/// `spans` grouped by process, in their order.
pub fn request(spans: &[Span]) -> ExportTraceServiceRequest {
    let mut groups: Vec<(&Resource, Vec<OtlpSpan>)> = Vec::new();
    for span in spans {
        let converted = span_of(span);
        // A batch holds the spans of a few processes: a scan is cheaper than a hash.
        match groups
            .iter_mut()
            .find(|(r, _)| r.pid == span.resource.pid && **r == span.resource)
        {
            Some((_, group)) => group.push(converted),
            None => groups.push((&span.resource, vec![converted])),
        }
    }
    let scope = InstrumentationScope {
        name: SCOPE_NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..InstrumentationScope::default()
    };
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(resource_of(resource)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

/// The protobuf body of a POST to `/v1/traces`.
pub fn encode(spans: &[Span]) -> Vec<u8> {
    request(spans).encode_to_vec()
}

/// The spans a collector refused in a 2xx answer (`partial_success.rejected_spans`); 0 when
/// the body is empty or not an `ExportTraceServiceResponse`.
pub fn refused_spans(body: &[u8]) -> usize {
    ExportTraceServiceResponse::decode(body)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| usize::try_from(p.rejected_spans.max(0)).unwrap_or(0))
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn text(s: &str) -> any_value::Value {
    any_value::Value::StringValue(s.to_string())
}

fn typed(value: &Value) -> any_value::Value {
    match value {
        Value::Str(s) => text(s),
        Value::Int(i) => any_value::Value::IntValue(*i),
    }
}

/// The process: `service.name`, `process.pid`, `process.executable.name` and, in Kubernetes,
/// `k8s.namespace.name`, `k8s.pod.name` and `k8s.<workload kind>.name`.
fn resource_of(r: &Resource) -> OtlpResource {
    let mut attributes = vec![
        kv(key::SERVICE_NAME, text(&r.service)),
        kv(
            key::PROCESS_PID,
            any_value::Value::IntValue(i64::from(r.pid)),
        ),
        kv(key::PROCESS_EXECUTABLE_NAME, text(&r.executable)),
    ];
    if let Some(pod) = &r.pod {
        attributes.push(kv(key::K8S_NAMESPACE_NAME, text(&pod.namespace)));
        attributes.push(kv(key::K8S_POD_NAME, text(&pod.name)));
        if let Some((kind, name)) = &pod.workload {
            attributes.push(kv(kind.tag(), text(name)));
        }
    }
    OtlpResource {
        attributes,
        ..OtlpResource::default()
    }
}

/// The address as semantic conventions write it (an IPv4-mapped IPv6 address as IPv4); `None`
/// when it is unspecified.
fn address(addr: SocketAddr) -> Option<String> {
    let ip = addr.ip().to_canonical();
    (!ip.is_unspecified()).then(|| ip.to_string())
}

fn span_of(s: &Span) -> OtlpSpan {
    let mut attributes: Vec<KeyValue> = Vec::with_capacity(s.attributes.len() + 6);
    attributes.extend(s.attributes.iter().map(|(k, v)| kv(k, typed(v))));
    let mut add = |k: &str, v: Option<any_value::Value>| {
        if let Some(v) = v
            && s.attribute(k).is_none()
        {
            attributes.push(kv(k, v));
        }
    };
    let port = |addr: SocketAddr| {
        (addr.port() != 0).then(|| any_value::Value::IntValue(i64::from(addr.port())))
    };
    let status = match &s.status {
        Status::Ok => None,
        Status::Error { error_type } => {
            add(key::ERROR_TYPE, Some(text(error_type)));
            Some(OtlpStatus {
                message: error_type.to_string(),
                code: StatusCode::Error as i32,
            })
        }
    };
    let (server, client) = match s.kind {
        SpanKind::Server => (s.local, Some(s.remote.addr)),
        SpanKind::Client => (s.remote.addr, None),
    };
    add(
        key::SERVER_ADDRESS,
        address(server).map(any_value::Value::StringValue),
    );
    add(key::SERVER_PORT, port(server));
    if let Some(client) = client {
        add(
            key::CLIENT_ADDRESS,
            address(client).map(any_value::Value::StringValue),
        );
        add(key::CLIENT_PORT, port(client));
    }
    let peer = s.remote.addr;
    add(
        key::NETWORK_PEER_ADDRESS,
        address(peer).map(any_value::Value::StringValue),
    );
    add(key::NETWORK_PEER_PORT, port(peer));
    OtlpSpan {
        trace_id: s.trace_id.to_be_bytes().to_vec(),
        span_id: s.span_id.to_be_bytes().to_vec(),
        parent_span_id: s
            .parent_id
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        flags: FLAG_SAMPLED,
        name: s.name.clone(),
        kind: match s.kind {
            SpanKind::Server => Kind::Server,
            SpanKind::Client => Kind::Client,
        } as i32,
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns,
        attributes,
        status,
        ..OtlpSpan::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{borrow::Cow, sync::Arc};

    use super::*;
    use crate::{
        metadata::kube::{PodMeta, WorkloadKind},
        trace::span::Remote,
    };

    pub(crate) fn resource(pid: u32, service: &str) -> Resource {
        Resource {
            service: service.into(),
            pid,
            executable: "python3".into(),
            pod: None,
        }
    }

    /// A SERVER span of `backend` (pid 7) answering 200, number `i`.
    pub(crate) fn span(i: u64) -> Span {
        Span {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736 + u128::from(i),
            span_id: 0x00f0_67aa_0ba9_02b7 + i,
            parent_id: Some(0x1111_2222_3333_4444),
            kind: SpanKind::Server,
            name: "get /users/*".into(),
            start_unix_ns: 1_700_000_000_123_456_789 + i,
            end_unix_ns: 1_700_000_000_125_000_000 + i,
            status: Status::Ok,
            resource: resource(7, "backend"),
            local: "10.0.0.2:8080".parse().unwrap(),
            remote: Remote {
                service: Some("frontend".into()),
                addr: "[::ffff:10.0.0.1]:40000".parse().unwrap(),
            },
            attributes: vec![
                (key::HTTP_REQUEST_METHOD, Value::Str(Cow::Borrowed("GET"))),
                (key::HTTP_ROUTE, Value::Str("/users/*".to_string().into())),
                (key::URL_PATH, Value::Str("/users/7".to_string().into())),
                (key::HTTP_RESPONSE_STATUS_CODE, Value::Int(200)),
            ],
            shared: false,
            debug: false,
        }
    }

    /// Attributes by key, for lookups.
    fn attrs(kvs: &[KeyValue]) -> Vec<(&str, &any_value::Value)> {
        kvs.iter()
            .map(|kv| {
                let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
                (kv.key.as_str(), v.expect("every attribute has a value"))
            })
            .collect()
    }

    fn get<'a>(kvs: &'a [KeyValue], k: &str) -> Option<&'a any_value::Value> {
        let found: Vec<_> = attrs(kvs)
            .into_iter()
            .filter(|(key, _)| *key == k)
            .collect();
        assert!(found.len() <= 1, "{k} twice");
        found.first().map(|(_, v)| *v)
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.to_string())
    }

    fn int(v: i64) -> any_value::Value {
        any_value::Value::IntValue(v)
    }

    /// Three spans of two processes, one of them in a pod, one failed without a response:
    /// encoded, decoded back with prost, checked field by field.
    #[test]
    fn golden_request_decodes_to_the_same_spans() {
        let server = span(0);
        let mut client = span(1);
        client.kind = SpanKind::Client;
        client.parent_id = None;
        client.status = Status::Error {
            error_type: "no response".into(),
        };
        client
            .attributes
            .retain(|(k, _)| *k != key::HTTP_RESPONSE_STATUS_CODE);
        client.resource = Resource {
            pod: Some(Arc::new(PodMeta {
                namespace: "shop".into(),
                name: "frontend-7d4b9-x2x9z".into(),
                uid: "uid-1".into(),
                workload: Some((WorkloadKind::Deployment, "frontend".into())),
            })),
            ..resource(9, "frontend")
        };
        client.local = "10.0.0.1:40000".parse().unwrap();
        client.remote = Remote {
            service: Some("backend".into()),
            addr: "10.0.0.2:8080".parse().unwrap(),
        };
        let mut second = span(2);
        second
            .attributes
            .push((key::SERVER_ADDRESS, Value::Str("api.example".into())));
        second.debug = true;
        let bytes = encode(&[server.clone(), client.clone(), second.clone()]);
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();

        assert_eq!(decoded.resource_spans.len(), 2, "one per process");
        let backend = &decoded.resource_spans[0];
        let frontend = &decoded.resource_spans[1];
        let r = &backend.resource.as_ref().unwrap().attributes;
        assert_eq!(
            attrs(r),
            [
                ("service.name", &s("backend")),
                ("process.pid", &int(7)),
                ("process.executable.name", &s("python3")),
            ]
        );
        let r = &frontend.resource.as_ref().unwrap().attributes;
        assert_eq!(get(r, "service.name"), Some(&s("frontend")));
        assert_eq!(get(r, "process.pid"), Some(&int(9)));
        assert_eq!(get(r, "k8s.namespace.name"), Some(&s("shop")));
        assert_eq!(get(r, "k8s.pod.name"), Some(&s("frontend-7d4b9-x2x9z")));
        assert_eq!(get(r, "k8s.deployment.name"), Some(&s("frontend")));
        for rs in &decoded.resource_spans {
            assert_eq!(rs.scope_spans.len(), 1);
            let scope = rs.scope_spans[0].scope.as_ref().unwrap();
            assert_eq!(scope.name, "meshtap");
            assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
        }
        let backend_spans = &backend.scope_spans[0].spans;
        assert_eq!(backend_spans.len(), 2);
        let (b0, b2) = (&backend_spans[0], &backend_spans[1]);
        let c = &frontend.scope_spans[0].spans[0];

        // Ids, big-endian.
        assert_eq!(
            b0.trace_id,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(b0.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(b0.parent_span_id, 0x1111_2222_3333_4444u64.to_be_bytes());
        assert!(c.parent_span_id.is_empty(), "no parent: empty");
        assert_eq!(
            u128::from_be_bytes(c.trace_id.clone().try_into().unwrap()),
            client.trace_id
        );
        assert_eq!(
            u64::from_be_bytes(c.span_id.clone().try_into().unwrap()),
            client.span_id
        );
        // Kinds, names, times, flags.
        assert_eq!(b0.kind, Kind::Server as i32);
        assert_eq!(c.kind, Kind::Client as i32);
        assert_eq!(b0.name, "get /users/*");
        assert_eq!(b0.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(b0.end_time_unix_nano, 1_700_000_000_125_000_000);
        assert_eq!(c.start_time_unix_nano, client.start_unix_ns);
        assert_eq!(b0.flags, 1);
        // Status: unset, or an error with its type.
        assert_eq!(b0.status, None);
        let status = c.status.as_ref().unwrap();
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "no response");

        // Attributes, typed; derived ones after the span's own.
        assert_eq!(
            attrs(&b0.attributes),
            [
                ("http.request.method", &s("GET")),
                ("http.route", &s("/users/*")),
                ("url.path", &s("/users/7")),
                ("http.response.status_code", &int(200)),
                ("server.address", &s("10.0.0.2")),
                ("server.port", &int(8080)),
                ("client.address", &s("10.0.0.1")),
                ("client.port", &int(40000)),
                ("network.peer.address", &s("10.0.0.1")),
                ("network.peer.port", &int(40000)),
            ]
        );
        assert_eq!(get(&c.attributes, "error.type"), Some(&s("no response")));
        assert_eq!(get(&c.attributes, "http.response.status_code"), None);
        assert_eq!(get(&c.attributes, "server.address"), Some(&s("10.0.0.2")));
        assert_eq!(get(&c.attributes, "server.port"), Some(&int(8080)));
        assert_eq!(get(&c.attributes, "client.address"), None, "a CLIENT span");
        assert_eq!(get(&c.attributes, "network.peer.port"), Some(&int(8080)));
        // What the span carries wins over what is derived.
        assert_eq!(
            get(&b2.attributes, "server.address"),
            Some(&s("api.example"))
        );
        assert_eq!(get(&b2.attributes, "server.port"), Some(&int(8080)));
    }

    #[test]
    fn unknown_addresses_and_ports_are_left_out() {
        let mut s = span(0);
        s.remote.addr = "0.0.0.0:0".parse().unwrap();
        let req = request(&[s]);
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        for k in [
            "client.address",
            "network.peer.address",
            "network.peer.port",
        ] {
            assert_eq!(get(&span.attributes, k), None, "{k}");
        }
        assert_eq!(get(&span.attributes, "server.port"), Some(&int(8080)));
    }

    #[test]
    fn partial_success_counts_refused_spans() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        let body = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(refused_spans(&body), 3);
        assert_eq!(refused_spans(b""), 0);
        assert_eq!(refused_spans(b"{\"partialSuccess\":{}}"), 0);
        assert_eq!(
            refused_spans(&ExportTraceServiceResponse::default().encode_to_vec()),
            0
        );
    }
}
