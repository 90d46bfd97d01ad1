//! The spans of the Kubernetes tests: the collector with the agent's own view of its spans on a
//! timeout, and the checks of the names spans carry.

use std::collections::BTreeMap;

use serde_json::Value;

use super::QUIET;
use crate::agent::Agent;
pub use crate::spans::{describe as describe_spans, kind, service};
use crate::zipkin;

/// The collector (`zipkin::Collector`, named `mtk-collector`): a timeout waiting for spans
/// shows what the agent's own store and span counters say.
pub struct Collector(zipkin::Collector);

impl Collector {
    pub fn start() -> Self {
        Self(zipkin::Collector::start("mtk-collector", &[]))
    }

    pub fn endpoint(&self) -> String {
        self.0.endpoint()
    }

    /// Waits until exactly `n` spans of `services` arrived (panics on more, or on a timeout),
    /// then waits [`QUIET`] and checks that nothing was added.
    pub fn wait_spans(&self, agent: &Agent, services: &[&str], n: usize) -> Vec<Value> {
        self.0.wait_spans_with(services, n, QUIET, || {
            format!(
                "the agent's trace store has {} of them; its span counters:\n{}",
                stored_spans(agent, services),
                span_counters(agent)
            )
        })
    }
}

/// How many spans of `services` the agent's own trace store holds.
pub fn stored_spans(agent: &Agent, services: &[&str]) -> usize {
    let mut n = 0;
    for svc in services {
        let r = agent.get(&format!("/api/v2/traces?serviceName={svc}&limit=100000"));
        let traces: Vec<Vec<Value>> = serde_json::from_slice(&r.body).unwrap_or_default();
        n += traces
            .iter()
            .flatten()
            .filter(|s| service(s) == *svc)
            .count();
    }
    n
}

/// The agent's span self-metrics, for failure reports.
pub fn span_counters(agent: &Agent) -> String {
    let m = agent.metrics();
    [
        "meshtap_spans_exported_total",
        "meshtap_spans_dropped_total",
        "meshtap_spans_pending",
        "meshtap_spans_unlinked",
        "meshtap_spans_not_sampled_total",
        "meshtap_trace_store_spans",
        "meshtap_events_lost_total",
    ]
    .iter()
    .map(|n| m.describe(n))
    .collect::<Vec<_>>()
    .join("\n")
}

/// `remoteEndpoint.serviceName`, "" when there is none.
pub fn remote_service(span: &Value) -> &str {
    crate::spans::remote_service(span).unwrap_or_default()
}

/// Every span of `spans` of `(service, kind)` carries exactly `tags` (k8s.* tags: those listed
/// and no other) and names `remote` as its remote service; returns how many there are.
pub fn assert_span_names(
    spans: &[Value],
    svc: &str,
    k: &str,
    tags: &[(&str, &str)],
    remote: &str,
) -> usize {
    let mine: Vec<&Value> = spans
        .iter()
        .filter(|s| service(s) == svc && kind(s) == k)
        .collect();
    for s in &mine {
        let k8s: BTreeMap<&str, &str> = s["tags"]
            .as_object()
            .map(|t| {
                t.iter()
                    .filter(|(key, _)| key.starts_with("k8s."))
                    .map(|(key, v)| (key.as_str(), v.as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let want: BTreeMap<&str, &str> = tags.iter().copied().collect();
        assert_eq!(
            k8s,
            want,
            "k8s tags of a {k} span of {svc}: {s}\nall:\n{}",
            describe_spans(spans)
        );
        assert_eq!(
            remote_service(s),
            remote,
            "remote service of a {k} span of {svc}: {s}"
        );
    }
    mine.len()
}

/// The SERVER spans of `server` called by `client` are the children of `client`'s CLIENT
/// spans (same trace, parentId = the CLIENT span's id): one trace per request. Returns how many.
pub fn assert_linked(spans: &[Value], client: &str, server: &str) -> usize {
    let clients: BTreeMap<&str, &Value> = spans
        .iter()
        .filter(|s| service(s) == client && kind(s) == "CLIENT")
        .map(|s| (s["id"].as_str().unwrap_or_default(), s))
        .collect();
    let mut n = 0;
    for s in spans
        .iter()
        .filter(|s| service(s) == server && kind(s) == "SERVER" && remote_service(s) == client)
    {
        let parent = s["parentId"].as_str().and_then(|p| clients.get(p));
        assert!(
            parent.is_some_and(|c| c["traceId"] == s["traceId"]),
            "a SERVER span of {server} is not the child of a CLIENT span of {client}: {s}\nall:\n{}",
            describe_spans(spans)
        );
        n += 1;
    }
    n
}
