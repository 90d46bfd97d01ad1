//! From exchanges to exported spans: assembly (`assembly`: ids, links, trace ids), sampling,
//! store admission (`admission`), then every span exporter (the built-in store and the
//! collectors). Never blocks: exporters queue (bounded) and count what they drop.

pub mod admission;
pub mod assembly;
pub mod remote;
pub mod span;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

use crate::{
    exchange::Paired,
    metrics::Registry,
    protocol::SpanOptions,
    trace::{
        admission::StoreAdmission,
        assembly::{Assembled, InstrumentedSpans, SpanAssembler},
        span::Span,
    },
};

/// A destination for finished spans: a collector sink or the built-in store. Implemented by
/// each exporter (`export::*`), which converts from [`Span`] to its own wire model.
///
/// `export` is called from the processing stage for every batch of sampled spans and must never
/// block nor wait: an exporter queues (bounded) and counts what it drops.
pub trait SpanExporter: Send {
    /// Short stable name, for logs (`zipkin`, `otlp`, `store`).
    fn name(&self) -> &'static str;
    /// Takes a batch of finished spans.
    fn export(&mut self, spans: &[Span]);
}

/// Metric names (without the `_total` suffix prometheus-client appends to counters).
pub mod name {
    pub const SPANS_UNLINKED: &str = "meshtap_spans_unlinked";
    pub const TRACE_CONTEXT_INVALID: &str = "meshtap_trace_context_invalid";
    pub const SPANS_NOT_SAMPLED: &str = "meshtap_spans_not_sampled";
    pub const STORE_DECLINED: &str = "meshtap_trace_store_declined_spans";
    pub const SPANS_UNMERGED: &str = "meshtap_spans_unmerged";
    pub const INSTRUMENTED_SKIPPED: &str = "meshtap_spans_instrumented_skipped";
    pub const INSTRUMENTED_UNTRACKED: &str = "meshtap_instrumented_processes_untracked";
    pub const SPANS_LINKED_REMOTE: &str = "meshtap_spans_linked_remote";
    pub const PEER_LOOKUPS_DROPPED: &str = "meshtap_peer_lookups_dropped";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnmergedLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnlinkedLabels {
    pub reason: &'static str,
}

/// What the tracer counts.
#[derive(Clone, Default)]
pub struct TraceCounters {
    /// `reason="local"`: the parent expected on this node was not found.
    pub unlinked: Counter,
    /// `reason="remote"`: the client's node did not give its context within the link wait.
    pub unlinked_remote: Counter,
    /// SERVER spans linked to the CLIENT span of another node.
    pub linked_remote: Counter,
    /// Lookups the queue to the peer client could not take.
    pub lookups_dropped: Counter,
    pub context_invalid: Counter,
    /// Not kept: the context said not sampled, or the ratio sampler left the trace out.
    pub not_sampled: Counter,
    /// Sampled, but above the store's admission rate (exported all the same to a collector).
    pub store_declined: Counter,
    /// Application traces not joined: `emitted`, `other_trace` (see `assembly`).
    pub unmerged_emitted: Counter,
    pub unmerged_other_trace: Counter,
    pub instrumented_skipped: Counter,
    pub instrumented_untracked: Counter,
}

impl TraceCounters {
    pub fn new(registry: &Registry) -> Self {
        let c = TraceCounters::default();
        let unlinked: Family<UnlinkedLabels, Counter> = Family::default();
        registry.register(
            name::SPANS_UNLINKED,
            "Spans whose parent was expected but not found, by reason (local: on this node: async runtimes, worker pools, parents slower than the link window; remote: the agent of the client's node did not give the client's context within the link window)",
            unlinked.clone(),
        );
        let c = TraceCounters {
            unlinked: unlinked.get_or_create_owned(&UnlinkedLabels { reason: "local" }),
            unlinked_remote: unlinked.get_or_create_owned(&UnlinkedLabels { reason: "remote" }),
            ..c
        };
        registry.register(
            name::SPANS_LINKED_REMOTE,
            "SERVER spans linked to the CLIENT span of another node through its agent (no trace context in the request)",
            c.linked_remote.clone(),
        );
        registry.register(
            name::PEER_LOOKUPS_DROPPED,
            "SERVER spans not looked up on their client's node because the queue to the peer agents was full (they stay roots)",
            c.lookups_dropped.clone(),
        );
        registry.register(
            name::TRACE_CONTEXT_INVALID,
            "Requests whose traceparent or B3 headers were malformed (ignored: the span starts a new trace)",
            c.context_invalid.clone(),
        );
        registry.register(
            name::SPANS_NOT_SAMPLED,
            "Spans not kept: their trace context said not sampled, or the sampling ratio left them out",
            c.not_sampled.clone(),
        );
        registry.register(
            name::STORE_DECLINED,
            "Sampled spans the built-in trace store did not take: their trace came above its admission rate (--trace-store-rate); a collector still gets them",
            c.store_declined.clone(),
        );
        let unmerged: Family<UnmergedLabels, Counter> = Family::default();
        registry.register(
            name::SPANS_UNMERGED,
            "Requests whose application started a trace of its own that meshtap's spans could not join, by reason (emitted: the SERVER span they were under had been emitted already; other_trace: the spans above belong to another trace, which keeps them)",
            unmerged.clone(),
        );
        let c = TraceCounters {
            unmerged_emitted: unmerged.get_or_create_owned(&UnmergedLabels { reason: "emitted" }),
            unmerged_other_trace: unmerged.get_or_create_owned(&UnmergedLabels {
                reason: "other_trace",
            }),
            ..c
        };
        registry.register(
            name::INSTRUMENTED_SKIPPED,
            "Spans not emitted because their process's own tracer reports them (--instrumented-spans skip)",
            c.instrumented_skipped.clone(),
        );
        registry.register(
            name::INSTRUMENTED_UNTRACKED,
            "Processes seen sending trace contexts they created but not remembered as instrumented: 4096 were",
            c.instrumented_untracked.clone(),
        );
        c
    }
}

/// Tracer settings.
#[derive(Clone, Debug)]
pub struct TracerConfig {
    pub sampling_ratio: f64,
    pub keep_errors: bool,
    /// Traces per second the store admits after its burst; 0 = every trace.
    pub store_rate: u64,
    pub span_options: SpanOptions,
    pub instrumented_spans: InstrumentedSpans,
}

pub struct Tracer {
    assembler: SpanAssembler,
    /// The built-in store, which takes what `admission` lets in.
    store: Option<Box<dyn SpanExporter>>,
    /// Collectors: every sampled span.
    collectors: Vec<Box<dyn SpanExporter>>,
    counters: TraceCounters,
    /// Cross-node linking (see `remote`), when on.
    remote: Option<Remote>,
    /// The latest exchange arrival time seen (event time).
    now_ns: u64,
}

/// The tracer's end of the link to the other agents.
struct Remote {
    lookups: tokio::sync::mpsc::Sender<crate::exchange::RequestKey>,
    answers: tokio::sync::mpsc::Receiver<(crate::exchange::RequestKey, remote::RemoteContext)>,
    published: std::sync::Arc<remote::Published>,
}

impl Tracer {
    pub fn new(
        config: &TracerConfig,
        store: Option<Box<dyn SpanExporter>>,
        collectors: Vec<Box<dyn SpanExporter>>,
        counters: TraceCounters,
    ) -> Self {
        let seed = crate::clock::monotonic_ns() ^ (u64::from(std::process::id()) << 32);
        let mut assembler = SpanAssembler::new(seed, config.sampling_ratio, config.keep_errors)
            .with_outputs(
                !collectors.is_empty(),
                StoreAdmission::new(config.store_rate),
            )
            .with_span_options(config.span_options)
            .with_instrumented_spans(config.instrumented_spans);
        assembler.set_epoch_offset(crate::clock::epoch_offset_ns());
        Tracer {
            assembler,
            store,
            collectors,
            counters,
            remote: None,
            now_ns: 0,
        }
    }

