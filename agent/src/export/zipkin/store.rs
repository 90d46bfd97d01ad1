//! A bounded in-memory store of recent spans, answering the queries of the Zipkin v2 API
//! (zipkin2-api.yaml): services, span names, traces by filter, one trace, dependency links.
//!
//! At most `max_spans` spans are kept; beyond, whole traces go, oldest first (by the trace's
//! timestamp: its root span's, else its earliest span's, as Zipkin's queries use), counted in
//! `meshtap_trace_store_evicted_spans_total`. Indexes: trace id (and its low 64 bits, so a
//! 16-character id finds a 128-bit trace, as Zipkin does unless `STRICT_TRACE_ID`), service name
//! (its traces, span names and remote services, reference-counted), and trace timestamp.
//!
//! A span is kept as its JSON (what every read returns) plus the names its indexes count,
//! shared with the index keys: about half the memory of a decoded `Span`, whose every field is
//! an allocation. Reads decode the spans they look at; they are rare, inserts are not.
//!
//! Queries take time as an argument (`end_ts`), so tests need no clock.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

use crate::fast::{Map, Set};

use super::{
    model::{DependencyLink, Endpoint, Kind, Span, SpanError, normalize_trace_id},
    name,
};

/// Store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Spans kept, at most [default: 10000].
    pub max_spans: usize,
    /// `lookback` of a query that names none, ms: Zipkin's `QUERY_LOOKBACK` [default: 1 day].
    pub default_lookback_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_spans: 10_000,
            default_lookback_ms: 86_400_000,
        }
    }
}

/// The store's own telemetry.
#[derive(Clone, Default)]
pub struct StoreMetrics {
    pub spans: Gauge,
    pub traces: Gauge,
    pub evicted: Counter,
    pub rejected: Counter,
}

impl StoreMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            name::STORE_SPANS,
            "Spans in the in-memory trace store",
            self.spans.clone(),
        );
        registry.register(
            name::STORE_TRACES,
            "Traces in the in-memory trace store",
            self.traces.clone(),
        );
        registry.register(
            name::STORE_EVICTED,
            "Spans evicted from the trace store (oldest traces first) to stay within its bound",
            self.evicted.clone(),
        );
        registry.register(
            name::STORE_REJECTED,
            "Spans not stored because they break the Zipkin spec",
            self.rejected.clone(),
        );
    }
}

/// A query parameter that breaks the API's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("endTs must be a positive number of epoch milliseconds")]
    EndTs,
    #[error("lookback must be a positive number of milliseconds")]
    Lookback,
    #[error("limit must be positive")]
    Limit,
    #[error("minDuration must be a positive number of microseconds")]
    MinDuration,
    #[error("maxDuration is only valid with minDuration")]
    MaxWithoutMin,
    #[error("maxDuration must be at least minDuration")]
    MaxBelowMin,
}

/// One condition of `annotationQuery`. This model has no annotations, so a bare word matches
/// tag keys only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Term {
    /// `key=value`: a span has this tag with this value.
    Tag { key: String, value: String },
    /// `word`: a span has a tag with this key.
    Key(String),
}

/// Parses `annotationQuery`: terms joined by ` and `.
pub fn parse_annotation_query(query: &str) -> Vec<Term> {
    query
        .split(" and ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('=') {
            Some((k, v)) => Term::Tag {
                key: k.trim().to_string(),
                value: v.trim().to_string(),
            },
            None => Term::Key(t.to_string()),
        })
        .collect()
}

/// `GET /traces` parameters, with the spec's units: durations µs, `end_ts` and `lookback` ms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceQuery {
    pub service_name: Option<String>,
    pub remote_service_name: Option<String>,
    pub span_name: Option<String>,
    pub annotation_query: Vec<Term>,
    pub min_duration: Option<u64>,
    pub max_duration: Option<u64>,
    pub end_ts: u64,
    pub lookback: u64,
    pub limit: usize,
}

impl TraceQuery {
    /// Every trace in `[end_ts - lookback, end_ts]`, up to the spec's default limit of 10.
    pub fn new(end_ts: u64, lookback: u64) -> Self {
        TraceQuery {
            service_name: None,
            remote_service_name: None,
            span_name: None,
            annotation_query: Vec::new(),
            min_duration: None,
            max_duration: None,
            end_ts,
            lookback,
            limit: 10,
        }
    }

    pub fn validate(&self) -> Result<(), QueryError> {
        if self.end_ts == 0 {
            return Err(QueryError::EndTs);
        }
        if self.lookback == 0 {
            return Err(QueryError::Lookback);
        }
        if self.limit == 0 {
            return Err(QueryError::Limit);
        }
        match (self.min_duration, self.max_duration) {
            (Some(0), _) => Err(QueryError::MinDuration),
            (None, Some(_)) => Err(QueryError::MaxWithoutMin),
            (Some(min), Some(max)) if max < min => Err(QueryError::MaxBelowMin),
            _ => Ok(()),
        }
    }

