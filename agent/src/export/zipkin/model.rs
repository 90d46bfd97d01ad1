//! The Zipkin v2 span model, as the `Span` and `Endpoint` definitions of the official API spec
//! describe it (zipkin2-api.yaml): JSON in camelCase, absent fields omitted.
//!
//! Rules from the spec that the types cannot express are checked by [`Span::validate`]: ids are
//! lower-hex (trace 16 or 32 characters, span 16), `duration` is at least 1 µs, names and service
//! names are lowercase, `ipv4`/`ipv6` are addresses of that family, `port` is never 0.
//! [`Span::normalize`] repairs what can be repaired (case, a zero duration, a zero port) so that
//! one bad span never makes a collector reject a whole batch.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};

/// `Span.kind`. The agent records RPCs only, but a store may be fed spans from elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Kind {
    Client,
    Server,
    Producer,
    Consumer,
}

/// `Endpoint`: the network context of a node in the service graph.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Lowercase label of this node in the service graph; absent if unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// Absent if unknown; the spec asks never to send 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Endpoint {
    /// An endpoint for `service` at `addr`. The service name is lowercased, an IPv4-mapped IPv6
    /// address goes in `ipv4` (the spec: "prefer using the ipv4 field for mapped addresses"), an
    /// unspecified address is left out, and so is port 0.
    pub fn new(service: Option<&str>, addr: Option<SocketAddr>) -> Self {
        let mut endpoint = Endpoint {
            service_name: service.filter(|s| !s.is_empty()).map(|s| s.to_lowercase()),
            ..Endpoint::default()
        };
        if let Some(addr) = addr {
            match addr.ip().to_canonical() {
                IpAddr::V4(ip) if !ip.is_unspecified() => endpoint.ipv4 = Some(ip.to_string()),
                IpAddr::V6(ip) if !ip.is_unspecified() => endpoint.ipv6 = Some(ip.to_string()),
                _ => {}
            }
            endpoint.port = (addr.port() != 0).then_some(addr.port());
        }
        endpoint
    }

    fn is_empty(&self) -> bool {
        self.service_name.is_none()
            && self.ipv4.is_none()
            && self.ipv6.is_none()
            && self.port.is_none()
    }
}

/// `Span`: a single-host view of an operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    /// 16 or 32 lower-hex characters (64 or 128 bits).
    pub trace_id: String,
    /// 16 lower-hex characters.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// Lowercase, low-cardinality operation name (e.g. `get /api/users/{id}`); empty = absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Epoch microseconds of the start; 0 = absent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timestamp: u64,
    /// Microseconds, at least 1; 0 = absent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duration: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<Endpoint>,
    /// Keys are `'static` when the agent writes them (no allocation per tag), owned when a
    /// span is read from JSON.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<Cow<'static, str>, String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub debug: bool,
    /// True on a server span that reuses its client's span id (B3 single-span RPCs).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared: bool,
}

