//! Requests per service and operation over the last minutes (`metrics::window`), for the web
//! page's RED view: one key per service, protocol, side and operation, the operation being the
//! protocol's span name (`get /users/*`, `SELECT orders`, `GET`). Nothing here names a protocol:
//! a protocol added to the registry shows up with its own name and span names.

use std::sync::{Arc, Mutex};

use crate::{
    exchange::Observed,
    metrics::{
        Registry,
        series::same_str,
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

/// An [`OperationKey`] borrowed: hashed alike (the same fields, in the same order), so that an
/// observation of a known key allocates nothing.
#[derive(Hash)]
struct OperationView<'a> {
    service: &'a str,
    protocol: &'static str,
    side: Side,
    operation: &'a str,
}

impl hashbrown::Equivalent<OperationKey> for OperationView<'_> {
    fn equivalent(&self, key: &OperationKey) -> bool {
        same_str(self.service, &key.service)
            && self.protocol == key.protocol
            && self.side == key.side
            && *self.operation == *key.operation
    }
}

/// The table, shared with the endpoint that reads it.
pub type OperationTable = Arc<Mutex<Windowed<OperationKey>>>;

/// Feeds every observed end into the shared table.
pub struct Operations {
    table: OperationTable,
    /// The span name of the end being observed, reused.
    name: String,
}

impl Operations {
    pub fn new(registry: &Registry, duration_buckets: &[f64]) -> Self {
        Operations {
            table: Arc::new(Mutex::new(Windowed::new(
                duration_buckets,
                MAX_OPERATIONS,
                rejected_counter(registry, "operations"),
            ))),
            name: String::new(),
        }
    }

    pub fn table(&self) -> OperationTable {
        self.table.clone()
    }

    pub fn observe(&mut self, end: &Observed) {
        let ex = &end.exchange;
        self.name.clear();
        ex.attributes.span_name_into(&mut self.name);
        let view = OperationView {
            service: &end.names.service,
            protocol: ex.attributes.protocol().name(),
            side: end.side,
            operation: &self.name,
        };
        let seconds = ex.end_ns.saturating_sub(ex.start_ns) as f64 / 1e9;
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_by(
                &view,
                || OperationKey {
                    service: end.names.service.clone(),
                    protocol: view.protocol,
                    side: end.side,
                    operation: view.operation.into(),
                },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        exchange::ExchangeNames,
        metrics::DEFAULT_DURATION_BUCKETS,
        protocol::{Attributes, Exchange, Outcome, context::Found, http1},
    };

    fn end(side: Side, path: &str, status: u16, now_ns: u64) -> Observed {
        Observed {
            exchange: Exchange {
                start_ns: now_ns - 2_000_000,
                end_ns: now_ns,
                outcome: match status {
                    500.. => Outcome::ServerError,
                    400.. => Outcome::ClientError,
                    _ => Outcome::Ok,
                },
                truncated: false,
                request_bytes: 0,
                response_bytes: 0,
                context: Found::None,
                attributes: Attributes::Http1(http1::Attributes {
                    version: http1::Version::Http11,
                    method: "GET".into(),
                    path: path.into(),
                    status: Some(status),
                }),
            },
            side,
            names: Arc::new(ExchangeNames {
                service: "api".into(),
                executable: "api".into(),
                peer_service: None,
                pod: None,
                peer_k8s: None,
                server_ip: None,
            }),
            pid: 1,
            tid: 1,
            local: "10.0.0.1:80".parse().unwrap(),
            remote: "10.0.0.2:5000".parse().unwrap(),
            connection: (
                "10.0.0.2:5000".parse().unwrap(),
                "10.0.0.1:80".parse().unwrap(),
            ),
            in_server_process: true,
            key: None,
            now_ns,
        }
    }

    #[test]
    fn operations_by_route_side_and_protocol() {
        let mut ops = Operations::new(&Registry::default(), &DEFAULT_DURATION_BUCKETS);
        let t = 10_000_000_000;
        for i in 0..5 {
            ops.observe(&end(Side::Server, &format!("/users/{i}"), 200, t));
        }
        ops.observe(&end(Side::Server, "/fail", 500, t));
        // The client's view of a 500 is a failure too; a 404 is not (the request's fault).
        ops.observe(&end(Side::Client, "/fail", 500, t));
        ops.observe(&end(Side::Server, "/missing", 404, t));
        let table = ops.table();
        let table = table.lock().unwrap();
        let mut got: Vec<(String, &str, Side, u64, u64)> = table
            .summaries(t, 1)
            .into_iter()
            .map(|(k, s)| {
                (
                    k.operation.to_string(),
                    k.protocol,
                    k.side,
                    s.requests,
                    s.failed,
                )
            })
            .collect();
        got.sort_by(|a, b| (&a.0, a.2 as u8).cmp(&(&b.0, b.2 as u8)));
        assert_eq!(
            got,
            [
                ("get /fail".to_string(), "http", Side::Client, 1, 1),
                ("get /fail".to_string(), "http", Side::Server, 1, 1),
                ("get /missing".to_string(), "http", Side::Server, 1, 0),
                ("get /users/*".to_string(), "http", Side::Server, 5, 0),
            ]
        );
    }
}
