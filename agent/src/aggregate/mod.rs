//! From exchanges to metrics and spans: per-service RED histograms and the service graph, with
//! bounded label cardinality; trace context and trace assembly.
pub mod admission;
pub mod context;
pub mod http;
pub mod series;
pub mod spans;
pub mod traces;