    /// The window of trace timestamps, µs, inclusive.
    fn window(&self) -> (u64, u64) {
        let lo = self
            .end_ts
            .saturating_sub(self.lookback)
            .saturating_mul(1000);
        (lo.max(1), self.end_ts.saturating_mul(1000))
    }

    /// Zipkin's `QueryRequest.test`: the service name constrains the other conditions, which
    /// each must hold on some span of that service (not necessarily the same one).
    fn matches(&self, spans: &[Span]) -> bool {
        let mut service = self.service_name.is_none();
        let mut remote = self.remote_service_name.is_none();
        let mut name = self.span_name.is_none();
        let mut duration = self.min_duration.is_none();
        let mut terms = vec![false; self.annotation_query.len()];
        for span in spans {
            if let Some(s) = &self.service_name
                && span.local_service() != Some(s.as_str())
            {
                continue;
            }
            service = true;
            remote |= self.remote_service_name.as_deref() == span.remote_service();
            name |= self.span_name.as_deref() == Some(span.name.as_str());
            if let Some(min) = self.min_duration {
                duration |= span.duration >= min
                    && self.max_duration.is_none_or(|max| span.duration <= max);
            }
            for (met, term) in terms.iter_mut().zip(&self.annotation_query) {
                *met |= match term {
                    Term::Tag { key, value } => span.tags.get(key.as_str()) == Some(value),
                    Term::Key(key) => span.tags.contains_key(key.as_str()),
                };
            }
        }
        service && remote && name && duration && terms.iter().all(|m| *m)
    }
}

/// A stored span: its JSON and the names the indexes count it under.
struct Stored {
    json: Box<str>,
    /// Local service name, shared with the key of `Inner::services`.
    local: Option<Arc<str>>,
    /// Span name (when the span has a local service and a name) and remote service name,
    /// shared with the keys of `Inner::span_names` and `Inner::remote_services`.
    name: Option<Arc<str>>,
    remote: Option<Arc<str>>,
}

impl Stored {
    /// The span back. It was encoded by `Inner::insert` from a valid span, so decoding fails
    /// only on a bug; such a span is left out of answers (and trips debug builds).
    fn decode(&self) -> Option<Span> {
        let span = serde_json::from_str(&self.json);
        debug_assert!(span.is_ok(), "stored span does not decode: {}", self.json);
        span.ok()
    }
}

/// The spans of one trace, decoded, in store order.
fn decode_all(spans: &[Stored]) -> Vec<Span> {
    spans.iter().filter_map(Stored::decode).collect()
}

struct Trace {
    spans: Vec<Stored>,
    /// Key in `Inner::by_time`: (timestamp µs, creation sequence).
    key: (u64, u64),
    root_ts: Option<u64>,
    min_ts: u64,
}

/// A stored trace's id: its value, and whether it is a 128-bit id (32 characters once
/// normalized: a 128-bit id whose high half is zero is stored as the 64-bit id). Copy, so the
/// indexes hold no strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TraceKey {
    value: u128,
    long: bool,
}

impl TraceKey {
    /// The key of a normalized trace id (see `normalize_trace_id`).
    fn of(id: &str) -> Option<Self> {
        let value = u128::from_str_radix(id, 16).ok()?;
        Some(TraceKey {
            value,
            long: id.len() == 32,
        })
    }
}

#[derive(Default)]
struct Inner {
    traces: Map<TraceKey, Trace>,
    by_time: BTreeMap<(u64, u64), TraceKey>,
    /// Local service name -> spans of it in the store. A query by service scans `by_time`
    /// instead of keeping a set of trace ids per service: queries are rare, spans are not.
    services: BTreeMap<Arc<str>, usize>,
    span_names: BTreeMap<Arc<str>, BTreeMap<Arc<str>, usize>>,
    remote_services: BTreeMap<Arc<str>, BTreeMap<Arc<str>, usize>>,
    spans: usize,
    next_seq: u64,
}

/// Counts `key` up; returns the map's own key, to share rather than copy the name.
fn count_up(map: &mut BTreeMap<Arc<str>, usize>, key: &str) -> Arc<str> {
    if let Some((shared, n)) = map.get_key_value(key) {
        let (shared, n) = (shared.clone(), n + 1);
        map.insert(shared.clone(), n);
        return shared;
    }
    let shared: Arc<str> = key.into();
    map.insert(shared.clone(), 1);
    shared
}

