//! What happens to an observed exchange, composed once by the app: every end goes to its
//! protocol's request metrics at once, then to the pairing of both ends, whose output feeds the
//! service graph and the tracer.
//!
//! ```text
//! Observed ─► protocol::Red (RED per protocol)
//!          ├► aggregate::operations (per service and operation, last minutes: the web page)
//!          └► exchange::Pairing ─► aggregate::graph::ServiceGraph
//!                                └► trace::Tracer ─► exporters (store, Zipkin, OTLP)
//! ```

use std::sync::Arc;

use crate::{
    aggregate::{graph::ServiceGraph, operations::Operations},
    exchange::{ConnectFailure, ExchangeSink, Observed, Paired, Pairing},
    metrics::Registry,
    protocol::{Observation, Red},
    trace::Tracer,
};

pub struct Pipeline {
    red: Red,
    operations: Operations,
    pairing: Pairing,
    graph: ServiceGraph,
    tracer: Option<Tracer>,
    registry: Arc<Registry>,
    series_ttl_ns: u64,
    /// One buffer for what the pairing hands over, reused.
    paired: Vec<Paired>,
}

impl Pipeline {
    pub fn new(
        registry: Arc<Registry>,
        red: Red,
        operations: Operations,
        graph: ServiceGraph,
        tracer: Option<Tracer>,
        series_ttl_ns: u64,
    ) -> Self {
        Pipeline {
            pairing: Pairing::new(&registry),
            red,
            operations,
            graph,
            tracer,
            registry,
            series_ttl_ns,
            paired: Vec::new(),
        }
    }

    fn deliver(&mut self, now_ns: u64) {
        for paired in self.paired.drain(..) {
            self.graph.observe(&paired, now_ns);
            if let Some(tracer) = &mut self.tracer {
                tracer.add(paired);
            }
        }
    }
}

impl ExchangeSink for Pipeline {
    fn exchange(&mut self, end: Observed) {
        self.red.observe(
            &end.exchange,
            &Observation {
                side: end.side,
                service: &end.names.service,
                pod: end.names.pod.as_ref(),
                server_address: end.names.server_ip.as_ref(),
                server: end.server(),
                now_ns: end.now_ns,
            },
        );
        self.operations.observe(&end);
        let now_ns = end.now_ns;
        self.pairing.add(end, &mut self.paired);
        self.deliver(now_ns);
    }

    fn connect_failed(&mut self, failure: ConnectFailure) {
        self.graph.connect_failed(&failure);
    }

    fn tick(&mut self, now_ns: u64) {
        self.pairing.tick(now_ns, &mut self.paired);
        self.deliver(now_ns);
        self.red.expire(now_ns, self.series_ttl_ns, &self.registry);
        self.operations.expire(now_ns);
        self.graph
            .expire(now_ns, self.series_ttl_ns, &self.registry);
        if let Some(tracer) = &mut self.tracer {
            tracer.tick(now_ns);
        }
    }
}
