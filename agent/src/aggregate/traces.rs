//! From exchanges to exported spans: assembly (see `spans`), sampling, then the built-in trace
//! store and, when configured, the Zipkin sink. Never blocks: the sink's queue is bounded and
//! drops with a count when full.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use crate::{
    aggregate::{
        admission::StoreAdmission,
        spans::{Assembled, SpanAssembler, SpanInput},
    },
    export::zipkin::{sink::ZipkinSink, store::TraceStore},
};

/// What the tracer counts (registered by `Metrics`).
#[derive(Clone, Default)]
pub struct TraceCounters {
    pub unlinked: Counter,
    pub context_invalid: Counter,
    /// Not kept: the context said not sampled, or the ratio sampler left the trace out.
    pub not_sampled: Counter,
    /// Sampled, but above the store's admission rate (exported all the same to a collector).
    pub store_declined: Counter,
}

pub struct Tracer {
    assembler: SpanAssembler,
    store: Arc<TraceStore>,
    sink: Option<ZipkinSink>,
    counters: TraceCounters,
}

impl Tracer {
    pub fn new(
        store: Arc<TraceStore>,
        sink: Option<ZipkinSink>,
        sampling_ratio: f64,
        keep_errors: bool,
        store_rate: u64,
        counters: TraceCounters,
    ) -> Self {
        let seed = crate::app::monotonic_ns() ^ (u64::from(std::process::id()) << 32);
        let mut assembler = SpanAssembler::new(seed, sampling_ratio, keep_errors)
            .with_outputs(sink.is_some(), StoreAdmission::new(store_rate));
        assembler.set_epoch_offset(epoch_offset_ns());
        Tracer {
            assembler,
            store,
            sink,
            counters,
        }
    }

    pub fn add(&mut self, input: SpanInput) {
        let mut out = empty();
        self.assembler.add(input, &mut out);
        self.deliver(out);
    }

    pub fn tick(&mut self, now_ns: u64) {
        self.assembler.set_epoch_offset(epoch_offset_ns());
        let mut out = empty();
        self.assembler.tick(now_ns, &mut out);
        self.deliver(out);
    }

    fn deliver(&mut self, out: Assembled) {
        // Skip the zeros: each is an atomic read-modify-write, and most exchanges add none.
        for (counter, n) in [
            (&self.counters.unlinked, out.unlinked),
            (&self.counters.context_invalid, out.invalid_context),
            (&self.counters.not_sampled, out.not_sampled),
            (&self.counters.store_declined, out.store_declined),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        if let Some(sink) = &self.sink {
            for span in out.export_only {
                let _ = sink.offer(span);
            }
        }
        for span in out.spans {
            if let Some(sink) = &self.sink {
                // A refused span is counted by the sink (meshtap_spans_dropped_total).
                let _ = sink.offer(span.clone());
            }
            // A span the store rejects is counted by the store.
            let _ = self.store.insert(span);
        }
    }
}

fn empty() -> Assembled {
    Assembled::default()
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC in ns: converts the kernel's `bpf_ktime_get_ns` timestamps
/// to wall-clock time. Read back to back; refreshed on every tick so that clock steps (NTP)
/// are followed.
pub fn epoch_offset_ns() -> i128 {
    let mono = crate::app::monotonic_ns() as i128;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    wall - mono
}
