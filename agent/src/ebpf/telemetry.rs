//! The kernel side's and the reader's self-metrics: events delivered and lost, decode errors,
//! kernel map health and the kernel's per-program counters.

use std::sync::{Mutex, atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use crate::metrics::Registry;

/// Metric names (without the `_total` suffix prometheus-client appends to counters).
pub mod name {
    pub const EVENTS: &str = "meshtap_events";
    pub const EVENTS_LOST: &str = "meshtap_events_lost";
    pub const DECODE_ERRORS: &str = "meshtap_decode_errors";
    pub const MAP_INSERT_FAILURES: &str = "meshtap_map_insert_failures";
    pub const MAP_ENTRIES: &str = "meshtap_map_entries";
    pub const RETRANSMITS_UNTRACKED: &str = "meshtap_retransmits_untracked";
    pub const TLS_PAYLOAD_SKIPPED: &str = "meshtap_tls_payload_skipped_events";
    pub const HTTP2_CONTINUATIONS_FAILED: &str = "meshtap_http2_capture_continuations_failed";
    pub const TLS_PLAINTEXT_UNTIED: &str = "meshtap_tls_plaintext_untied_events";
    pub const TLS_UNMATCHED_RETURNS: &str = "meshtap_tls_unmatched_returns";
    pub const PROGRAMS_ATTACHED: &str = "meshtap_programs_attached";
    pub const PROGRAM_MISSES: &str = "meshtap_ebpf_program_misses";
    pub const PROGRAM_RUNS: &str = "meshtap_ebpf_program_runs";
    pub const PROGRAM_RUN_SECONDS: &str = "meshtap_ebpf_program_run_seconds";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    pub stage: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: String,
}

/// What the kernel programs and the reader count.
#[derive(Default)]
pub struct KernelMetrics {
    pub events: Family<KindLabels, Counter>,
    pub events_lost: Family<LostLabels, Counter>,
    pub decode_errors: Counter,
    pub map_insert_failures: Family<MapLabels, Counter>,
    pub map_entries: Family<MapLabels, Gauge>,
    pub retransmits_untracked: Counter,
    pub tls_payload_skipped: Counter,
    pub http2_continuations_failed: Counter,
    pub tls_plaintext_untied: Counter,
    pub tls_unmatched_returns: Counter,
    pub programs_attached: Gauge,
    pub program_misses: Family<ProgramLabels, Counter>,
    pub program_runs: Family<ProgramLabels, Counter>,
    pub program_run_seconds: Family<ProgramLabels, Counter<f64, AtomicU64>>,
    /// Last kernel counter values seen, so kernel totals become counter increments.
    kernel_seen: Mutex<Vec<u64>>,
}

impl KernelMetrics {
    pub fn new(registry: &Registry) -> Self {
        let m = KernelMetrics::default();
        registry.register(
            name::EVENTS,
            "Kernel events delivered to the agent, by kind",
            m.events.clone(),
        );
        registry.register(
            name::EVENTS_LOST,
            "Events lost, by stage (kernel: ring buffer full; userspace_queue: processing queue full) and kind",
            m.events_lost.clone(),
        );
        registry.register(
            name::DECODE_ERRORS,
            "Ring-buffer records that could not be decoded",
            m.decode_errors.clone(),
        );
        registry.register(
            name::MAP_INSERT_FAILURES,
            "Failed inserts into kernel maps (map full or out of memory), by map",
            m.map_insert_failures.clone(),
        );
        registry.register(
            name::MAP_ENTRIES,
            "Entries in kernel maps, by map",
            m.map_entries.clone(),
        );
        registry.register(
            name::RETRANSMITS_UNTRACKED,
            "Retransmits on sockets the agent does not track (opened before it, idle since)",
            m.retransmits_untracked.clone(),
        );
        registry.register(
            name::TLS_PAYLOAD_SKIPPED,
            "Data events of TLS connections the kernel sent without payload: after the first TLS record nothing can be parsed, so nothing is copied (their bytes are still counted)",
            m.tls_payload_skipped.clone(),
        );
        registry.register(
            name::HTTP2_CONTINUATIONS_FAILED,
            "HTTP/2 syscalls whose capture stopped early: the ring buffer was full (back-pressure), the next chunk's tail call failed, or its bytes could not be read. The rest of the syscall is skipped by count (DATA payload, mostly); a frame header in it loses the parser's framing, counted in meshtap_parse_errors_total{protocol=\"http2\"}",
            m.http2_continuations_failed.clone(),
        );
        registry.register(
            name::TLS_PLAINTEXT_UNTIED,
            "TLS reads and writes that moved plaintext the kernel did not report: their SSL object was tied to no connection (no socket syscall inside a call on it, and a library fed from memory whose handshake was not seen back to back with its ClientHello), or their connection was not tracked",
            m.tls_plaintext_untied.clone(),
        );
        registry.register(
            name::TLS_UNMATCHED_RETURNS,
            "Returns of probed TLS calls whose entry was not seen (probes attached during the call, or the call table full)",
            m.tls_unmatched_returns.clone(),
        );
        registry.register(
            name::PROGRAMS_ATTACHED,
            "eBPF programs attached",
            m.programs_attached.clone(),
        );
        registry.register(
            name::PROGRAM_MISSES,
            "Runs of an eBPF program the kernel skipped because a BPF program was already running on that CPU (its recursion_misses): the events of those runs were not seen. inet_sock_set_state and inet_sock_set_state_backup, tcp_retransmit_skb and tcp_retransmit_skb_backup each handle what the other skipped",
            m.program_misses.clone(),
        );
        registry.register(
            name::PROGRAM_RUNS,
            "Runs of an eBPF program, counted only while BPF run-time statistics are on (--ebpf-stats, or sysctl kernel.bpf_stats_enabled=1)",
            m.program_runs.clone(),
        );
        registry.register(
            name::PROGRAM_RUN_SECONDS,
            "Time spent in an eBPF program, counted only while BPF run-time statistics are on (--ebpf-stats, or sysctl kernel.bpf_stats_enabled=1)",
            m.program_run_seconds.clone(),
        );
        m
    }

    /// Adds the growth of a monotonically increasing kernel counter (slot `index`) to `counter`.
    pub fn kernel_counter(&self, index: usize, total: u64, counter: &Counter) {
        let mut seen = self.kernel_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() <= index {
            seen.resize(index + 1, 0);
        }
        let delta = total.saturating_sub(seen[index]);
        seen[index] = total;
        if delta > 0 {
            counter.inc_by(delta);
        }
    }

    /// `meshtap_map_insert_failures_total{map}` of one map.
    pub fn insert_failures(&self, map: &str) -> Counter {
        self.map_insert_failures.get_or_create_owned(&MapLabels {
            map: map.to_string(),
        })
    }
}
