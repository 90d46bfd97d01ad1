//! Hash maps and sets of the per-event path (connections, exchanges, spans, the trace store,
//! series bookkeeping). They hash with foldhash instead of std's SipHash-1-3: keys there are
//! socket addresses, ids and short strings, hashed several times per event, and SipHash was
//! ~8% of the agent's CPU under load. Each map is seeded at random (`RandomState`), so keys
//! from the wire cannot be chosen to collide without knowing the seed.

pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type Set<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
