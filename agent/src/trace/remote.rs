//! Linking across nodes: what the tracer shares with the agents of other nodes (see
//! `export::peer` for the exchange itself).
//!
//! A CLIENT span whose server is not on this node is *published*: its request's
//! [`RequestKey`] with its trace id, span id and sampling decision, kept for a while in
//! [`Published`], which the other agents read. A SERVER span whose client is on a node that a
//! peer agent serves (and whose request carried no trace context) is held, at most the link
//! wait, while the tracer *looks up* its key there; the answer makes it (and everything linked
//! under it on this node) part of the client's trace, a child of the client's span, with the
//! client's sampling decision.

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::sync::{Notify, mpsc};

use crate::{exchange::RequestKey, fast::Map, metrics::Registry};

/// What the client's node knows of a request it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteContext {
    pub trace_id: u128,
    pub span_id: u64,
    /// The trace's sampling decision on the client's node (debug traces say sampled).
    pub sampled: bool,
}

/// Default bound of [`Published`].
pub const MAX_PUBLISHED: usize = 65_536;
/// How long a published context is kept: beyond any wait of the asking side.
pub const PUBLISHED_TTL_NS: u64 = 30_000_000_000;

/// The contexts of this node's CLIENT spans to other nodes, for the agents of those nodes: a
/// bounded map that forgets the oldest past its capacity (counted) and what is older than its
/// time to live.
pub struct Published {
    inner: Mutex<PublishedInner>,
    capacity: usize,
    ttl_ns: u64,
    evicted: Counter,
    held: Gauge,
}

#[derive(Default)]
struct PublishedInner {
    contexts: Map<RequestKey, RemoteContext>,
    /// Keys in insertion order, with their insertion time.
    order: VecDeque<(RequestKey, u64)>,
}

pub mod name {
    pub const PUBLISHED_EVICTED: &str = "meshtap_peer_contexts_evicted";
    pub const PUBLISHED: &str = "meshtap_peer_contexts_published";
}

impl Published {
    pub fn new(capacity: usize, ttl_ns: u64, registry: &Registry) -> Self {
        let evicted = Counter::default();
        registry.register(
            name::PUBLISHED_EVICTED,
            "Contexts of CLIENT spans to other nodes forgotten before their time to live because the table was full (a peer asking for them later finds nothing)",
            evicted.clone(),
        );
        let held = Gauge::default();
        registry.register(
            name::PUBLISHED,
            "Contexts of CLIENT spans to other nodes held for their agents now",
            held.clone(),
        );
        Published {
            held,
            inner: Mutex::new(PublishedInner::default()),
            capacity: capacity.max(1),
            ttl_ns,
            evicted,
        }
    }

    /// Adds the contexts of one batch of emitted spans, at `now_ns`.
    pub fn insert(&self, batch: &[(RequestKey, RemoteContext)], now_ns: u64) {
        if batch.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let PublishedInner { contexts, order } = &mut *inner;
        while order
            .front()
            .is_some_and(|(_, at)| now_ns.saturating_sub(*at) > self.ttl_ns)
        {
            if let Some((key, _)) = order.pop_front() {
                contexts.remove(&key);
            }
        }
        for (key, context) in batch {
            if contexts.insert(*key, *context).is_none() {
                order.push_back((*key, now_ns));
            }
            while contexts.len() > self.capacity {
                let Some((old, _)) = order.pop_front() else {
                    break;
                };
                if contexts.remove(&old).is_some() {
                    self.evicted.inc();
                }
            }
        }
        self.held.set(contexts.len() as i64);
    }

    pub fn get(&self, key: &RequestKey) -> Option<RemoteContext> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contexts
            .get(key)
            .copied()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contexts
            .len()
    }
}

/// Whether a client address is on a node whose agent can be asked (a configured peer range,
/// or a node known from Kubernetes).
pub type Covers = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The tracer's side of the link to the other agents, made by the app with
/// `export::peer::Link`.
pub struct RemoteLink {
    pub covers: Covers,
    /// Keys to look up on the client's node; a full queue drops the lookup (counted, the span
    /// stays a root).
    pub lookups: mpsc::Sender<RequestKey>,
    /// What the peers answered.
    pub answers: mpsc::Receiver<(RequestKey, RemoteContext)>,
    /// Wakes the processing stage when answers arrive, so that a held span does not wait for
    /// its next periodic tick.
    pub wake: Arc<Notify>,
    pub published: Arc<Published>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: u32) -> RequestKey {
        RequestKey {
            client: "10.0.0.1:40000".parse().unwrap(),
            seq,
            ordinal: 0,
        }
    }

    fn ctx(span_id: u64) -> RemoteContext {
        RemoteContext {
            trace_id: 7,
            span_id,
            sampled: true,
        }
    }

    #[test]
    fn bounded_and_expiring() {
        let registry = Registry::default();
        let p = Published::new(2, 100, &registry);
        p.insert(&[(key(1), ctx(1)), (key(2), ctx(2))], 0);
        assert_eq!(p.get(&key(1)), Some(ctx(1)));
        p.insert(&[(key(3), ctx(3))], 10);
        assert_eq!(p.get(&key(1)), None, "the oldest made room");
        assert_eq!(p.evicted.get(), 1);
        assert_eq!(p.get(&key(3)), Some(ctx(3)));
        p.insert(&[(key(4), ctx(4))], 500);
        assert_eq!(p.get(&key(2)), None, "past its time to live");
        assert_eq!(p.get(&key(3)), None, "past its time to live");
        assert_eq!(p.len(), 1);
        assert_eq!(p.evicted.get(), 1, "expiry is not eviction");
    }
}
