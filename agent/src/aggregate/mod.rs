//! From exchanges to metrics: per-service RED histograms and the service graph, with bounded
//! label cardinality.
pub mod http;
pub mod series;
