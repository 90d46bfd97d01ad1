//! The exchange between agents that links traces across nodes (see `trace::remote`).
//!
//! Pull, batched: the agent of a SERVER span's node asks the agent of its client's node,
//! `POST /api/v1/peer/contexts` with the requests' keys, for the contexts of the CLIENT spans
//! that sent them; it asks again every [`POLL`] for the keys not known yet (the client's span
//! is published once its own trace is known, which can take a hop of its own), until the span's
//! link wait ends. Each peer has its own task, queue and connection: a peer that is down, slow
//! or answers garbage delays nobody else, and never the pipeline (its queue is bounded; what it
//! cannot take is counted and stays a root).
//!
//! Peers are found from the client's address: `--peer CIDR=URL` names the agent serving the
//! clients in that range.

pub mod client;

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use serde::{Deserialize, Serialize};

use crate::{
    exchange::RequestKey,
    metrics::Registry,
    trace::remote::{Published, RemoteContext},
};

/// How often a peer is asked again for the keys it did not know yet.
pub const POLL: Duration = Duration::from_millis(50);
/// Keys per request at most (a request body stays under ~100 KB).
pub const MAX_KEYS_PER_REQUEST: usize = 1000;
/// The route, under `/api/` (the endpoint's token applies).
pub const ROUTE: &str = "/api/v1/peer/contexts";

/// `--peer CIDR=URL`: the agent at `url` serves the clients whose address is in `net/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRange {
    pub net: IpAddr,
    pub prefix: u8,
    pub url: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("--peer {0:?}: expected CIDR=URL, e.g. 10.1.2.0/24=http://10.1.2.1:9464")]
    Syntax(String),
    #[error("--peer {0:?}: {1:?} is not an IP address range (CIDR such as 10.1.2.0/24)")]
    Cidr(String, String),
    #[error(
        "--peer {0:?}: the URL must be http://host:port or https://host:port (the agent's endpoint)"
    )]
    Url(String),
}

impl PeerRange {
    pub fn parse(s: &str) -> Result<Self, PeerError> {
        let (cidr, url) = s
            .split_once('=')
            .ok_or_else(|| PeerError::Syntax(s.to_string()))?;
        let bad_cidr = || PeerError::Cidr(s.to_string(), cidr.to_string());
        let (addr, prefix) = match cidr.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (cidr, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad_cidr())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad_cidr())?,
            None => max,
        };
        if prefix > max {
            return Err(bad_cidr());
        }
        let url = url.trim().trim_end_matches('/').to_string();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| PeerError::Url(s.to_string()))?;
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(PeerError::Url(s.to_string()));
        }
        Ok(PeerRange { net, prefix, url })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The configured peers; the most specific range wins.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    pub ranges: Vec<PeerRange>,
}

impl Peers {
    /// The index of the peer serving `ip`, if any.
    pub fn peer_for(&self, ip: IpAddr) -> Option<usize> {
        self.ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| r.contains(ip))
            .max_by_key(|(_, r)| r.prefix)
            .map(|(i, _)| i)
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// The wire format, both ways.
#[derive(Debug, Serialize, Deserialize)]
pub struct LookupRequest {
    pub keys: Vec<RequestKey>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireContext {
    pub key: RequestKey,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    pub sampled: bool,
}

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct LookupAnswer {
    /// The keys known, in any order; the others are not known (yet).
    pub contexts: Vec<WireContext>,
}

impl WireContext {
    pub fn new(key: RequestKey, c: RemoteContext) -> Self {
        WireContext {
            key,
            trace_id: format!("{:032x}", c.trace_id),
            span_id: format!("{:016x}", c.span_id),
            sampled: c.sampled,
        }
    }