    /// Links spans across nodes through `link` (see `remote`).
    pub fn with_remote(mut self, link: remote::RemoteLink) -> Self {
        self.assembler.set_remote(link.covers);
        self.remote = Some(Remote {
            lookups: link.lookups,
            answers: link.answers,
            published: link.published,
        });
        self
    }

    pub fn add(&mut self, paired: Paired) {
        self.now_ns = self.now_ns.max(match &paired {
            Paired::Both { client, .. } => client.now_ns,
            Paired::Alone { end, .. } => end.now_ns,
        });
        let mut out = Assembled::default();
        self.take_answers(&mut out);
        self.assembler.add(paired, &mut out);
        self.deliver(out);
    }

    pub fn tick(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        self.assembler
            .set_epoch_offset(crate::clock::epoch_offset_ns());
        let mut out = Assembled::default();
        self.take_answers(&mut out);
        self.assembler.tick(now_ns, &mut out);
        self.deliver(out);
    }

    /// What the other agents answered since the last call.
    fn take_answers(&mut self, out: &mut Assembled) {
        let Some(remote) = &mut self.remote else {
            return;
        };
        while let Ok((key, context)) = remote.answers.try_recv() {
            self.assembler.resolve_remote(key, context, out);
        }
    }

    fn deliver(&mut self, out: Assembled) {
        if let Some(remote) = &self.remote {
            for key in &out.lookups {
                if remote.lookups.try_send(*key).is_err() {
                    self.counters.lookups_dropped.inc();
                }
            }
            remote.published.insert(&out.published, self.now_ns);
        }
        // Skip the zeros: each is an atomic read-modify-write, and most exchanges add none.
        for (counter, n) in [
            (&self.counters.unlinked, out.unlinked),
            (&self.counters.unlinked_remote, out.unlinked_remote),
            (&self.counters.linked_remote, out.linked_remote),
            (&self.counters.context_invalid, out.invalid_context),
            (&self.counters.not_sampled, out.not_sampled),
            (&self.counters.store_declined, out.store_declined),
            (&self.counters.unmerged_emitted, out.unmerged_emitted),
            (
                &self.counters.unmerged_other_trace,
                out.unmerged_other_trace,
            ),
            (
                &self.counters.instrumented_skipped,
                out.instrumented_skipped,
            ),
            (
                &self.counters.instrumented_untracked,
                out.instrumented_untracked,
            ),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        // A span an exporter refuses is counted by that exporter.
        for collector in &mut self.collectors {
            if !out.spans.is_empty() {
                collector.export(&out.spans);
            }
            if !out.export_only.is_empty() {
                collector.export(&out.export_only);
            }
        }
        if let Some(store) = &mut self.store
            && !out.spans.is_empty()
        {
            store.export(&out.spans);
        }
    }
}
