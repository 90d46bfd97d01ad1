//! The metric registry and its encoding, and what every component's metrics share: histogram
//! buckets, the overflow label value, bounded series (`series`) and the two self-metrics of
//! bounded cardinality (`meshtap_metric_series_overflow_total`,
//! `meshtap_metric_series_expired_total`).
//!
//! Each component declares its own families in its own module (its names, help texts and label
//! sets) and registers them here once, when the app builds it; this module names no component.

pub mod series;
pub mod window;

use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering::Relaxed},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Metric,
};

/// Names of the metrics this module owns (without the `_total` suffix prometheus-client appends
/// to counters).
pub mod name {
    pub const SERIES_OVERFLOW: &str = "meshtap_metric_series_overflow";
    pub const SERIES_EXPIRED: &str = "meshtap_metric_series_expired";
}

/// OpenTelemetry's default explicit bucket boundaries for durations, in seconds.
pub const DEFAULT_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Label value that replaces a label set beyond the series cap.
pub const OVERFLOW: &str = "__overflow__";

/// Builds histograms with a fixed set of buckets (a nameable `MetricConstructor`).
#[derive(Clone)]
pub struct Buckets(std::sync::Arc<Vec<f64>>);

impl Buckets {
    pub fn new(bounds: &[f64]) -> Self {
        Buckets(std::sync::Arc::new(bounds.to_vec()))
    }
}

impl prometheus_client::metrics::family::MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

pub type Histograms<L> = Family<L, Histogram, Buckets>;

/// Writes one `name="value"` label.
pub fn encode_label(encoder: &mut LabelSetEncoder, name: &str, value: &str) -> std::fmt::Result {
    use prometheus_client::encoding::EncodeLabel;
    (name, value).encode(encoder.encode_label())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabels {
    pub metric: String,
}

/// The namespaces of an edge's two ends, when known (`client_namespace`, `server_namespace`;
/// absent otherwise).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeNamespaces {
    pub client: Option<String>,
    pub server: Option<String>,
}

impl EncodeLabelSet for EdgeNamespaces {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        if let Some(ns) = &self.client {
            encode_label(encoder, "client_namespace", ns)?;
        }
        if let Some(ns) = &self.server {
            encode_label(encoder, "server_namespace", ns)?;
        }
        Ok(())
    }
}

/// Every family, registered once at start-up by the component that owns it; encoded on each
/// scrape.
pub struct Registry {
    registry: Mutex<prometheus_client::registry::Registry>,
    /// Families several components record into (see [`family`](Self::family)), by name.
    shared: Mutex<std::collections::HashMap<String, Box<dyn std::any::Any + Send>>>,
    /// `meshtap_metric_series_overflow_total{metric}`: observations folded into the overflow
    /// series, for every bounded family.
    pub series_overflow: Family<MetricLabels, Counter>,
    /// `meshtap_metric_series_expired_total{metric}`: label sets removed after the series TTL.
    pub series_expired: Family<MetricLabels, Counter>,
    /// Length of the last encoding: the next one starts at about that capacity instead of
    /// doubling its way up (a scrape of a high-cardinality node is megabytes).
    last_encoded_len: AtomicUsize,
}

impl Default for Registry {
    fn default() -> Self {
        let r = Registry {
            registry: Mutex::new(prometheus_client::registry::Registry::default()),
            shared: Mutex::new(std::collections::HashMap::new()),
            series_overflow: Family::default(),
            series_expired: Family::default(),
            last_encoded_len: AtomicUsize::new(0),
        };
        r.register(
            name::SERIES_OVERFLOW,
            "Observations folded into the __overflow__ series because a metric reached its series cap",
            r.series_overflow.clone(),
        );
        r.register(
            name::SERIES_EXPIRED,
            "Label sets removed because they were not updated for --series-ttl-secs",
            r.series_expired.clone(),
        );
        r
    }
}

impl Registry {
    /// Registers a family (or a single metric) under `name`.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// The family `name`, registered by whichever component asks first: components that record
    /// into one family (every database protocol into `db_client_operation_duration_seconds`)
    /// each get a handle on the same one.
    ///
    /// # Panics
    /// If `name` was registered before with another type: a programming error.
    pub fn family<M: Metric + Clone>(&self, name: &str, help: &str, make: impl FnOnce() -> M) -> M {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = shared.get(name) {
            return existing
                .downcast_ref::<M>()
                .unwrap_or_else(|| panic!("metric {name} registered twice with different types"))
                .clone();
        }
        let metric = make();
        self.register(name, help, metric.clone());
        shared.insert(name.to_string(), Box::new(metric.clone()));
        metric
    }

    /// Lends the underlying registry to a component that registers itself on one
    /// (`register(&self, &mut prometheus_client::registry::Registry)`).
    pub fn register_with(&self, f: impl FnOnce(&mut prometheus_client::registry::Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The overflow counter of family `metric`.
    pub fn overflow_counter(&self, metric: &str) -> Counter {
        self.series_overflow.get_or_create_owned(&MetricLabels {
            metric: metric.to_string(),
        })
    }

    /// Counts `n` label sets of family `metric` removed after the series TTL.
    pub fn count_expired(&self, metric: &str, n: u64) {
        if n > 0 {
            self.series_expired
                .get_or_create(&MetricLabels {
                    metric: metric.to_string(),
                })
                .inc_by(n);
        }
    }

    /// The text exposition format of every registered family.
    pub fn encode(&self) -> String {
        let last = self.last_encoded_len.load(Relaxed);
        let mut out = String::with_capacity(last + last / 8);
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Encoding into a String cannot fail: fmt::Write for String is infallible.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        self.last_encoded_len.store(out.len(), Relaxed);
        out
    }
}