/// `DependencyLink`: traced calls from one service to another. `errorCount` is always written
/// (the spec makes it optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyLink {
    pub parent: String,
    pub child: String,
    pub call_count: u64,
    #[serde(default)]
    pub error_count: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// Why a span breaks the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    #[error("traceId {0:?} is not 16 or 32 lower-hex characters")]
    TraceId(String),
    #[error("id {0:?} is not 16 lower-hex characters")]
    Id(String),
    #[error("parentId {0:?} is not 16 lower-hex characters")]
    ParentId(String),
    #[error("name {0:?} is not lowercase")]
    Name(String),
    #[error("{which} serviceName {name:?} is not lowercase")]
    ServiceName { which: &'static str, name: String },
    #[error("{which} ipv4 {value:?} is not an IPv4 address")]
    Ipv4 { which: &'static str, value: String },
    #[error("{which} ipv6 {value:?} is not an IPv6 address")]
    Ipv6 { which: &'static str, value: String },
    #[error("{which} port is 0")]
    Port { which: &'static str },
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// 16 or 32 lower-hex characters.
pub fn is_trace_id(s: &str) -> bool {
    (s.len() == 16 || s.len() == 32) && is_lower_hex(s)
}

/// 16 lower-hex characters.
pub fn is_span_id(s: &str) -> bool {
    s.len() == 16 && is_lower_hex(s)
}

/// A 128-bit trace id as Zipkin writes it.
pub fn format_trace_id(id: u128) -> String {
    format!("{id:032x}")
}

/// A 64-bit span id as Zipkin writes it.
pub fn format_span_id(id: u64) -> String {
    format!("{id:016x}")
}

/// A trace id as a query names it: lowercased, and a 128-bit id whose high half is zero
/// shortened to its 64-bit form (Zipkin treats them as the same trace).
/// `None` if it is not 16 or 32 hex characters.
pub fn normalize_trace_id(s: &str) -> Option<String> {
    let lower = s.to_ascii_lowercase();
    if !is_trace_id(&lower) {
        return None;
    }
    match lower.strip_prefix("0000000000000000") {
        Some(low) if lower.len() == 32 => Some(low.to_string()),
        _ => Some(lower),
    }
}

fn validate_endpoint(which: &'static str, e: &Endpoint) -> Result<(), SpanError> {
    if let Some(name) = &e.service_name
        && name.chars().any(char::is_uppercase)
    {
        return Err(SpanError::ServiceName {
            which,
            name: name.clone(),
        });
    }
    if let Some(v) = &e.ipv4
        && v.parse::<Ipv4Addr>().is_err()
    {
        return Err(SpanError::Ipv4 {
            which,
            value: v.clone(),
        });
    }
    if let Some(v) = &e.ipv6
        && v.parse::<Ipv6Addr>().is_err()
    {
        return Err(SpanError::Ipv6 {
            which,
            value: v.clone(),
        });
    }
    if e.port == Some(0) {
        return Err(SpanError::Port { which });
    }
    Ok(())
}

impl Span {
    /// Checks every rule of the spec's `Span` definition (and the lowercase rules of its
    /// descriptions).
    pub fn validate(&self) -> Result<(), SpanError> {
        if !is_trace_id(&self.trace_id) {
            return Err(SpanError::TraceId(self.trace_id.clone()));
        }
        if !is_span_id(&self.id) {
            return Err(SpanError::Id(self.id.clone()));
        }
        if let Some(p) = &self.parent_id
            && !is_span_id(p)
        {
            return Err(SpanError::ParentId(p.clone()));
        }
        if self.name.chars().any(char::is_uppercase) {
            return Err(SpanError::Name(self.name.clone()));
        }
        if let Some(e) = &self.local_endpoint {
            validate_endpoint("localEndpoint", e)?;
        }
        if let Some(e) = &self.remote_endpoint {
            validate_endpoint("remoteEndpoint", e)?;
        }
        Ok(())
    }

    /// Repairs what the spec lets a reporter repair: lowercases the name and service names,
    /// rounds a zero duration of a timed span up to 1 µs ("durations of less than one are
    /// rounded up"), drops port 0 and empty endpoints, and shortens a 128-bit trace id whose
    /// high half is zero. Ids are left alone: a bad id cannot be repaired.
    pub fn normalize(&mut self) {
        if self.name.chars().any(char::is_uppercase) {
            self.name = self.name.to_lowercase();
        }
        if self.timestamp != 0 && self.duration == 0 {
            self.duration = 1;
        }
        let id = &self.trace_id;
        if (id.bytes().any(|b| b.is_ascii_uppercase()) || id.starts_with("0000000000000000"))
            && let Some(t) = normalize_trace_id(id)
        {
            self.trace_id = t;
        }
        for endpoint in [&mut self.local_endpoint, &mut self.remote_endpoint] {
            if let Some(e) = endpoint.as_mut() {
                if let Some(name) = e.service_name.as_mut()
                    && name.chars().any(char::is_uppercase)
                {
                    *name = name.to_lowercase();
                }
                if e.service_name.as_deref() == Some("") {
                    e.service_name = None;
                }
                if e.port == Some(0) {
                    e.port = None;
                }
            }
            if endpoint.as_ref().is_some_and(Endpoint::is_empty) {
                *endpoint = None;
            }
        }
    }

    pub fn local_service(&self) -> Option<&str> {
        self.local_endpoint.as_ref()?.service_name.as_deref()
    }

    pub fn remote_service(&self) -> Option<&str> {
        self.remote_endpoint.as_ref()?.service_name.as_deref()
    }

    /// Whether the span records an error: Zipkin's convention is an `error` tag.
    pub fn is_error(&self) -> bool {
        self.tags.contains_key("error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_span() -> Span {
        Span {
            trace_id: "5af7183fb1d4cf5f".into(),
            id: "352bff9a74ca9ad2".into(),
            parent_id: Some("6b221d5bc9e6496c".into()),
            kind: Some(Kind::Server),
            name: "get /api".into(),
            timestamp: 1_556_604_172_355_737,
            duration: 1431,
            local_endpoint: Some(Endpoint {
                service_name: Some("backend".into()),
                ipv4: Some("192.168.99.1".into()),
                ipv6: None,
                port: Some(3306),
            }),
            remote_endpoint: Some(Endpoint {
                service_name: None,
                ipv4: Some("172.19.0.2".into()),
                ipv6: None,
                port: Some(58648),
            }),
            tags: BTreeMap::from([
                ("http.method".into(), "GET".into()),
                ("http.path".into(), "/api".into()),
            ]),
            debug: false,
            shared: false,
        }
    }

    /// The spec's own example span, byte for byte in our field order.
    #[test]
    fn serializes_the_spec_example() {
        let json = serde_json::to_string(&server_span()).unwrap();
        assert_eq!(
            json,
            r#"{"traceId":"5af7183fb1d4cf5f","id":"352bff9a74ca9ad2","parentId":"6b221d5bc9e6496c","kind":"SERVER","name":"get /api","timestamp":1556604172355737,"duration":1431,"localEndpoint":{"serviceName":"backend","ipv4":"192.168.99.1","port":3306},"remoteEndpoint":{"ipv4":"172.19.0.2","port":58648},"tags":{"http.method":"GET","http.path":"/api"}}"#
        );
        let back: Span = serde_json::from_str(&json).unwrap();
        assert_eq!(back, server_span());
        assert_eq!(back.validate(), Ok(()));
    }

    #[test]
    fn omits_absent_fields_and_keeps_true_flags() {
        let span = Span {
            trace_id: format_trace_id(0x0af7183fb1d4cf5f_0000000000000001),
            id: format_span_id(1),
            kind: Some(Kind::Client),
            shared: true,
            debug: true,
            ..Span::default()
        };
        assert_eq!(
            serde_json::to_string(&span).unwrap(),
            r#"{"traceId":"0af7183fb1d4cf5f0000000000000001","id":"0000000000000001","kind":"CLIENT","debug":true,"shared":true}"#
        );
    }

    #[test]
    fn deserializes_unknown_fields_and_annotations() {
        let span: Span = serde_json::from_str(
            r#"{"traceId":"5af7183fb1d4cf5f","id":"352bff9a74ca9ad2","annotations":[{"timestamp":1,"value":"ws"}],"kind":"PRODUCER"}"#,
        )
        .unwrap();
        assert_eq!(span.kind, Some(Kind::Producer));
        assert_eq!(span.timestamp, 0);
        assert!(serde_json::from_str::<Span>(r#"{"id":"352bff9a74ca9ad2"}"#).is_err());
        assert!(
            serde_json::from_str::<Span>(r#"{"traceId":"a","id":"b","kind":"LOCAL"}"#).is_err()
        );
    }

    #[test]
    fn ids() {
        assert!(is_trace_id("4e441824ec2b6a44ffdc9bb9a6453df3"));
        assert!(is_trace_id("ffdc9bb9a6453df3"));
        assert!(!is_trace_id("FFDC9BB9A6453DF3"));
        assert!(!is_trace_id("ffdc9bb9a6453df"));
        assert!(!is_trace_id("ffdc9bb9a6453df3ffdc9bb9a6453df")); // 31
        assert!(!is_trace_id("ffdc9bb9a6453dfg"));
        assert!(!is_trace_id(""));
        assert!(is_span_id("ffdc9bb9a6453df3"));
        assert!(!is_span_id("4e441824ec2b6a44ffdc9bb9a6453df3"));
        assert_eq!(
            normalize_trace_id("0000000000000000FFDC9BB9A6453DF3").as_deref(),
            Some("ffdc9bb9a6453df3")
        );
        assert_eq!(normalize_trace_id("ffdc9bb9a6453df"), None);
        assert_eq!(
            normalize_trace_id("\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}"),
            None
        );
    }

    #[test]
    fn validate_catches_every_rule() {
        let ok = server_span();
        let mut s = ok.clone();
        s.trace_id = "XYZ".into();
        assert!(matches!(s.validate(), Err(SpanError::TraceId(_))));
        let mut s = ok.clone();
        s.id = "352bff9a74ca9ad".into();
        assert!(matches!(s.validate(), Err(SpanError::Id(_))));
        let mut s = ok.clone();
        s.parent_id = Some(String::new());
        assert!(matches!(s.validate(), Err(SpanError::ParentId(_))));
        let mut s = ok.clone();
        s.name = "GET /api".into();
        assert!(matches!(s.validate(), Err(SpanError::Name(_))));
        let mut s = ok.clone();
        s.local_endpoint.as_mut().unwrap().service_name = Some("Backend".into());
        assert!(matches!(s.validate(), Err(SpanError::ServiceName { .. })));
        let mut s = ok.clone();
        s.remote_endpoint.as_mut().unwrap().ipv4 = Some("::1".into());
        assert!(matches!(s.validate(), Err(SpanError::Ipv4 { .. })));
        let mut s = ok.clone();
        s.remote_endpoint.as_mut().unwrap().ipv6 = Some("1.2.3.4".into());
        assert!(matches!(s.validate(), Err(SpanError::Ipv6 { .. })));
        let mut s = ok.clone();
        s.remote_endpoint.as_mut().unwrap().port = Some(0);
        assert!(matches!(s.validate(), Err(SpanError::Port { .. })));
        assert_eq!(
            SpanError::Port {
                which: "remoteEndpoint"
            }
            .to_string(),
            "remoteEndpoint port is 0"
        );
    }

    #[test]
    fn normalize_repairs_what_it_can() {
        let mut s = server_span();
        s.name = "GET /API".into();
        s.duration = 0;
        s.trace_id = "00000000000000005af7183fb1d4cf5f".into();
        s.local_endpoint.as_mut().unwrap().service_name = Some("BackEnd".into());
        s.remote_endpoint = Some(Endpoint {
            port: Some(0),
            ..Endpoint::default()
        });
        s.normalize();
        assert_eq!(s.name, "get /api");
        assert_eq!(s.duration, 1);
        assert_eq!(s.trace_id, "5af7183fb1d4cf5f");
        assert_eq!(s.local_service(), Some("backend"));
        assert_eq!(s.remote_endpoint, None);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn endpoint_from_socket_addr() {
        let e = Endpoint::new(
            Some("Frontend"),
            Some("[::ffff:10.0.0.1]:8080".parse().unwrap()),
        );
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"serviceName":"frontend","ipv4":"10.0.0.1","port":8080}"#
        );
        let e = Endpoint::new(None, Some("[2001:db8::c001]:0".parse().unwrap()));
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"ipv6":"2001:db8::c001"}"#
        );
        let e = Endpoint::new(Some(""), Some("0.0.0.0:80".parse().unwrap()));
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"port":80}"#);
    }
}
