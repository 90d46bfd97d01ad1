//! Requests per service and operation over the last minutes (`metrics::window`), for the web
//! page's RED view: one key per service, protocol, side and operation, the operation being the
//! protocol's span name (`get /users/*`, `SELECT orders`, `GET`). Nothing here names a protocol:
//! a protocol added to the registry shows up with its own name and span names.

use std::sync::{Arc, Mutex};

use crate::{
    exchange::Observed,
    metrics::{
        Registry,
        window::{Windowed, rejected_counter},
    },
    protocol::Side,
};

/// Keys (service, protocol, side, operation) kept at most.
pub const MAX_OPERATIONS: usize = 4096;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct OperationKey {
    pub service: Arc<str>,
    pub protocol: &'static str,
    pub side: Side,
    pub operation: Box<str>,
}

/// The table, shared with the endpoint that reads it.
pub type OperationTable = Arc<Mutex<Windowed<OperationKey>>>;

/// Feeds every observed end into the shared table.
pub struct Operations {
    table: OperationTable,
}

impl Operations {
    pub fn new(registry: &Registry, duration_buckets: &[f64]) -> Self {
        Operations {
            table: Arc::new(Mutex::new(Windowed::new(
                duration_buckets,
                MAX_OPERATIONS,
                rejected_counter(registry, "operations"),
            ))),
        }
    }

    pub fn table(&self) -> OperationTable {
        self.table.clone()
    }

    pub fn observe(&self, end: &Observed) {
        let ex = &end.exchange;
        let key = OperationKey {
            service: end.names.service.clone(),
            protocol: ex.attributes.protocol().name(),
            side: end.side,
            operation: ex.attributes.span_name().into_boxed_str(),
        };
        let seconds = ex.end_ns.saturating_sub(ex.start_ns) as f64 / 1e9;
        self.table.lock().unwrap_or_else(|e| e.into_inner()).record(
            key,
            end.now_ns,
            Some(seconds),
            ex.failed(end.side),
        );
    }

    pub fn expire(&self, now_ns: u64) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(now_ns);
    }
}