    /// The context, if its ids are well-formed and not zero.
    pub fn context(&self) -> Option<RemoteContext> {
        let hex = |s: &str, len| {
            (s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
            u128::from_str_radix(s, 16).ok().filter(|v| *v != 0)
        };
        Some(RemoteContext {
            trace_id: hex(&self.trace_id, 32)?,
            span_id: u64::try_from(hex(&self.span_id, 16)?).ok()?,
            sampled: self.sampled,
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServedLabels {
    found: &'static str,
}

/// What the route needs: the published contexts, and its counters.
#[derive(Clone)]
pub struct Served {
    published: Arc<Published>,
    found: Counter,
    unknown: Counter,
}

impl Served {
    pub fn new(published: Arc<Published>, registry: &Registry) -> Self {
        let family: Family<ServedLabels, Counter> = Family::default();
        registry.register(
            "meshtap_peer_lookups_served",
            "Keys other agents asked this one for, by whether a CLIENT span of this node was known for them (found=\"false\": not yet, or not a request of this node)",
            family.clone(),
        );
        Served {
            published,
            found: family.get_or_create_owned(&ServedLabels { found: "true" }),
            unknown: family.get_or_create_owned(&ServedLabels { found: "false" }),
        }
    }
}

/// `POST /api/v1/peer/contexts`.
pub fn router(served: Served) -> Router {
    Router::new()
        .route(ROUTE, post(lookup))
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(served)
}

async fn lookup(State(served): State<Served>, Json(request): Json<LookupRequest>) -> Response {
    if request.keys.len() > 10 * MAX_KEYS_PER_REQUEST {
        return (StatusCode::PAYLOAD_TOO_LARGE, "too many keys\n").into_response();
    }
    let mut answer = LookupAnswer::default();
    for key in request.keys {
        match served.published.get(&key) {
            Some(c) => {
                served.found.inc();
                answer.contexts.push(WireContext::new(key, c));
            }
            None => {
                served.unknown.inc();
            }
        }
    }
    Json(answer).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_match() {
        let r = PeerRange::parse("10.1.2.0/24=http://10.1.2.1:9464/").unwrap();
        assert_eq!(r.url, "http://10.1.2.1:9464");
        assert!(r.contains("10.1.2.77".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.2.77".parse().unwrap()));
        assert!(!r.contains("10.1.3.1".parse().unwrap()));
        let all = PeerRange::parse("0.0.0.0/0=https://a:1").unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let one = PeerRange::parse("fd00::1=http://[fd00::1]:9464").unwrap();
        assert_eq!(one.prefix, 128);
        assert!(one.contains("fd00::1".parse().unwrap()));
        assert!(!one.contains("fd00::2".parse().unwrap()));
        let peers = Peers {
            ranges: vec![all, r],
        };
        assert_eq!(peers.peer_for("10.1.2.3".parse().unwrap()), Some(1));
        assert_eq!(peers.peer_for("10.9.9.9".parse().unwrap()), Some(0));
        for bad in [
            "10.1.2.0/24",
            "10.1.2.0/33=http://a:1",
            "x/8=http://a:1",
            "10.0.0.0/8=ftp://a:1",
            "10.0.0.0/8=http://",
            "10.0.0.0/8=http://a:1/path",
        ] {
            assert!(PeerRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wire_contexts_round_trip_and_garbage_is_refused() {
        let key = RequestKey {
            client: "10.0.0.1:4000".parse().unwrap(),
            seq: 77,
            ordinal: 1,
        };
        let c = RemoteContext {
            trace_id: 0xabc,
            span_id: 0xdef,
            sampled: false,
        };
        let w = WireContext::new(key, c);
        let json = serde_json::to_string(&w).unwrap();
        let back: WireContext = serde_json::from_str(&json).unwrap();
        assert_eq!(back.context(), Some(c));
        for (t, s) in [
            ("0".repeat(32), "1".repeat(16)),
            ("1".repeat(31), "1".repeat(16)),
            ("g".repeat(32), "1".repeat(16)),
            ("1".repeat(32), "0".repeat(16)),
            ("1".repeat(32), "+".repeat(16)),
        ] {
            let w = WireContext {
                key,
                trace_id: t,
                span_id: s,
                sampled: true,
            };
            assert_eq!(w.context(), None, "{w:?}");
        }
    }
}