/// `count_up` in the map of `outer` (whose key is `outer` itself, already shared).
fn count_up_in(
    map: &mut BTreeMap<Arc<str>, BTreeMap<Arc<str>, usize>>,
    outer: &Arc<str>,
    inner: &str,
) -> Arc<str> {
    let names = match map.get_mut(&**outer) {
        Some(names) => names,
        None => map.entry(outer.clone()).or_default(),
    };
    count_up(names, inner)
}

fn count_down(map: &mut BTreeMap<Arc<str>, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

fn count_down_in(
    map: &mut BTreeMap<Arc<str>, BTreeMap<Arc<str>, usize>>,
    outer: &str,
    inner: &str,
) {
    if let Some(names) = map.get_mut(outer) {
        count_down(names, inner);
        if names.is_empty() {
            map.remove(outer);
        }
    }
}

impl Inner {
    /// Stores a validated span (its trace id is lower-hex, 16 or 32 characters).
    fn insert(&mut self, span: Span) {
        let Some(id) = TraceKey::of(&span.trace_id) else {
            return;
        };
        let seq = &mut self.next_seq;
        let mut created = false;
        let trace = self.traces.entry(id).or_insert_with(|| {
            created = true;
            *seq += 1;
            Trace {
                spans: Vec::new(),
                key: (0, *seq),
                root_ts: None,
                min_ts: 0,
            }
        });
        if span.timestamp != 0 {
            if trace.min_ts == 0 || span.timestamp < trace.min_ts {
                trace.min_ts = span.timestamp;
            }
            if span.parent_id.is_none() && trace.root_ts.is_none() {
                trace.root_ts = Some(span.timestamp);
            }
        }
        let key = (trace.root_ts.unwrap_or(trace.min_ts), trace.key.1);
        if created || key != trace.key {
            self.by_time.remove(&trace.key);
            trace.key = key;
            self.by_time.insert(key, id);
        }
        let mut stored = Stored {
            json: Box::default(),
            local: None,
            name: None,
            remote: None,
        };
        if let Some(service) = span.local_service() {
            let service = count_up(&mut self.services, service);
            if !span.name.is_empty() {
                stored.name = Some(count_up_in(&mut self.span_names, &service, &span.name));
            }
            if let Some(remote) = span.remote_service() {
                stored.remote = Some(count_up_in(&mut self.remote_services, &service, remote));
            }
            stored.local = Some(service);
        }
        // Serializing a `Span` cannot fail: string keys, no floats, no custom serializers.
        stored.json = serde_json::to_string(&span)
            .unwrap_or_default()
            .into_boxed_str();
        trace.spans.push(stored);
        self.spans += 1;
    }

    /// Removes the oldest trace; returns its span count (0 if the store is empty).
    fn evict_oldest(&mut self) -> usize {
        let Some((_, id)) = self.by_time.pop_first() else {
            return 0;
        };
        let Some(trace) = self.traces.remove(&id) else {
            return 0;
        };
        for span in &trace.spans {
            if let Some(service) = span.local.as_deref() {
                count_down(&mut self.services, service);
                if let Some(name) = span.name.as_deref() {
                    count_down_in(&mut self.span_names, service, name);
                }
                if let Some(remote) = span.remote.as_deref() {
                    count_down_in(&mut self.remote_services, service, remote);
                }
            }
        }
        self.spans = self.spans.saturating_sub(trace.spans.len());
        trace.spans.len()
    }

    /// Ids of the stored traces a (normalized) query id names: itself, plus, as Zipkin without
    /// strict trace ids, the traces whose low 64 bits it names or equals.
    /// A 16-character id finds the 128-bit traces by scanning: such queries are rare, and an
    /// index of low halves would cost every stored trace an entry.
    fn matching_ids(&self, id: &str) -> Vec<TraceKey> {
        let Some(key) = TraceKey::of(id) else {
            return Vec::new();
        };
        let mut ids: Vec<TraceKey> = Vec::new();
        if self.traces.contains_key(&key) {
            ids.push(key);
        }
        if key.long {
            let low = TraceKey {
                value: key.value & u128::from(u64::MAX),
                long: false,
            };
            if self.traces.contains_key(&low) {
                ids.push(low);
            }
        } else {
            ids.extend(
                self.traces
                    .keys()
                    .filter(|k| k.long && k.value & u128::from(u64::MAX) == key.value),
            );
        }
        ids
    }

    fn spans_of(&self, id: &str) -> Option<Vec<Span>> {
        let mut spans: Vec<Span> = self
            .matching_ids(id)
            .into_iter()
            .filter_map(|i| self.traces.get(&i))
            .flat_map(|t| t.spans.iter().filter_map(Stored::decode))
            .collect();
        if spans.is_empty() {
            return None;
        }
        spans.sort_by_key(|s| s.timestamp);
        Some(spans)
    }

    /// Trace ids in the window, newest first, restricted to `service`'s when given.
    fn in_window(&self, window: (u64, u64), service: Option<&str>) -> Vec<TraceKey> {
        let range = (window.0, 0)..=(window.1, u64::MAX);
        let in_range = self.by_time.range(range).rev().map(|(_, id)| *id);
        match service {
            None => in_range.collect(),
            Some(service) if !self.services.contains_key(service) => Vec::new(),
            Some(service) => in_range
                .filter(|id| {
                    self.traces.get(id).is_some_and(|t| {
                        t.spans.iter().any(|s| s.local.as_deref() == Some(service))
                    })
                })
                .collect(),
        }
    }
}

/// The store. Share it as `Arc<TraceStore>`.
pub struct TraceStore {
    inner: Mutex<Inner>,
    config: StoreConfig,
    metrics: StoreMetrics,
}

impl TraceStore {
    pub fn new(config: StoreConfig, metrics: StoreMetrics) -> Self {
        TraceStore {
            inner: Mutex::new(Inner::default()),
            config,
            metrics,
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `span` (normalized first), evicting the oldest traces beyond `max_spans`.
    pub fn insert(&self, mut span: Span) -> Result<(), SpanError> {
        span.normalize();
        if let Err(e) = span.validate() {
            self.metrics.rejected.inc();
            return Err(e);
        }
        let mut inner = self.lock();
        inner.insert(span);
        let mut evicted = 0;
        while inner.spans > self.config.max_spans {
            let n = inner.evict_oldest();
            if n == 0 {
                break;
            }
            evicted += n;
        }
        if evicted > 0 {
            self.metrics.evicted.inc_by(evicted as u64);
        }
        self.metrics.spans.set(inner.spans as i64);
        self.metrics.traces.set(inner.traces.len() as i64);
        Ok(())
    }

    /// `GET /services`: local service names, sorted.
    pub fn services(&self) -> Vec<String> {
        let inner = self.lock();
        inner.services.keys().map(|k| k.to_string()).collect()
    }

    /// `GET /spans?serviceName=`: span names recorded by `service`, sorted.
    pub fn span_names(&self, service: &str) -> Vec<String> {
        let inner = self.lock();
        inner
            .span_names
            .get(service)
            .map(|n| n.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default()
    }

    /// `GET /remoteServices?serviceName=`: services `service` called (remote endpoints).
    pub fn remote_services(&self, service: &str) -> Vec<String> {
        let inner = self.lock();
        inner
            .remote_services
            .get(service)
            .map(|n| n.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default()
    }

    /// `GET /trace/{traceId}`: the spans of one trace, by start time; `None` if unknown or
    /// `id` is not 16 or 32 hex characters.
    pub fn trace(&self, id: &str) -> Option<Vec<Span>> {
        let id = normalize_trace_id(id)?;
        self.lock().spans_of(&id)
    }

    /// `GET /traceMany`: the known traces among `ids`.
    pub fn traces_by_id(&self, ids: &[String]) -> Vec<Vec<Span>> {
        let inner = self.lock();
        let mut seen = Set::default();
        ids.iter()
            .filter_map(|id| normalize_trace_id(id))
            .filter(|id| seen.insert(id.clone()))
            .filter_map(|id| inner.spans_of(&id))
            .collect()
    }

    /// `GET /traces`: matching traces, newest first, at most `query.limit`.
    pub fn traces(&self, query: &TraceQuery) -> Result<Vec<Vec<Span>>, QueryError> {
        query.validate()?;
        let inner = self.lock();
        let mut out = Vec::new();
        for id in inner.in_window(query.window(), query.service_name.as_deref()) {
            if out.len() >= query.limit {
                break;
            }
            let Some(trace) = inner.traces.get(&id) else {
                continue;
            };
            let mut spans = decode_all(&trace.spans);
            if query.matches(&spans) {
                spans.sort_by_key(|s| s.timestamp);
                out.push(spans);
            }
        }
        Ok(out)
    }

    /// `GET /dependencies`: links between services from the traces whose timestamp is in
    /// `[end_ts - lookback, end_ts]` (ms), sorted by parent then child.
    pub fn dependencies(
        &self,
        end_ts: u64,
        lookback: u64,
    ) -> Result<Vec<DependencyLink>, QueryError> {
        let query = TraceQuery::new(end_ts, lookback);
        query.validate()?;
        let inner = self.lock();
        let mut links = Links::default();
        for id in inner.in_window(query.window(), None) {
            if let Some(trace) = inner.traces.get(&id) {
                links.put_trace(&decode_all(&trace.spans));
            }
        }
        Ok(links.into_links())
    }
}

/// Zipkin's `DependencyLinker`: walks each trace's span tree and counts one call per RPC,
/// preferring the server's view (a client span with children is skipped: its server child
/// links it), and a client span without children links to its remote endpoint's service
/// (an uninstrumented or unobserved callee).
#[derive(Default)]
struct Links {
    counts: BTreeMap<(String, String), (u64, u64)>,
}

impl Links {
    fn add(&mut self, parent: &str, child: &str, error: bool) {
        let c = self
            .counts
            .entry((parent.to_string(), child.to_string()))
            .or_default();
        c.0 += 1;
        if error {
            c.1 += 1;
        }
    }

    fn into_links(self) -> Vec<DependencyLink> {
        self.counts
            .into_iter()
            .map(|((parent, child), (calls, errors))| DependencyLink {
                parent,
                child,
                call_count: calls,
                error_count: errors,
            })
            .collect()
    }

    fn put_trace(&mut self, spans: &[Span]) {
        let tree = Tree::build(spans);
        for (i, span) in spans.iter().enumerate() {
            let mut kind = span.kind;
            if kind == Some(Kind::Client) && tree.has_children[i] {
                continue;
            }
            let local = span.local_service();
            let remote = span.remote_service();
            if kind.is_none() {
                // An unknown kind is a client when both sides are known.
                if local.is_some() && remote.is_some() {
                    kind = Some(Kind::Client);
                } else {
                    continue;
                }
            }
            let (mut parent, child) = match kind {
                Some(Kind::Server | Kind::Consumer) => (remote, local),
                _ => (local, remote),
            };
            let mut error = span.is_error();
            if matches!(kind, Some(Kind::Producer | Kind::Consumer)) {
                if let (Some(p), Some(c)) = (parent, child) {
                    self.add(p, c, error);
                }
                continue;
            }
            if let Some(a) = tree.first_remote_ancestor(spans, i)
                && let Some(ancestor_service) = spans[a].local_service()
            {
                // A client span recorded under another service's server: backfill that call.
                if kind == Some(Kind::Client)
                    && let Some(local) = local
                    && local != ancestor_service
                {
                    self.add(ancestor_service, local, false);
                }
                if kind == Some(Kind::Server) || parent.is_none() {
                    parent = Some(ancestor_service);
                }
                // The RPC's error may be recorded on the client side only. (Zipkin checks the
                // parent id only; a shared span names its client by its own id.)
                let client_of_this = if span.shared {
                    span.id == spans[a].id
                } else {
                    span.parent_id.as_deref() == Some(spans[a].id.as_str())
                };
                if !error && spans[a].kind == Some(Kind::Client) && client_of_this {
                    error = spans[a].is_error();
                }
            }
            if let (Some(p), Some(c)) = (parent, child) {
                self.add(p, c, error);
            }
        }
    }
}

/// Parent links of one trace's spans, as Zipkin's `SpanNode` builds them: a shared (server)
/// span is the child of the unshared span with its id; other spans are children of their
/// parent id, preferring a shared span on the same local endpoint; spans whose parent is
/// missing hang off the first root.
struct Tree {
    parent: Vec<Option<usize>>,
    has_children: Vec<bool>,
}

impl Tree {
    fn build(spans: &[Span]) -> Self {
        let mut unshared: Map<&str, usize> = Map::default();
        let mut shared: Map<(&str, Option<&Endpoint>), usize> = Map::default();
        for (i, s) in spans.iter().enumerate() {
            if s.shared {
                shared
                    .entry((s.id.as_str(), s.local_endpoint.as_ref()))
                    .or_insert(i);
            } else {
                unshared.entry(s.id.as_str()).or_insert(i);
            }
        }
        let mut parent = vec![None; spans.len()];
        let mut root = None;
        let mut headless = Vec::new();
        for (i, s) in spans.iter().enumerate() {
            let found = if s.shared {
                unshared.get(s.id.as_str()).copied()
            } else if let Some(pid) = s.parent_id.as_deref() {
                shared
                    .get(&(pid, s.local_endpoint.as_ref()))
                    .or_else(|| unshared.get(pid))
                    .copied()
            } else {
                None
            };
            match found.filter(|p| *p != i) {
                Some(p) => parent[i] = Some(p),
                None if root.is_none() && !s.shared && s.parent_id.is_none() => root = Some(i),
                None => headless.push(i),
            }
        }
        if let Some(r) = root {
            for i in headless {
                parent[i] = Some(r);
            }
        }
        let mut has_children = vec![false; spans.len()];
        for p in parent.iter().flatten() {
            has_children[*p] = true;
        }
        Tree {
            parent,
            has_children,
        }
    }

    /// The nearest ancestor with a kind; bounded, as bad ids can make cycles.
    fn first_remote_ancestor(&self, spans: &[Span], i: usize) -> Option<usize> {
        let mut current = self.parent[i];
        for _ in 0..self.parent.len() {
            let a = current.filter(|a| *a != i)?;
            if spans[a].kind.is_some() {
                return Some(a);
            }
            current = self.parent[a];
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const SEC: u64 = 1_000_000;
    /// 2023-11-14T22:13:20Z, µs.
    const T0: u64 = 1_700_000_000 * SEC;

    fn span(trace: u32, id: u64, parent: Option<u64>, kind: Option<Kind>, service: &str) -> Span {
        Span {
            trace_id: format!("{trace:032x}"),
            id: format!("{id:016x}"),
            parent_id: parent.map(|p| format!("{p:016x}")),
            kind,
            name: format!("op{id}"),
            timestamp: T0 + u64::from(trace) * SEC + id,
            duration: 1000 * id,
            local_endpoint: Some(Endpoint::new(Some(service), None)),
            ..Span::default()
        }
    }

    fn remote(mut s: Span, service: &str) -> Span {
        s.remote_endpoint = Some(Endpoint::new(Some(service), None));
        s
    }

    fn error(mut s: Span) -> Span {
        s.tags.insert("error".into(), "500".into());
        s
    }

    fn store(max_spans: usize) -> (TraceStore, StoreMetrics) {
        let metrics = StoreMetrics::default();
        let config = StoreConfig {
            max_spans,
            ..StoreConfig::default()
        };
        (TraceStore::new(config, metrics.clone()), metrics)
    }

    /// Client frontend -> server backend (child span), backend -> db (client, no child).
    fn rpc_trace(store: &TraceStore, trace: u32) {
        let spans = [
            remote(
                span(trace, 1, None, Some(Kind::Client), "frontend"),
                "backend",
            ),
            span(trace, 2, Some(1), Some(Kind::Server), "backend"),
            remote(span(trace, 3, Some(2), Some(Kind::Client), "backend"), "db"),
        ];
        for s in spans {
            store.insert(s).unwrap();
        }
    }

    fn end_ms(trace: u32) -> u64 {
        (T0 + u64::from(trace) * SEC) / 1000 + 1
    }

    fn ids(traces: &[Vec<Span>]) -> Vec<String> {
        traces
            .iter()
            .map(|t| t[0].trace_id[t[0].trace_id.len() - 8..].to_string())
            .collect()
    }

    #[test]
    fn indexes_services_names_and_remote_services() {
        let (store, metrics) = store(100);
        rpc_trace(&store, 1);
        assert_eq!(store.services(), ["backend", "frontend"]);
        assert_eq!(store.span_names("backend"), ["op2", "op3"]);
        assert_eq!(store.span_names("frontend"), ["op1"]);
        assert_eq!(store.remote_services("backend"), ["db"]);
        assert_eq!(store.remote_services("db"), Vec::<String>::new());
        assert_eq!(metrics.spans.get(), 3);
        assert_eq!(metrics.traces.get(), 1);
        assert_eq!(store.metrics.spans.get(), 3);
    }

    #[test]
    fn evicts_oldest_traces_first_and_their_index_entries() {
        let (store, metrics) = store(7);
        rpc_trace(&store, 3);
        // Trace 1 is older by timestamp though inserted later.
        store
            .insert(span(1, 1, None, Some(Kind::Server), "old"))
            .unwrap();
        store.insert(span(1, 2, Some(1), None, "old")).unwrap();
        rpc_trace(&store, 2); // 8 spans > 7: trace 1 (2 spans) goes
        assert_eq!(metrics.evicted.get(), 2);
        assert_eq!(store.metrics.spans.get(), 6);
        assert!(store.trace(&format!("{:032x}", 1)).is_none());
        assert_eq!(store.services(), ["backend", "frontend"]);
        assert!(store.span_names("old").is_empty());
        rpc_trace(&store, 4); // 9 > 7: trace 2 goes
        assert_eq!(metrics.evicted.get(), 5);
        let all = store.traces(&TraceQuery::new(end_ms(9), 60_000)).unwrap();
        assert_eq!(ids(&all), ["00000004", "00000003"]);
        assert_eq!(metrics.spans.get(), 6);
        assert_eq!(metrics.traces.get(), 2);
        // A rootless trace is keyed by its earliest span: a late, earlier span re-keys it, and
        // it is evicted first.
        store.insert(span(6, 9, Some(1), None, "late")).unwrap();
        store
            .insert(Span {
                trace_id: format!("{:032x}", 6),
                ..span(0, 8, Some(1), None, "late")
            })
            .unwrap();
        assert!(store.trace(&format!("{:032x}", 6)).is_none());
        assert!(store.trace(&format!("{:032x}", 3)).is_some());
        assert_eq!(store.metrics.spans.get(), 6);
        assert_eq!(metrics.evicted.get(), 7);
    }

    #[test]
    fn a_store_of_one_span_keeps_the_newest() {
        let (store, metrics) = store(1);
        rpc_trace(&store, 1);
        assert_eq!(store.metrics.spans.get(), 1);
        assert_eq!(metrics.evicted.get(), 2);
    }

    #[test]
    fn rejects_invalid_spans() {
        let (store, metrics) = store(10);
        let mut s = span(1, 1, None, None, "a");
        s.id = "nope".into();
        assert!(matches!(store.insert(s), Err(SpanError::Id(_))));
        assert_eq!(metrics.rejected.get(), 1);
        assert_eq!(store.metrics.spans.get(), 0);
        // Normalized before validation: case is repaired, not rejected.
        let mut s = span(1, 1, None, None, "A");
        s.name = "GET /X".into();
        store.insert(s).unwrap();
        assert_eq!(store.services(), ["a"]);
        assert_eq!(store.span_names("a"), ["get /x"]);
    }

    #[test]
    fn trace_by_id() {
        let (store, _) = store(100);
        rpc_trace(&store, 7);
        let long = format!("{:032x}", 7);
        let spans = store.trace(&long).unwrap();
        assert_eq!(spans.len(), 3);
        assert!(spans.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        // 128-bit ids with a zero high half are stored in their 64-bit form.
        assert_eq!(spans[0].trace_id, format!("{:016x}", 7));
        assert_eq!(store.trace(&long[16..]).unwrap().len(), 3);
        assert_eq!(store.trace(&long.to_uppercase()).unwrap().len(), 3);
        assert!(store.trace("0000000000000008").is_none());
        assert!(store.trace("7").is_none());
        // A real 128-bit id is found by its low half too.
        let mut s = span(1, 1, None, None, "x");
        s.trace_id = "4e441824ec2b6a44ffdc9bb9a6453df3".into();
        store.insert(s).unwrap();
        assert_eq!(store.trace("ffdc9bb9a6453df3").unwrap().len(), 1);
        assert_eq!(
            store
                .trace("4e441824ec2b6a44ffdc9bb9a6453df3")
                .unwrap()
                .len(),
            1
        );
        assert!(store.trace("0e441824ec2b6a44ffdc9bb9a6453df3").is_none());
        let many = store.traces_by_id(&[
            long.clone(),
            "ffdc9bb9a6453df3".into(),
            long[16..].to_string(),
            "bad".into(),
        ]);
        assert_eq!(many.len(), 2);
    }

    #[test]
    fn traces_newest_first_within_window_and_limit() {
        let (store, _) = store(100);
        for t in 1..=5 {
            rpc_trace(&store, t);
        }
        let q = TraceQuery::new(end_ms(4), 2_500);
        assert_eq!(
            ids(&store.traces(&q).unwrap()),
            ["00000004", "00000003", "00000002"]
        );
        let q = TraceQuery {
            limit: 2,
            ..TraceQuery::new(end_ms(9), 60_000)
        };
        assert_eq!(ids(&store.traces(&q).unwrap()), ["00000005", "00000004"]);
        // endTs is inclusive at ms grain; lookback reaching before the epoch is fine.
        let q = TraceQuery::new(end_ms(1), u64::MAX);
        assert_eq!(ids(&store.traces(&q).unwrap()), ["00000001"]);
        let q = TraceQuery::new(end_ms(1) - 1, u64::MAX);
        assert!(store.traces(&q).unwrap().is_empty());
    }

    #[test]
    fn trace_filters() {
        let (store, _) = store(100);
        rpc_trace(&store, 1);
        let mut tagged = span(2, 1, None, Some(Kind::Server), "other");
        tagged.tags = BTreeMap::from([("http.method".into(), "GET".into())]);
        store.insert(error(tagged)).unwrap();
        let base = TraceQuery::new(end_ms(9), 60_000);
        let run = |q: TraceQuery| ids(&store.traces(&q).unwrap());
        let with = |f: &dyn Fn(&mut TraceQuery)| {
            let mut q = base.clone();
            f(&mut q);
            run(q)
        };
        assert_eq!(
            with(&|q| q.service_name = Some("backend".into())),
            ["00000001"]
        );
        assert!(with(&|q| q.service_name = Some("db".into())).is_empty());
        assert_eq!(
            with(&|q| q.remote_service_name = Some("db".into())),
            ["00000001"]
        );
        // spanName must belong to the service named.
        assert_eq!(with(&|q| q.span_name = Some("op3".into())), ["00000001"]);
        assert!(
            with(&|q| {
                q.service_name = Some("backend".into());
                q.span_name = Some("op1".into());
            })
            .is_empty()
        );
        // Durations: op1 1000 µs, op2 2000, op3 3000 (trace 1); op1 1000 (trace 2).
        assert_eq!(with(&|q| q.min_duration = Some(2500)), ["00000001"]);
        assert_eq!(
            with(&|q| {
                q.min_duration = Some(1500);
                q.max_duration = Some(2500);
            }),
            ["00000001"]
        );
        assert_eq!(
            with(&|q| {
                q.min_duration = Some(1000);
                q.max_duration = Some(1000);
            }),
            ["00000002", "00000001"]
        );
        assert!(
            with(&|q| {
                q.service_name = Some("frontend".into());
                q.min_duration = Some(2000);
            })
            .is_empty()
        );
        assert_eq!(
            with(&|q| q.annotation_query = parse_annotation_query("http.method=GET and error")),
            ["00000002"]
        );
        assert!(
            with(&|q| q.annotation_query = parse_annotation_query("http.method=POST")).is_empty()
        );
        assert_eq!(
            store.traces(&TraceQuery {
                max_duration: Some(1),
                ..base.clone()
            }),
            Err(QueryError::MaxWithoutMin)
        );
    }

    fn links(store: &TraceStore) -> Vec<(String, String, u64, u64)> {
        store
            .dependencies(end_ms(99), 3_600_000)
            .unwrap()
            .into_iter()
            .map(|l| (l.parent, l.child, l.call_count, l.error_count))
            .collect()
    }

    fn link(p: &str, c: &str, calls: u64, errors: u64) -> (String, String, u64, u64) {
        (p.to_string(), c.to_string(), calls, errors)
    }

    #[test]
    fn dependencies_count_each_rpc_once() {
        let (store, _) = store(100);
        rpc_trace(&store, 1);
        rpc_trace(&store, 2);
        assert_eq!(
            links(&store),
            [
                link("backend", "db", 2, 0),
                link("frontend", "backend", 2, 0)
            ]
        );
        assert_eq!(store.dependencies(end_ms(0), 1).unwrap(), Vec::new());
        assert_eq!(store.dependencies(0, 1), Err(QueryError::EndTs));
    }

    #[test]
    fn dependencies_of_shared_spans_and_client_errors() {
        let (store, _) = store(100);
        // B3: the server reuses the client's span id.
        store
            .insert(error(remote(
                span(1, 1, None, Some(Kind::Client), "web"),
                "api",
            )))
            .unwrap();
        let mut server = span(1, 1, None, Some(Kind::Server), "api");
        server.shared = true;
        store.insert(server).unwrap();
        // A server child whose client recorded the error.
        store
            .insert(error(remote(
                span(1, 2, Some(1), Some(Kind::Client), "api"),
                "store",
            )))
            .unwrap();
        store
            .insert(span(1, 3, Some(2), Some(Kind::Server), "store"))
            .unwrap();
        assert_eq!(
            links(&store),
            [link("api", "store", 1, 1), link("web", "api", 1, 1)]
        );
    }

    #[test]
    fn dependencies_of_roots_and_local_spans() {
        let (store, _) = store(100);
        // A root server with an unknown client: no link.
        store
            .insert(span(1, 1, None, Some(Kind::Server), "edge"))
            .unwrap();
        // A root server whose client is named: a link.
        store
            .insert(remote(
                span(2, 1, None, Some(Kind::Server), "edge"),
                "browser",
            ))
            .unwrap();
        // A local span between a server and a client: the client links from the server's service.
        store
            .insert(span(3, 1, None, Some(Kind::Server), "svc"))
            .unwrap();
        store.insert(span(3, 2, Some(1), None, "svc")).unwrap();
        store
            .insert(remote(
                span(3, 3, Some(2), Some(Kind::Client), "svc"),
                "cache",
            ))
            .unwrap();
        // No kind, both sides known: a client.
        store
            .insert(remote(span(4, 1, None, None, "batch"), "queue"))
            .unwrap();
        assert_eq!(
            links(&store),
            [
                link("batch", "queue", 1, 0),
                link("browser", "edge", 1, 0),
                link("svc", "cache", 1, 0)
            ]
        );
    }

    #[test]
    fn dependencies_survive_cycles_and_duplicates() {
        let (store, _) = store(100);
        store
            .insert(span(1, 1, Some(2), Some(Kind::Server), "a"))
            .unwrap();
        store
            .insert(remote(span(1, 2, Some(1), Some(Kind::Client), "b"), "c"))
            .unwrap();
        store
            .insert(span(1, 2, Some(2), Some(Kind::Server), "b"))
            .unwrap();
        let _ = links(&store);
        let mut shared = span(1, 3, Some(3), Some(Kind::Server), "d");
        shared.shared = true;
        store.insert(shared).unwrap();
        let _ = links(&store);
    }

    #[test]
    fn annotation_query_terms() {
        assert_eq!(
            parse_annotation_query(" http.path=/a=b and  error and "),
            [
                Term::Tag {
                    key: "http.path".into(),
                    value: "/a=b".into()
                },
                Term::Key("error".into())
            ]
        );
        assert!(parse_annotation_query("").is_empty());
    }
}
