//! Exporters: the HTTP endpoint (Prometheus scrape, health, the query APIs, the web page; its TLS
//! and token in `security`) and the span
//! exporters. Every span exporter converts from the agent's own `trace::span::Span`, owns its
//! config section and its self-metrics, and implements `trace::SpanExporter`.

pub mod delivery;
pub mod http;
pub mod otlp;
pub mod peer;
pub mod security;
pub mod web;
pub mod zipkin;
