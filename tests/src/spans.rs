//! Zipkin v2 spans as JSON values (what the collector received, what the agent's query API
//! serves): accessors, grouping, and a description of a list of spans for failure messages.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// `v[key]` as a string; "" when it is missing or not a string.
pub fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// `localEndpoint.serviceName`.
pub fn service(span: &Value) -> &str {
    span["localEndpoint"]["serviceName"]
        .as_str()
        .unwrap_or_default()
}

/// `remoteEndpoint.serviceName`.
pub fn remote_service(span: &Value) -> Option<&str> {
    span["remoteEndpoint"]["serviceName"].as_str()
}

/// `CLIENT` or `SERVER`.
pub fn kind(span: &Value) -> &str {
    text(span, "kind")
}

pub fn id(span: &Value) -> &str {
    text(span, "id")
}

pub fn trace_id(span: &Value) -> &str {
    text(span, "traceId")
}

pub fn parent(span: &Value) -> Option<&str> {
    span["parentId"].as_str()
}

pub fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["tags"][key].as_str()
}

/// A boolean field (`debug`, `shared`); false when missing.
pub fn flag(span: &Value, key: &str) -> bool {
    span[key].as_bool().unwrap_or(false)
}

/// `timestamp` and `duration`, µs.
pub fn window(span: &Value) -> (u64, u64) {
    let ts = span["timestamp"].as_u64().expect("span has a timestamp");
    let d = span["duration"].as_u64().expect("span has a duration");
    (ts, ts + d)
}

/// One line per span, sorted, for failure messages.
pub fn describe(spans: &[Value]) -> String {
    let mut lines: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                "  {} {} parent={} {} {:?} {} -> {:?} ts={} d={} debug={} shared={} tags={}",
                trace_id(s),
                id(s),
                parent(s).unwrap_or("-"),
                kind(s),
                text(s, "name"),
                service(s),
                remote_service(s),
                s["timestamp"],
                s["duration"],
                flag(s, "debug"),
                flag(s, "shared"),
                s["tags"]
            )
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// The one span of `spans` of `service` and `kind` (panics on none or several).
pub fn one<'a>(spans: &'a [Value], svc: &str, k: &str) -> &'a Value {
    let found: Vec<&Value> = spans
        .iter()
        .filter(|s| service(s) == svc && kind(s) == k)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {k} span of {svc} in:\n{}",
        describe(spans)
    );
    found[0]
}

/// `child` lies inside `parent`'s time window, give or take 1 ms.
pub fn assert_inside(child: &Value, parent: &Value, what: &str, all: &[Value]) {
    const SLACK: u64 = 1000;
    let (cs, ce) = window(child);
    let (ps, pe) = window(parent);
    assert!(
        cs + SLACK >= ps && ce <= pe + SLACK,
        "{what}: child window {cs}..{ce} is not inside its parent's {ps}..{pe} (±1 ms):\n{}",
        describe(all)
    );
}

/// Spans grouped by trace id.
pub fn by_trace(spans: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut traces: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for s in spans {
        traces
            .entry(trace_id(s).to_owned())
            .or_default()
            .push(s.clone());
    }
    traces
}

/// `(traceId, id, kind)` of every span.
pub fn keys(spans: &[Value]) -> BTreeSet<(String, String, String)> {
    spans
        .iter()
        .map(|s| (trace_id(s).to_owned(), id(s).to_owned(), kind(s).to_owned()))
        .collect()
}

/// The spans in `(traceId, id, kind)` order.
pub fn sorted(mut spans: Vec<Value>) -> Vec<Value> {
    spans.sort_by_key(|s| (trace_id(s).to_owned(), id(s).to_owned(), kind(s).to_owned()));
    spans
}
