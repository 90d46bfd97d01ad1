//! The connection table: every tracked TCP connection with its owner, role and edge labels, and
//! the L4 metrics that follow from the lifecycle and data events.
//!
//! Naming an edge needs to know which local process is at the other end. Servers are found in the
//! listener table (LISTEN events, plus a /proc scan at start-up); clients by their local address
//! among the tracked client connections. A client's open event always precedes the server's
//! accept in the ring buffer (the client's ESTABLISHED causes the server's), so both sides name
//! each other consistently without waiting.

pub mod keys;
pub mod listeners;
pub mod metrics;
pub mod tombstones;

use std::{collections::VecDeque, net::SocketAddr, sync::Arc};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use keys::RequestMarks;
pub use listeners::{Listener, Listeners};
use metrics::{EdgeLabels, FailedLabels, L4Metrics};
use tombstones::Tombstones;

use crate::{
    event::{ConnTotals, Direction, Event, Meta, Process, Role, is_plaintext},
    exchange::{ConnectFailure, ExchangeNames, ExchangeSink, Observed, RequestKey},
    fast::Map,
    metadata::{
        kube::{Peer, PodMeta},
        service::{Identity, ServiceNames},
    },
    metrics::{EdgeNamespaces, OVERFLOW, Registry},
    protocol::{
        Exchange, Side,
        session::{CloseWaits, Session, SessionMetrics, Waiting},
    },
};

/// One tracked TCP connection, from one side.
pub struct Connection {
    pub id: u64,
    pub sk: u64,
    pub role: Side,
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub process: Process,
    /// Shared with `ConnTable::edges` (and a closed connection's tombstone).
    pub labels: Arc<EdgeLabels>,
    pub pre_existing: bool,
    pub opened_ns: u64,
    pub last_seen_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
    /// Names of both ends (service, executable, pod, peer), shared with the exchanges of the
    /// connection; changed copy-on-write (`Arc::make_mut`) when a name is learnt later.
    pub names: Arc<ExchangeNames>,
    /// When the Kubernetes names were last looked up (event time).
    k8s_checked_ns: u64,
    /// The protocol session of this side: detection, parsing, what a close completes.
    session: Session,
    /// TLS plaintext has reached the session: from then on only plaintext is parsed.
    tls_plaintext: bool,
    /// The thread that last moved request bytes: the one serving (server) or sending (client)
    /// the request in a thread-per-request process.
    request_tid: u32,
    /// Sequence numbers of request-direction syscalls, for the exchanges' [`RequestKey`]s
    /// (only with `TableSettings::request_keys`).
    marks: RequestMarks,
    /// Syscalls delivered in chunks, and the events held behind them (see `ConnTable::parse`);
    /// made at the first chunked syscall.
    chunked: Option<Box<Chunked>>,
    sent: Counter,
    received: Counter,
}

/// How far behind the monotonic clock the event clock may fall before ticks use the former,
/// when the reader cannot vouch for a more recent time (its queue is backed up).
const TICK_IDLE_MARGIN_NS: u64 = 3_000_000_000;

/// How often a connection's missing Kubernetes names are looked up again.
const K8S_RETRY_NS: u64 = 1_000_000_000;

/// How often edges unused for the series TTL are looked for.
const EDGE_EXPIRY_EVERY_NS: u64 = 10_000_000_000;

/// What `/api/v1/connections` shows of a connection.
#[derive(Serialize)]
pub struct ConnectionView {
    pub id: u64,
    pub role: &'static str,
    pub local: String,
    pub remote: String,
    pub pid: u32,
    pub comm: String,
    pub start_time_ns: u64,
    pub cgroup_id: u64,
    pub netns: u32,
    pub pre_existing: bool,
    /// Monotonic ns when the connection opened (or was first seen).
    pub opened_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
}

/// Label value of a resolved role.
pub fn side_name(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Server => "server",
    }
}

/// `meshtap_tcp_connections_failed_total{reason}` from a connect errno.
pub fn failure_reason(errno: u32) -> &'static str {
    match errno as i32 {
        libc::ECONNREFUSED => "refused",
        libc::ETIMEDOUT => "timed_out",
        libc::ENETUNREACH | libc::EHOSTUNREACH => "unreachable",
        libc::ECONNRESET => "reset",
        libc::EADDRNOTAVAIL => "address_unavailable",
        libc::EACCES | libc::EPERM => "denied",
        _ => "other",
    }
}

/// A local client endpoint, live or recently closed, as a server-side connection sees it.
struct LocalClient<'a> {
    service: &'a Arc<str>,
    pod: Option<&'a Arc<PodMeta>>,
    /// The server address the client connected to (before any NAT).
    server: SocketAddr,
}

impl LocalClient<'_> {
    fn identity(&self) -> Identity {
        Identity {
            service: self.service.clone(),
            pod: self.pod.cloned(),
        }
    }
}

/// A closed client endpoint (see `ConnTable::recent_clients`).
struct ClosedClient {
    netns: u32,
    service: Arc<str>,
    pod: Option<Arc<PodMeta>>,
    /// The server address the client connected to (before any NAT).
    server: SocketAddr,
}

/// A closed connection whose process may still read what is left in its receive queue: a
/// socket that gets the peer's FIN after sending its own reaches TCP_CLOSE (tcp_fin ->
/// tcp_time_wait -> tcp_done) while unread data is still queued for the process.
///
/// Matched by socket address and peer: after TCP_CLOSE the local port is already released
/// (`inet_put_port` clears `skc_num`), so the tuple read from the socket no longer has it.
struct ClosedConnection {
    remote: SocketAddr,
    labels: Arc<EdgeLabels>,
}

impl ClosedConnection {
    /// Whether an untracked data event on the same socket is this connection's.
    fn matches(&self, meta: &Meta) -> bool {
        late_event_of(self.remote, meta)
    }
}

/// Whether an untracked data event (conn_id 0) on the socket of a closed connection with peer
/// `remote` is that connection's (the event's tuple, read after TCP_CLOSE, may have lost the
/// remote port).
fn late_event_of(remote: SocketAddr, meta: &Meta) -> bool {
    meta.conn_id == 0
        && remote.ip() == meta.remote.ip()
        && (meta.remote.port() == 0 || remote.port() == meta.remote.port())
}

/// Most events held behind one direction's chunked syscall, and in the whole table; past
/// either, the chunked syscall's last chunk is taken as lost and what its direction held is
/// parsed in arrival order (counted). An event holds at most 4 KiB of payload.
const MAX_HELD: usize = 16;
const MAX_HELD_TOTAL: usize = 1024;

/// One direction's syscall delivered in chunks and the events that came between them.
#[derive(Default)]
struct Chunks {
    /// The thread whose syscall's chunks are arriving (its last event said more follow).
    owner: Option<u32>,
    /// Events of other threads that came meanwhile: their bytes follow the chunked syscall's
    /// (a socket's syscalls of one direction are serialised by its lock).
    held: VecDeque<Held>,
}

/// A data event held back (see [`Chunks`]).
struct Held {
    meta: Meta,
    bytes: u64,
    more: bool,
    payload: Box<[u8]>,
}

/// Both directions' [`Chunks`] of a connection.
#[derive(Default)]
struct Chunked {
    dirs: [Chunks; 2],
}

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

pub struct ConnTable {
    /// Boxed: a connection is ~350 bytes, and a map with steady churn (connections opened and
    /// closed all the time) settles at up to four times as many buckets as entries (deleted
    /// slots count until a rehash), so inline entries made the empty buckets cost megabytes,
    /// and each doubling a step in RSS.
    conns: Map<u64, Box<Connection>>,
    /// Tracked client connections by their local address (to name the client at the server).
    clients_by_local: Map<SocketAddr, u64>,
    /// Tracked server connections by their client's address (to find, from a client, the local
    /// server it reached through a NAT such as a Service ClusterIP).
    servers_by_remote: Map<SocketAddr, u64>,
    /// Tracked server connections per owning process (tgid): see `Observed::in_server_process`.
    server_conns_by_pid: Map<u32, u32>,
    pub listeners: Listeners,
    /// Client endpoints whose connection already closed, for a server that accepts late: a
    /// client that connects and closes at once reaches TCP_CLOSE as soon as its FIN is acked
    /// (orphaned FIN_WAIT2 becomes a timewait socket, net/ipv4/tcp_input.c), which can be before
    /// the server's accept() returns. The address stays reserved by the timewait socket for
    /// TCP_TIMEWAIT_LEN (60 s), so a tombstone younger than that still names the right client.
    recent_clients: Tombstones<SocketAddr, ClosedClient>,
    /// Connections closed recently, by socket, for reads that drain them after TCP_CLOSE.
    recent_closed: Tombstones<u64, ClosedConnection>,
    /// Closed connections whose session waits for bytes moved after the close (see
    /// `protocol::session::CloseWaits`).
    closing: CloseWaits<Box<Connection>>,
    /// Edge label sets in use (bounded by `max_series`), with when each was last used: made
    /// or looked up for a connection, or a connection of it closed. One without connections
    /// that stays unused for `series_ttl_ns` is removed with its series.
    edges: Map<Arc<EdgeLabels>, u64>,
    /// Failed-connect label sets, likewise, with when each last counted.
    failed_series: Map<FailedLabels, u64>,
    series_ttl_ns: u64,
    /// When unused edges were last looked for.
    edges_expired_ns: u64,
    /// Data events held across the table (see `parse`), at most `MAX_HELD_TOTAL`.
    held_events: usize,
    metrics: L4Metrics,
    sessions: SessionMetrics,
    registry: Arc<Registry>,
    pub services: ServiceNames,
    /// Where exchanges and failed connects go (composed by the app).
    sink: Box<dyn ExchangeSink>,
    /// The latest event timestamp seen: waits (pairing, span linking) run on event time, so
    /// that a processing backlog does not expire what is still queued.
    event_clock: u64,
    max_connections: usize,
    max_series: usize,
    /// See [`TableSettings::request_keys`].
    request_keys: bool,
    /// Connections (id to socket) the kernel tracks but the full table turned away, at most
    /// [`MAX_TURNED_AWAY`]: their later events are neither retried nor counted again while the
    /// table stays full. Left at their close, or by the sweep once the kernel forgot them.
    turned_away: Map<u64, u64>,
}

/// Turned-away connections remembered at once; past it, each event of a further one retries
/// the insert and counts another failure.
const MAX_TURNED_AWAY: usize = 4096;

/// What the table is built with.
pub struct TableSettings {
    pub max_connections: usize,
    /// Edge label sets before overflow.
    pub max_series: usize,
    pub series_ttl_ns: u64,
    /// Give exchanges their [`RequestKey`] (cross-node trace linking is on).
    pub request_keys: bool,
}

impl ConnTable {
    pub fn new(
        registry: Arc<Registry>,
        metrics: L4Metrics,
        services: ServiceNames,
        sink: Box<dyn ExchangeSink>,
        settings: TableSettings,
    ) -> Self {
        ConnTable {
            services,
            sink,
            event_clock: 0,
            conns: Map::default(),
            clients_by_local: Map::default(),
            servers_by_remote: Map::default(),
            server_conns_by_pid: Map::default(),
            listeners: Listeners::default(),
            recent_clients: Tombstones::default(),
            recent_closed: Tombstones::default(),
            closing: CloseWaits::default(),
            edges: Map::default(),
            failed_series: Map::default(),
            series_ttl_ns: settings.series_ttl_ns,
            edges_expired_ns: 0,
            held_events: 0,
            sessions: SessionMetrics::new(&registry),
            metrics,
            registry,
            max_connections: settings.max_connections,
            request_keys: settings.request_keys,
            max_series: settings.max_series,
            turned_away: Map::default(),
        }
    }

    pub fn snapshot(&self) -> Vec<ConnectionView> {
        let mut out: Vec<ConnectionView> = self
            .conns
            .values()
            .map(|c| ConnectionView {
                id: c.id,
                role: side_name(c.role),
                local: c.local.to_string(),
                remote: c.remote.to_string(),
                pid: c.process.tgid,
                comm: c.process.comm.to_string(),
                start_time_ns: c.process.start_ns,
                cgroup_id: c.process.cgroup_id,
                netns: c.netns,
                pre_existing: c.pre_existing,
                opened_ns: c.opened_ns,
                bytes_sent: c.bytes_sent,
                bytes_received: c.bytes_received,
                retransmits: c.retransmits,
            })
            .collect();
        out.sort_by_key(|c| c.id);
        out
    }

    /// Handles an event without payload bytes (a data event's payload reads as empty).
    #[cfg(test)]
    pub fn handle(&mut self, event: Event) {
        self.handle_in(&event, &[]);
    }

    /// Handles an event of a batch whose payload buffer is `payloads`.
    /// By reference: an event is ~200 bytes, not moved out of its batch.
    pub fn handle_in(&mut self, event: &Event, payloads: &[u8]) {
        self.event_clock = self.event_clock.max(event.meta().ts_ns);
        match event {
            Event::ConnOpen { meta, connect_ns } => self.open(meta, *connect_ns),
            Event::ConnFail { meta, errno } => self.fail(meta, *errno),
            Event::ConnClose { meta, totals } => self.close(meta, *totals),
            Event::Data {
                meta,
                bytes,
                parse_bytes,
                seq,
                tcp_seq,
                direction,
                payload,
                syscall,
                more,
            } => {
                let direction = *direction;
                let parse_bytes = *parse_bytes;
                let payload = payload.of(payloads);
                let more = *more;
                if is_plaintext(*syscall) {
                    self.plaintext(meta, *seq, parse_bytes, direction, payload, more);
                } else {
                    // A continuation event's bytes were counted with its syscall's first event.
                    if *bytes > 0 {
                        self.data(meta, *bytes, direction);
                    }
                    if meta.tls_probed {
                        // Ciphertext: its plaintext comes from the TLS probes.
                    } else if meta.conn_id == 0 && !self.closing.is_empty() {
                        self.parse_after_close(meta, parse_bytes, direction, payload, false, more);
                    } else {
                        if self.request_keys && *tcp_seq != 0 && *bytes > 0 {
                            self.mark(meta, direction, *tcp_seq);
                        }
                        self.parse(
                            meta,
                            meta.conn_id,
                            Some(*seq),
                            parse_bytes,
                            direction,
                            payload,
                            more,
                        );
                    }
                }
            }
            Event::Retransmit { meta } => {
                let labels = match self.conns.get_mut(&meta.conn_id) {
                    Some(c) => {
                        c.retransmits += 1;
                        c.labels.clone()
                    }
                    None => {
                        let labels = self.edge_labels(meta, self.resolve_role(meta));
                        self.capped(labels)
                    }
                };
                self.metrics.retransmits.get_or_create(&labels).inc();
            }
            Event::Listen { meta } => {
                log::debug!(
                    "listener: {} netns {} by {}",
                    meta.local,
                    meta.netns,
                    meta.process.comm
                );
                let id = self
                    .services
                    .identify(&meta.process, Some(meta.local.port()));
                self.listeners.add(Listener {
                    addr: meta.local,
                    netns: meta.netns,
                    service: id.service,
                    pod: id.pod,
                    process: Some(meta.process.clone()),
                });
                if !self.listeners.knows_netns(meta.netns) || meta.local.ip().is_unspecified() {
                    let proc_root = self.services.proc_root().to_path_buf();
                    for ip in crate::metadata::netns_addresses(&proc_root, meta.process.tgid) {
                        self.listeners.add_addr(meta.netns, ip);
                    }
                }
            }
            Event::ListenClose { meta } => {
                log::debug!("listener closed: {} netns {}", meta.local, meta.netns);
                self.listeners.remove(meta.local, meta.netns)
            }
        }
        self.metrics
            .connections_tracked
            .set(self.conns.len() as i64);
    }

    fn resolve_role(&self, meta: &Meta) -> Side {
        match meta.role {
            Role::Client => Side::Client,
            Role::Server => Side::Server,
            Role::Unknown if self.listeners.is_listening(meta.netns, meta.local) => Side::Server,
            Role::Unknown => Side::Client,
        }
    }

    /// The local client at `remote` (the other end of a server-side connection), from the
    /// tracked client connections or the recently closed ones.
    fn local_client_at(
        &self,
        remote: SocketAddr,
        netns: u32,
        ts_ns: u64,
    ) -> Option<LocalClient<'_>> {
        let same_host = |n: u32| !remote.ip().is_loopback() || n == netns;
        self.clients_by_local
            .get(&remote)
            .and_then(|id| self.conns.get(id))
            .filter(|c| same_host(c.netns) || c.netns == 0)
            .map(|c| LocalClient {
                service: &c.names.service,
                pod: c.names.pod.as_ref(),
                server: c.remote,
            })
            .or_else(|| {
                self.recent_clients
                    .get(&remote, ts_ns)
                    .filter(|c| same_host(c.netns))
                    .map(|c| LocalClient {
                        service: &c.service,
                        pod: c.pod.as_ref(),
                        server: c.server,
                    })
            })
    }

    /// The identity of the process at the other end, when it is on this node.
    fn peer_identity(
        &mut self,
        role: Side,
        netns: u32,
        local: SocketAddr,
        remote: SocketAddr,
        ts_ns: u64,
    ) -> Option<Identity> {
        if role == Side::Server {
            return self
                .local_client_at(remote, netns, ts_ns)
                .map(|c| c.identity());
        }
        let Some(l) = self.listeners.server_for(netns, remote) else {
            // Not a listener at that address: maybe a local server reached through a NAT (a
            // Service ClusterIP, a port mapping), which sees this client's own address.
            return self.local_server_of(local, netns).map(|c| Identity {
                service: c.names.service.clone(),
                pod: c.names.pod.clone(),
            });
        };
        let known = Identity {
            service: l.service.clone(),
            pod: l.pod.clone(),
        };
        // A listener seen before its pod was known (API late or down): ask again.
        if known.pod.is_none()
            && self.services.kubernetes()
            && let Some(process) = l.process.clone()
        {
            let port = l.addr.port();
            let again = self.services.identify(&process, Some(port));
            if again.pod.is_some() {
                return Some(again);
            }
        }
        Some(known)
    }

    /// The tracked server-side connection whose client is `client` (same host rules as
    /// `local_client_at`).
    fn local_server_of(&self, client: SocketAddr, netns: u32) -> Option<&Connection> {
        let same_host = |n: u32| !client.ip().is_loopback() || n == netns;
        self.servers_by_remote
            .get(&client)
            .and_then(|id| self.conns.get(id))
            .map(|c| &**c)
            .filter(|c| same_host(c.netns) || c.netns == 0)
    }

    /// The other end of a connection: its service name when it is a process on this node, and
    /// its pod (or Service) in Kubernetes, local or not.
    fn peer(
        &mut self,
        role: Side,
        netns: u32,
        local: SocketAddr,
        remote: SocketAddr,
        ts_ns: u64,
    ) -> (Option<Arc<str>>, Option<Peer>) {
        match self.peer_identity(role, netns, local, remote, ts_ns) {
            Some(Identity {
                service,
                pod: Some(pod),
            }) => (Some(service), Some(Peer::Pod(pod))),
            Some(Identity { service, pod: None }) => {
                // A local process not tied to a pod, at an address Kubernetes names (a pod IP,
                // a ClusterIP in front of it): the Kubernetes name is the one users know.
                let k8s = self.services.remote(remote.ip());
                let service = k8s.as_ref().map_or(service, |p| p.name().into());
                (Some(service), k8s)
            }
            None => (None, self.services.remote(remote.ip())),
        }
    }

    /// Labels of the edge `meta` belongs to, seen from `observer_role`: each end named by the
    /// one name the agent uses for it everywhere (metrics, service graph, spans): a process on
    /// this node by its service name, a pod elsewhere by its workload (or the Service whose
    /// ClusterIP it is), anything else by its IP address. In Kubernetes the namespaces of both
    /// ends are labels: never a recycled pod IP.
    fn edge_labels(&mut self, meta: &Meta, observer_role: Side) -> EdgeLabels {
        let port = (observer_role == Side::Server).then_some(meta.local.port());
        let me = self.services.identify(&meta.process, port);
        let (peer_service, peer_k8s) = self.peer(
            observer_role,
            meta.netns,
            meta.local,
            meta.remote,
            meta.ts_ns,
        );
        edge_labels_named(
            meta,
            observer_role,
            &me,
            peer_service.as_deref(),
            peer_k8s.as_ref(),
        )
    }

    /// Applies the series cap: a label set beyond it is folded into the overflow series.
    /// Connections of one edge share its label set.
    fn capped(&mut self, labels: EdgeLabels) -> Arc<EdgeLabels> {
        let now = self.event_clock;
        if let Some(used) = self.edges.get_mut(&labels) {
            *used = now;
            if let Some((shared, _)) = self.edges.get_key_value(&labels) {
                return shared.clone();
            }
        }
        if self.edges.len() < self.max_series {
            let shared = Arc::new(labels);
            self.edges.insert(shared.clone(), now);
            return shared;
        }
        self.registry
            .overflow_counter(metrics::name::TCP_SERIES)
            .inc();
        Arc::new(EdgeLabels::overflow(&labels.role))
    }

    fn track(
        &mut self,
        meta: &Meta,
        observer_role: Side,
        pre_existing: bool,
    ) -> Option<Arc<EdgeLabels>> {
        if self.conns.len() >= self.max_connections || meta.conn_id == 0 {
            if meta.conn_id != 0 {
                self.metrics.table_full.inc();
                if self.turned_away.len() < MAX_TURNED_AWAY {
                    self.turned_away.insert(meta.conn_id, meta.sk);
                }
            }
            // Untracked: its edge exists, but it is not active here.
            let labels = self.edge_labels(meta, observer_role);
            let labels = self.capped(labels);
            drop(self.metrics.active.get_or_create(&labels));
            return Some(labels);
        }
        self.turned_away.remove(&meta.conn_id);
        // A connection on the socket of one still waiting after its close: the socket was
        // freed and reused, nothing more can come for the old one.
        self.end_close_wait_of(meta.sk, meta.ts_ns);
        let (peer_service, peer_k8s) = self.peer(
            observer_role,
            meta.netns,
            meta.local,
            meta.remote,
            meta.ts_ns,
        );
        let me = if observer_role == Side::Server {
            self.services
                .identify(&meta.process, Some(meta.local.port()))
        } else {
            self.services.identify(&meta.process, None)
        };
        let labels = edge_labels_named(
            meta,
            observer_role,
            &me,
            peer_service.as_deref(),
            peer_k8s.as_ref(),
        );
        let labels = self.capped(labels);
        self.metrics.active.get_or_create(&labels).inc();
        let conn = Connection {
            id: meta.conn_id,
            names: Arc::new(ExchangeNames {
                service: me.service,
                executable: self.services.executable(&meta.process),
                peer_service,
                pod: me.pod,
                peer_k8s,
                server_ip: None,
            }),
            k8s_checked_ns: meta.ts_ns,
            request_tid: meta.process.tid,
            marks: RequestMarks::default(),
            chunked: None,
            session: Session::new(observer_role, pre_existing),
            tls_plaintext: false,
            sk: meta.sk,
            role: observer_role,
            netns: meta.netns,
            local: meta.local,
            remote: meta.remote,
            process: meta.process.clone(),
            sent: self.metrics.sent.get_or_create_owned(&labels),
            received: self.metrics.received.get_or_create_owned(&labels),
            labels: labels.clone(),
            pre_existing,
            opened_ns: meta.ts_ns,
            last_seen_ns: meta.ts_ns,
            bytes_sent: 0,
            bytes_received: 0,
            retransmits: 0,
        };
        if observer_role == Side::Client {
            self.clients_by_local.insert(meta.local, meta.conn_id);
        } else {
            self.servers_by_remote.insert(meta.remote, meta.conn_id);
            *self
                .server_conns_by_pid
                .entry(meta.process.tgid)
                .or_default() += 1;
        }
        self.listeners.add_addr(meta.netns, meta.local.ip());
        self.conns.insert(meta.conn_id, Box::new(conn));
        None
    }

    fn open(&mut self, meta: &Meta, connect_ns: u64) {
        if self.conns.contains_key(&meta.conn_id) {
            return;
        }
        let pre_existing = meta.pre_existing;
        let observer_role = self.resolve_role(meta);
        let untracked = self.track(meta, observer_role, pre_existing);
        let labels = match untracked {
            Some(labels) => labels,
            None => match self.conns.get(&meta.conn_id) {
                Some(c) => c.labels.clone(),
                None => return,
            },
        };
        if !pre_existing {
            self.metrics.opened.get_or_create(&labels).inc();
            let connect_s = (observer_role == Side::Client).then(|| connect_ns as f64 / 1e9);
            if let Some(s) = connect_s {
                self.metrics
                    .connect_duration
                    .get_or_create(&labels)
                    .observe(s);
            }
            self.metrics
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                // A copy: the edge's expiry counts the references to its labels.
                .record((*labels).clone(), meta.ts_ns, connect_s, false);
        }
    }

    fn fail(&mut self, meta: &Meta, errno: u32) {
        let client_service = self.services.name(&meta.process, None);
        let peer = self
            .listeners
            .server_for(meta.netns, meta.remote)
            .map(|l| l.service.clone());
        self.sink.connect_failed(ConnectFailure {
            client_service,
            server: meta.remote,
            server_service: peer,
            now_ns: meta.ts_ns,
        });
        let edge = self.edge_labels(meta, Side::Client);
        self.metrics
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(edge.clone(), meta.ts_ns, None, true);
        let labels = FailedLabels {
            client: edge.client,
            server: edge.server,
            server_port: edge.server_port,
            role: edge.role,
            reason: failure_reason(errno).to_string(),
            namespaces: edge.namespaces,
        };
        let labels = if let Some(used) = self.failed_series.get_mut(&labels) {
            *used = meta.ts_ns;
            labels
        } else if self.failed_series.len() < self.max_series {
            self.failed_series.insert(labels.clone(), meta.ts_ns);
            labels
        } else {
            self.registry
                .overflow_counter(metrics::name::TCP_FAILED)
                .inc();
            FailedLabels {
                client: OVERFLOW.to_string(),
                server: OVERFLOW.to_string(),
                server_port: OVERFLOW.to_string(),
                namespaces: EdgeNamespaces::default(),
                ..labels
            }
        };
        self.metrics.failed.get_or_create(&labels).inc();
    }

    fn data(&mut self, meta: &Meta, bytes: u64, dir: Direction) {
        if let Some(conn) = self.conns.get_mut(&meta.conn_id) {
            conn.last_seen_ns = meta.ts_ns;
            if dir == Direction::Egress {
                conn.bytes_sent += bytes;
                conn.sent.inc_by(bytes);
            } else {
                conn.bytes_received += bytes;
                conn.received.inc_by(bytes);
            }
            return;
        }
        let labels = match self.recent_closed.get(&meta.sk, meta.ts_ns) {
            // Draining a connection that already reached TCP_CLOSE: same edge as before.
            Some(closed) if closed.matches(meta) => closed.labels.clone(),
            // Turned away by the full table, still full: its close brings its totals.
            _ if meta.conn_id != 0
                && self.conns.len() >= self.max_connections
                && self.turned_away.contains_key(&meta.conn_id) =>
            {
                return;
            }
            // The open event was lost or the connection is untracked: account the bytes on the
            // edge anyway, and track the connection from here on when it has an id.
            _ => {
                let observer_role = self.resolve_role(meta);
                match self.track(meta, observer_role, true) {
                    // The agent's table is full but the kernel tracks the connection: its close
                    // brings the exact totals, counted then (counting here too would double).
                    Some(_) if meta.conn_id != 0 => return,
                    Some(labels) => labels,
                    None => return self.data(meta, bytes, dir),
                }
            }
        };
        self.bytes_family(dir).get_or_create(&labels).inc_by(bytes);
    }

    /// `meshtap_tcp_sent_bytes_total` or `meshtap_tcp_received_bytes_total` by direction.
    fn bytes_family(
        &self,
        dir: Direction,
    ) -> &prometheus_client::metrics::family::Family<EdgeLabels, Counter> {
        if dir == Direction::Egress {
            &self.metrics.sent
        } else {
            &self.metrics.received
        }
    }

    /// Parses a data chunk moved after its connection's close (see `closing`).
    /// `plaintext`: the chunk is a TLS library's plaintext (else a syscall's bytes).
    fn parse_after_close(
        &mut self,
        meta: &Meta,
        bytes: u64,
        dir: Direction,
        payload: &[u8],
        plaintext: bool,
        more: bool,
    ) {
        let Some(waiting) = self.closing.take(meta.sk) else {
            return;
        };
        // A probed TLS connection's late syscall bytes are ciphertext (the close_notify its
        // library writes at shutdown): counted, not parsed; its late plaintext is parsed.
        let matches =
            late_event_of(waiting.conn.remote, meta) && waiting.conn.tls_plaintext == plaintext;
        let Waiting {
            conn,
            id,
            closed_ns,
        } = waiting;
        // `parse` works on the table's connections: back in for the call.
        self.conns.insert(id, conn);
        if matches {
            // No sequence number: the kernel numbers only the events of tracked sockets.
            self.parse(meta, id, None, bytes, dir, payload, more);
        }
        // What the chunks held goes now: the connection leaves the table again.
        self.release_all_held(id);
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let waiting = Waiting {
            conn,
            id,
            closed_ns,
        };
        if waiting.conn.session.close_wait() == Some(true) {
            // Its wait stays the one it started with (a request written after the close, on
            // an idle connection, cannot be answered: it fails when the short wait ends).
            self.closing.put_back(meta.sk, waiting);
        } else {
            // Answered: nothing left to wait for.
            self.finish_close(waiting, meta.ts_ns);
        }
    }

    /// A TLS library's plaintext on connection `meta.conn_id`: parsed as the syscalls' payload
    /// of a plain connection is, its bytes not counted (the ciphertext's syscalls count the
    /// connection's bytes). The first plaintext restarts the session's numbering (plaintext
    /// events have their own) and, unless a parser already runs (a protocol that started in
    /// plaintext, such as PostgreSQL's SSLRequest), its detection.
    fn plaintext(
        &mut self,
        meta: &Meta,
        seq: u64,
        bytes: u64,
        dir: Direction,
        payload: &[u8],
        more: bool,
    ) {
        if meta.conn_id == 0 && self.closing.contains(meta.sk) {
            // Moved after its connection's close (a response to a client that hung up).
            self.parse_after_close(meta, bytes, dir, payload, true, more);
            return;
        }
        let Some(conn) = self.conns.get_mut(&meta.conn_id) else {
            self.metrics.tls_plaintext_untracked.inc();
            return;
        };
        conn.last_seen_ns = conn.last_seen_ns.max(meta.ts_ns);
        if !conn.tls_plaintext {
            conn.tls_plaintext = true;
            conn.session.plaintext_begins();
        }
        self.parse(meta, meta.conn_id, Some(seq), bytes, dir, payload, more);
    }

    /// Remembers the sequence number of a request-direction syscall (see `keys`).
    fn mark(&mut self, meta: &Meta, dir: Direction, tcp_seq: u32) {
        if let Some(conn) = self.conns.get_mut(&meta.conn_id)
            && dir == conn.role.request_direction()
        {
            conn.marks.push(meta.ts_ns, tcp_seq);
        }
    }

    /// Hands one data event of connection `conn_id` to its session, in the byte stream's order;
    /// `seq` is the kernel's number of the event when it has one, `more`: more events of the
    /// same syscall follow.
    ///
    /// A syscall captured whole in chunks (HTTP/2) is sent as one ring record per chunk, so a
    /// syscall of another thread on the same socket, whose bytes come after (the socket's lock
    /// orders them), can reach the ring between two of them. Such events are held until the
    /// chunked syscall's last chunk, then parsed: parsed in arrival order, HTTP/2 would decode
    /// a header block before the ones the HPACK table's entries came from.
    #[expect(
        clippy::too_many_arguments,
        reason = "one data event's fields, as the kernel reported them"
    )]
    fn parse(
        &mut self,
        meta: &Meta,
        conn_id: u64,
        seq: Option<u64>,
        bytes: u64,
        dir: Direction,
        payload: &[u8],
        more: bool,
    ) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let d = dir_index(dir);
        let tid = meta.process.tid;
        if let Some(chunks) = conn.chunked.as_deref_mut().map(|c| &mut c.dirs[d])
            && chunks.owner.is_some_and(|owner| owner != tid)
        {
            if chunks.held.len() < MAX_HELD && self.held_events < MAX_HELD_TOTAL {
                self.held_events += 1;
                chunks.held.push_back(Held {
                    meta: meta.clone(),
                    bytes,
                    more,
                    payload: payload.into(),
                });
                // Its number is taken: not a gap for the events parsed before it.
                if let Some(seq) = seq {
                    conn.session.seq_seen(seq);
                }
                self.metrics.events_held.inc();
                return;
            }
            // The chunked syscall's last chunk was lost: no more waiting for it.
            chunks.owner = None;
            self.metrics.events_held_overflow.inc();
            self.release_held(conn_id, dir, false);
        }
        self.feed(meta, conn_id, seq, bytes, dir, payload);
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if more || conn.chunked.is_some() {
            let chunks = &mut conn.chunked.get_or_insert_default().dirs[d];
            chunks.owner = more.then_some(tid);
            if !more && !chunks.held.is_empty() {
                self.release_held(conn_id, dir, false);
            }
        }
    }

    /// Parses the events held in direction `dir` (see [`Self::parse`]) that can go now: in
    /// arrival order, but while one of them is a chunked syscall, its own chunks first.
    /// `all`: every held event goes, in arrival order, whatever chunked syscall is still open
    /// (the connection is leaving the table).
    fn release_held(&mut self, conn_id: u64, dir: Direction, all: bool) {
        let d = dir_index(dir);
        loop {
            let Some(chunks) = self
                .conns
                .get_mut(&conn_id)
                .and_then(|c| c.chunked.as_deref_mut())
                .map(|c| &mut c.dirs[d])
            else {
                return;
            };
            let at = match chunks.owner {
                _ if all => 0,
                None => 0,
                Some(owner) => match chunks.held.iter().position(|h| h.meta.process.tid == owner) {
                    Some(at) => at,
                    None => return,
                },
            };
            let Some(h) = chunks.held.remove(at) else {
                return;
            };
            self.held_events -= 1;
            chunks.owner = h.more.then_some(h.meta.process.tid);
            self.feed(&h.meta, conn_id, None, h.bytes, dir, &h.payload);
        }
    }

    /// Parses every event still held on connection `conn_id`, in arrival order: it is closing.
    fn release_all_held(&mut self, conn_id: u64) {
        for dir in [Direction::Egress, Direction::Ingress] {
            self.release_held(conn_id, dir, true);
        }
    }

    /// Hands one data event to the session of connection `conn_id`.
    fn feed(
        &mut self,
        meta: &Meta,
        conn_id: u64,
        seq: Option<u64>,
        bytes: u64,
        dir: Direction,
        payload: &[u8],
    ) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if dir == conn.role.request_direction() {
            conn.request_tid = meta.process.tid;
        }
        let mut out = Vec::new();
        conn.session.data(
            dir,
            meta.ts_ns,
            seq,
            payload,
            bytes,
            &mut self.sessions,
            &mut out,
        );
        self.exchanges(conn_id, out, meta.ts_ns);
    }

    /// Hands a connection's completed exchanges to the sink, with the names of both ends.
    fn exchanges(&mut self, conn_id: u64, out: Vec<Exchange>, now_ns: u64) {
        if out.is_empty() {
            return;
        }
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        // Kubernetes names missing (API late or down, pod not listed yet) are looked up again,
        // at most once a second per connection: not on every exchange.
        let k8s_due = self.services.kubernetes()
            && now_ns.saturating_sub(conn.k8s_checked_ns) >= K8S_RETRY_NS
            && (conn.names.peer_k8s.is_none() || conn.names.pod.is_none());
        if conn.names.peer_service.is_none() || (k8s_due && conn.names.peer_k8s.is_none()) {
            // The other end may have been tracked after this one (a connection first seen
            // mid-stream, from the side that happened to move bytes first), or its pod may have
            // become known since: look again.
            let (role, netns, local, remote) = (conn.role, conn.netns, conn.local, conn.remote);
            let (service, k8s) = self.peer(role, netns, local, remote, now_ns);
            if let Some(c) = self.conns.get_mut(&conn_id) {
                // Only what is new is written: a write copies names an exchange still holds.
                if c.names.peer_service.is_none() && service.is_some() {
                    Arc::make_mut(&mut c.names).peer_service = service;
                }
                if c.names.peer_k8s.is_none() && k8s.is_some() {
                    Arc::make_mut(&mut c.names).peer_k8s = k8s;
                }
            }
        }
        if k8s_due && let Some(c) = self.conns.get_mut(&conn_id) {
            c.k8s_checked_ns = now_ns;
        }
        if k8s_due
            && let Some(conn) = self.conns.get(&conn_id)
            && conn.names.pod.is_none()
        {
            // Seen before the API answered (or before the pod was listed): name it again.
            let process = conn.process.clone();
            let port = (conn.role == Side::Server).then_some(conn.local.port());
            let me = self.services.identify(&process, port);
            if me.pod.is_some()
                && let Some(c) = self.conns.get_mut(&conn_id)
            {
                let names = Arc::make_mut(&mut c.names);
                names.service = me.service;
                names.pod = me.pod;
            }
        }
        if let Some(c) = self.conns.get_mut(&conn_id)
            && c.role == Side::Client
            && c.names.server_ip.is_none()
        {
            Arc::make_mut(&mut c.names).server_ip = Some(c.remote.ip().to_string().into());
        }
        let request_keys = self.request_keys;
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let keys: Vec<Option<(u32, u16)>> = if request_keys {
            out.iter()
                .map(|ex| conn.marks.key(ex.start_ns, !ex.multiplexed()))
                .collect()
        } else {
            Vec::new()
        };
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        let names = conn.names.clone();
        let (side, client, server) = if conn.role == Side::Server {
            // The server address as a local client saw it (before any NAT, e.g. a ClusterIP):
            // both sides then key the exchange alike.
            let server = self
                .local_client_at(conn.remote, conn.netns, now_ns)
                .map_or(conn.local, |c| c.server);
            (Side::Server, conn.remote, server)
        } else {
            (Side::Client, conn.local, conn.remote)
        };
        let (pid, tid) = (conn.process.tgid, conn.request_tid);
        let in_server_process = side == Side::Server || self.server_conns_by_pid.contains_key(&pid);
        let (local, remote) = (conn.local, conn.remote);
        for (i, exchange) in out.into_iter().enumerate() {
            let key = keys
                .get(i)
                .copied()
                .flatten()
                .map(|(seq, ordinal)| RequestKey {
                    client,
                    seq,
                    ordinal,
                });
            self.sink.exchange(Observed {
                key,
                exchange,
                side,
                names: names.clone(),
                pid,
                tid,
                local,
                remote,
                connection: (client, server),
                in_server_process,
                now_ns,
            });
        }
    }

    /// Periodic work of the stages after the table (pairing timeouts, series expiry).
    /// Ends the waits that are due. `complete_before`: every event stamped before it has been
    /// handled (0 if unknown, see `reader::Drained`).
    pub fn tick(&mut self, now_ns: u64, complete_before: u64) {
        // Event time while events flow. When the node is quiet the clock moves on anyway: to
        // the time up to which the pipeline is known to be complete, or failing that, with a
        // margin for events still on their way.
        let now_ns = self
            .event_clock
            .max(now_ns.saturating_sub(TICK_IDLE_MARGIN_NS))
            .max(complete_before.min(now_ns));
        // Before the aggregator's tick: a closing connection's last exchange is still in time to
        // pair with the other side's (`CLOSE_WAIT_NS` is shorter than the pairing wait).
        self.end_close_waits(now_ns);
        self.metrics
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(now_ns);
        if now_ns.saturating_sub(self.edges_expired_ns) >= EDGE_EXPIRY_EVERY_NS {
            self.edges_expired_ns = now_ns;
            self.expire_edges(now_ns);
        }
        self.sink.tick(now_ns);
    }

    fn close(&mut self, meta: &Meta, totals: ConnTotals) {
        self.end_close_waits(meta.ts_ns);
        // Events held behind a chunked syscall whose last chunk never came go first.
        self.release_all_held(meta.conn_id);
        // A connection with a parser waits for late bytes (see `closing`): long with an exchange
        // in flight, briefly without.
        let wait = self
            .conns
            .get(&meta.conn_id)
            .and_then(|c| c.session.close_wait());
        let Some(conn) = self.conns.remove(&meta.conn_id) else {
            self.turned_away.remove(&meta.conn_id);
            // Never tracked here (open lost, or table full): count the close and the bytes.
            let labels = self.edge_labels(meta, self.resolve_role(meta));
            let labels = self.capped(labels);
            self.metrics.closed.get_or_create(&labels).inc();
            self.metrics
                .sent
                .get_or_create(&labels)
                .inc_by(totals.bytes_sent);
            self.metrics
                .received
                .get_or_create(&labels)
                .inc_by(totals.bytes_received);
            return;
        };
        if self.unindex(&conn) && conn.role == Side::Client {
            self.recent_clients.insert(
                conn.local,
                ClosedClient {
                    netns: conn.netns,
                    service: conn.names.service.clone(),
                    pod: conn.names.pod.clone(),
                    server: conn.remote,
                },
                meta.ts_ns,
            );
        }
        self.recent_closed.insert(
            conn.sk,
            ClosedConnection {
                remote: conn.remote,
                labels: conn.labels.clone(),
            },
            meta.ts_ns,
        );
        // The kernel's totals are exact even when data events were lost: add what we missed.
        if totals.bytes_sent > conn.bytes_sent {
            conn.sent.inc_by(totals.bytes_sent - conn.bytes_sent);
        }
        if totals.bytes_received > conn.bytes_received {
            conn.received
                .inc_by(totals.bytes_received - conn.bytes_received);
        }
        if totals.retransmits > conn.retransmits {
            self.metrics
                .retransmits
                .get_or_create(&conn.labels)
                .inc_by(totals.retransmits - conn.retransmits);
        }
        if totals.data_events_lost > 0 {
            log::debug!(
                "connection {} closed: {} of {} data events lost in the kernel, byte totals reconciled",
                conn.id,
                totals.data_events_lost,
                totals.data_events
            );
        }
        self.metrics.closed.get_or_create(&conn.labels).inc();
        self.metrics.active.get_or_create(&conn.labels).dec();
        self.touch_edge(&conn.labels, meta.ts_ns);
        match wait {
            Some(in_flight) => self.wait_after_close(conn, meta.ts_ns, in_flight),
            // The socket was reused (see `track`).
            None => self.end_close_wait_of(meta.sk, meta.ts_ns),
        }
    }

    /// Marks an edge as used at `now_ns` (a connection of it ended), for `expire_edges`.
    fn touch_edge(&mut self, labels: &EdgeLabels, now_ns: u64) {
        if let Some(used) = self.edges.get_mut(labels) {
            *used = now_ns;
        }
    }

    /// Removes the edges (and failed-connect label sets) unused for `series_ttl_ns`, with their
    /// series: without it a node that saw `max_series` edges once would fold every later edge
    /// into the overflow series for good.
    fn expire_edges(&mut self, now_ns: u64) {
        // Tombstones hold their connection's edge: the expired ones go first.
        self.recent_closed.expire(now_ns, usize::MAX);
        let ttl = self.series_ttl_ns;
        let m = &self.metrics;
        let mut stale = 0u64;
        self.edges.retain(|labels, used| {
            // Held elsewhere: by a connection (whose byte counters are the series' own), a
            // closing one or a tombstone.
            if Arc::strong_count(labels) > 1 || now_ns.saturating_sub(*used) <= ttl {
                return true;
            }
            m.opened.remove(labels);
            m.closed.remove(labels);
            m.active.remove(labels);
            m.sent.remove(labels);
            m.received.remove(labels);
            m.retransmits.remove(labels);
            m.connect_duration.remove(labels);
            stale += 1;
            false
        });
        let mut stale_failed = 0u64;
        self.failed_series.retain(|labels, used| {
            if now_ns.saturating_sub(*used) <= ttl {
                return true;
            }
            m.failed.remove(labels);
            stale_failed += 1;
            false
        });
        self.registry
            .count_expired(metrics::name::TCP_OPENED, stale);
        self.registry
            .count_expired(metrics::name::TCP_FAILED, stale_failed);
    }

    /// Keeps a closed connection's session for bytes moved after the close (see `closing`).
    fn wait_after_close(&mut self, conn: Box<Connection>, closed_ns: u64, in_flight: bool) {
        let (sk, id) = (conn.sk, conn.id);
        let ended = self.closing.start(
            sk,
            id,
            conn,
            closed_ns,
            in_flight,
            &self.sessions.close_waits_cut_short,
        );
        for waiting in ended {
            self.finish_close(waiting, closed_ns);
        }
    }

    /// Completes the closes whose wait is over at `now_ns`.
    fn end_close_waits(&mut self, now_ns: u64) {
        for waiting in self.closing.due(now_ns) {
            self.finish_close(waiting, now_ns);
        }
    }

    /// Ends the wait of whichever connection waits on socket `sk`.
    fn end_close_wait_of(&mut self, sk: u64, now_ns: u64) {
        if let Some(waiting) = self.closing.take(sk) {
            self.finish_close(waiting, now_ns);
        }
    }

    /// What the close completes, at the time of the close.
    fn finish_close(&mut self, waiting: Waiting<Box<Connection>>, now_ns: u64) {
        let Waiting {
            mut conn,
            id,
            closed_ns,
        } = waiting;
        let mut out = Vec::new();
        conn.session.close(closed_ns, &mut self.sessions, &mut out);
        if out.is_empty() {
            return;
        }
        // `exchanges` works on the table's connections: back in for the call.
        self.conns.insert(id, conn);
        self.exchanges(id, out, now_ns.max(closed_ns));
        self.conns.remove(&id);
    }

    /// Removes a connection taken out of `conns` from the indexes `track` put it in. Returns
    /// whether it was still the one indexed under its address (a newer connection may have
    /// taken the address over).
    fn unindex(&mut self, conn: &Connection) -> bool {
        let (index, key) = if conn.role == Side::Server {
            let tgid = conn.process.tgid;
            if let Some(n) = self.server_conns_by_pid.get_mut(&tgid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.server_conns_by_pid.remove(&tgid);
                }
            }
            (&mut self.servers_by_remote, conn.remote)
        } else {
            (&mut self.clients_by_local, conn.local)
        };
        let current = index.get(&key) == Some(&conn.id);
        if current {
            index.remove(&key);
        }
        current
    }

    /// Ends connections whose close event never arrived (lost in a full ring buffer): those idle
    /// longer than `idle_ns` and for which `alive(sk, id)` says the kernel no longer tracks them.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64, alive: impl Fn(u64, u64) -> bool) -> usize {
        let stale: Vec<u64> = self
            .conns
            .values()
            .filter(|c| now_ns.saturating_sub(c.last_seen_ns) > idle_ns && !alive(c.sk, c.id))
            .map(|c| c.id)
            .collect();
        for id in &stale {
            self.release_all_held(*id);
            if let Some(conn) = self.conns.remove(id) {
                self.unindex(&conn);
                self.metrics.closed.get_or_create(&conn.labels).inc();
                self.metrics.active.get_or_create(&conn.labels).dec();
                self.touch_edge(&conn.labels, now_ns);
            }
        }
        self.turned_away.retain(|id, sk| alive(*sk, *id));
        self.metrics
            .connections_tracked
            .set(self.conns.len() as i64);
        stale.len()
    }
}

/// `ConnTable::edge_labels` with both ends already named.
fn edge_labels_named(
    meta: &Meta,
    observer_role: Side,
    me: &Identity,
    peer_service: Option<&str>,
    k8s_peer: Option<&Peer>,
) -> EdgeLabels {
    let my_ns = me.pod.as_ref().map(|p| p.namespace.clone());
    let peer = peer_service
        .map(str::to_string)
        .or_else(|| k8s_peer.map(|p| p.name().to_string()))
        .unwrap_or_else(|| meta.remote.ip().to_string());
    let peer_ns = k8s_peer.map(|p| p.namespace().to_string());
    match observer_role {
        Side::Server => EdgeLabels {
            client: peer,
            server: me.service.to_string(),
            server_port: meta.local.port().to_string(),
            role: "server".to_string(),
            namespaces: EdgeNamespaces {
                client: peer_ns,
                server: my_ns,
            },
        },
        Side::Client => EdgeLabels {
            client: me.service.to_string(),
            server: peer,
            server_port: meta.remote.port().to_string(),
            role: "client".to_string(),
            namespaces: EdgeNamespaces {
                client: my_ns,
                server: peer_ns,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::graph::ServiceGraph,
        event::PayloadRange,
        metrics::DEFAULT_DURATION_BUCKETS,
        pipeline::Pipeline,
        protocol::{
            Red, RedSettings,
            session::{CLOSE_WAIT_IDLE_NS, CLOSE_WAIT_MAX, CLOSE_WAIT_NS},
        },
    };

    /// The registry the table's (and its sink's) metrics are in.
    type Metrics = Registry;

    fn meta(conn_id: u64, r: Role, local: &str, remote: &str, comm: &str, netns: u32) -> Meta {
        Meta {
            ts_ns: 1,
            conn_id,
            sk: conn_id * 10,
            role: r,
            pre_existing: false,
            tls_probed: false,
            netns,
            process: Process {
                tgid: 100 + conn_id as u32,
                tid: 100 + conn_id as u32,
                start_ns: 5,
                cgroup_id: 1,
                comm: comm.into(),
            },
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
        }
    }

    const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: api\r\n\r\n";
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    /// A data event carrying all of `payload` (give `handle_in` the same bytes).
    fn data(meta: Meta, seq: u64, direction: Direction, payload: &[u8]) -> Event {
        Event::Data {
            meta,
            bytes: payload.len() as u64,
            parse_bytes: payload.len() as u64,
            seq,
            tcp_seq: 0,
            direction,
            syscall: 1,
            payload: PayloadRange::whole(payload),
            more: false,
        }
    }

    /// A client connection opened and its request written.
    fn open_and_request(table: &mut ConnTable, client: &Meta) {
        table.handle(Event::ConnOpen {
            meta: client.clone(),
            connect_ns: 1,
        });
        table.handle_in(
            &data(client.clone(), 0, Direction::Egress, REQUEST),
            REQUEST,
        );
    }

    /// A table whose exchanges go to the request metrics and the service graph (no tracer).
    fn table_for(metrics: &Arc<Metrics>, max_connections: usize, max_series: usize) -> ConnTable {
        table_with_ttl(metrics, max_connections, max_series, u64::MAX)
    }

    fn table_with_ttl(
        metrics: &Arc<Metrics>,
        max_connections: usize,
        max_series: usize,
        series_ttl_ns: u64,
    ) -> ConnTable {
        let red = Red::new(
            metrics,
            &RedSettings {
                duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
                max_series,
            },
        );
        let graph = ServiceGraph::new(metrics, &DEFAULT_DURATION_BUCKETS, max_series);
        ConnTable::new(
            metrics.clone(),
            L4Metrics::new(
                metrics,
                crate::ebpf::telemetry::KernelMetrics::new(metrics)
                    .insert_failures("agent_connections"),
            ),
            ServiceNames::new(Default::default(), Default::default()),
            Box::new(Pipeline::new(
                metrics.clone(),
                red,
                crate::aggregate::operations::Operations::new(metrics, &DEFAULT_DURATION_BUCKETS),
                graph,
                None,
                series_ttl_ns,
            )),
            TableSettings {
                max_connections,
                max_series,
                series_ttl_ns,
                request_keys: false,
            },
        )
    }

    /// A process "srv" listening on `addr` in `netns`.
    fn listen_srv(table: &mut ConnTable, addr: &str, netns: u32) {
        table.listeners.add(Listener {
            addr: addr.parse().unwrap(),
            netns,
            service: "srv".into(),
            pod: None,
            process: None,
        });
    }

    fn value(metrics: &Metrics, name: &str, labels: &str) -> f64 {
        let text = metrics.encode();
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }

    #[test]
    fn both_ends_on_node_name_each_other_and_reconcile_bytes() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_for(&metrics, 100, 100);
        listen_srv(&mut table, "0.0.0.0:8080", 2);
        table.listeners.add_addr(2, "10.0.0.2".parse().unwrap());
        table.handle(Event::ConnOpen {
            meta: meta(1, Role::Client, "10.0.0.1:5000", "10.0.0.2:8080", "cli", 1),
            connect_ns: 1000,
        });
        table.handle(Event::ConnOpen {
            meta: meta(2, Role::Server, "10.0.0.2:8080", "10.0.0.1:5000", "srv", 2),
            connect_ns: 0,
        });
        table.handle(Event::Data {
            meta: meta(1, Role::Client, "10.0.0.1:5000", "10.0.0.2:8080", "cli", 1),
            bytes: 10,
            parse_bytes: 10,
            seq: 0,
            tcp_seq: 0,
            direction: Direction::Egress,
            syscall: 1,
            payload: PayloadRange::default(),
            more: false,
        });
        table.handle(Event::ConnClose {
            meta: meta(1, Role::Client, "10.0.0.1:5000", "10.0.0.2:8080", "cli", 1),
            totals: ConnTotals {
                bytes_sent: 25,
                ..ConnTotals::default()
            },
        });
        let edge = r#"client="cli",server="srv",server_port="8080""#;
        assert_eq!(
            value(&metrics, "meshtap_tcp_connections_opened_total", edge),
            2.0
        );
        assert_eq!(
            value(
                &metrics,
                "meshtap_tcp_sent_bytes_total",
                &format!("{edge},role=\"client\"")
            ),
            25.0
        );
        assert_eq!(
            value(
                &metrics,
                "meshtap_tcp_active_connections",
                &format!("{edge},role=\"client\"")
            ),
            0.0
        );
        assert_eq!(table.conns.len(), 1);
    }

    /// A probed TLS connection: its ciphertext events count bytes and are not parsed, its
    /// plaintext events are parsed (numbered on their own) and count no bytes.
    #[test]
    fn tls_plaintext_is_parsed_and_its_ciphertext_only_counted() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_for(&metrics, 100, 100);
        let mut client = meta(1, Role::Client, "10.0.0.1:5000", "10.0.0.2:443", "cli", 1);
        table.handle(Event::ConnOpen {
            meta: client.clone(),
            connect_ns: 1,
        });
        client.tls_probed = true;
        // The handshake and the request's record: 300 and 90 bytes of ciphertext.
        for (seq, (dir, bytes)) in [(Direction::Egress, 300), (Direction::Ingress, 90)]
            .into_iter()
            .enumerate()
        {
            table.handle(Event::Data {
                meta: client.clone(),
                bytes,
                parse_bytes: bytes,
                seq: seq as u64,
                tcp_seq: 0,
                direction: dir,
                syscall: 1,
                payload: PayloadRange::default(),
                more: false,
            });
        }
        let plaintext = |seq: u64, direction, payload: &[u8], syscall| Event::Data {
            meta: client.clone(),
            bytes: payload.len() as u64,
            parse_bytes: payload.len() as u64,
            seq,
            tcp_seq: 0,
            direction,
            syscall,
            payload: PayloadRange::whole(payload),
            more: false,
        };
        table.handle_in(
            &plaintext(
                0,
                Direction::Egress,
                REQUEST,
                meshtap_common::syscall::TLS_WRITE,
            ),
            REQUEST,
        );
        table.handle_in(
            &plaintext(
                1,
                Direction::Ingress,
                RESPONSE,
                meshtap_common::syscall::TLS_READ,
            ),
            RESPONSE,
        );
        let edge = r#"client="cli",server="10.0.0.2",server_port="443",role="client""#;
        assert_eq!(value(&metrics, "meshtap_tcp_sent_bytes_total", edge), 300.0);
        assert_eq!(
            value(&metrics, "meshtap_tcp_received_bytes_total", edge),
            90.0
        );
        assert_eq!(
            value(
                &metrics,
                "http_client_request_duration_seconds_count",
                r#"http_response_status_code="200""#
            ),
            1.0
        );
        assert_eq!(
            value(&metrics, "meshtap_protocol_detected_total", "http"),
            1.0
        );
        // Plaintext of a connection the table does not hold: counted, not parsed.
        let mut stray = meta(9, Role::Client, "10.0.0.1:5009", "10.0.0.2:443", "cli", 1);
        stray.tls_probed = true;
        table.handle_in(
            &Event::Data {
                meta: stray,
                bytes: REQUEST.len() as u64,
                parse_bytes: REQUEST.len() as u64,
                seq: 0,
                tcp_seq: 0,
                direction: Direction::Egress,
                syscall: meshtap_common::syscall::TLS_WRITE,
                payload: PayloadRange::whole(REQUEST),
                more: false,
            },
            REQUEST,
        );
        assert_eq!(
            value(&metrics, "meshtap_tls_plaintext_untracked_events_total", ""),
            1.0
        );
    }

    #[test]
    fn a_local_server_behind_a_cluster_ip_pairs_with_its_client_once() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_for(&metrics, 100, 100);
        listen_srv(&mut table, "0.0.0.0:8080", 2);
        table.listeners.add_addr(2, "10.0.0.2".parse().unwrap());
        // The client connects to a ClusterIP; DNAT takes it to the server's own address.
        let client = || meta(1, Role::Client, "10.0.0.1:5000", "10.96.0.10:80", "cli", 1);
        let server = || meta(2, Role::Server, "10.0.0.2:8080", "10.0.0.1:5000", "srv", 2);
        table.handle(Event::ConnOpen {
            meta: client(),
            connect_ns: 1000,
        });
        table.handle(Event::ConnOpen {
            meta: server(),
            connect_ns: 0,
        });
        table.handle_in(&data(client(), 0, Direction::Egress, REQUEST), REQUEST);
        table.handle_in(&data(server(), 0, Direction::Ingress, REQUEST), REQUEST);
        table.handle_in(&data(server(), 1, Direction::Egress, RESPONSE), RESPONSE);
        table.handle_in(&data(client(), 1, Direction::Ingress, RESPONSE), RESPONSE);
        table.tick(10_000_000_000, 0);
        let graph = |connection_type: &str| {
            value(
                &metrics,
                "traces_service_graph_request_total",
                &format!(r#"client="cli",server="srv",connection_type="{connection_type}""#),
            )
        };
        assert_eq!(graph(""), 1.0, "{}", metrics.encode());
        assert_eq!(graph("virtual_node"), 0.0, "{}", metrics.encode());
    }

    /// The server end of 10.0.0.9:5000 -> 10.0.0.2:8080, as seen by thread `tid` of the
    /// listening process.
    fn server_thread(tid: u32) -> Meta {
        let mut m = meta(2, Role::Server, "10.0.0.2:8080", "10.0.0.9:5000", "srv", 2);
        m.process.tid = tid;
        m
    }

    /// A table with that connection open (by thread 1).
    fn table_with_server_thread(metrics: &Arc<Metrics>) -> ConnTable {
        let mut table = table_for(metrics, 100, 100);
        listen_srv(&mut table, "0.0.0.0:8080", 2);
        table.handle(Event::ConnOpen {
            meta: server_thread(1),
            connect_ns: 0,
        });
        table
    }

    /// A syscall captured in chunks (one ring record each) with another thread's syscall on
    /// the same socket reaching the ring between two of them: the other one's bytes come after
    /// in the stream, so it is held and parsed after the chunked syscall's last chunk. Parsed in
    /// arrival order, the first request would be garbled by the second's bytes.
    #[test]
    fn another_threads_event_between_chunks_waits_for_the_last_chunk() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_with_server_thread(&metrics);
        let server = server_thread;
        let (a1, a2): (&[u8], &[u8]) = (b"GET /a HTTP/1.1\r\nHost: api\r\n", b"\r\n");
        let b = b"GET /b HTTP/1.1\r\nHost: api\r\n\r\n";
        let chunk = |tid, seq, bytes: usize, payload: &[u8], more| Event::Data {
            meta: server(tid),
            bytes: bytes as u64,
            parse_bytes: payload.len() as u64,
            seq,
            tcp_seq: 0,
            direction: Direction::Ingress,
            syscall: 0,
            payload: PayloadRange::whole(payload),
            more,
        };
        // Thread 1 read a1 + a2 (sent in two chunks), thread 2 read b after it.
        table.handle_in(&chunk(1, 0, a1.len() + a2.len(), a1, true), a1);
        table.handle_in(&chunk(2, 1, b.len(), b, false), b);
        table.handle_in(&chunk(1, 2, 0, a2, false), a2);
        for seq in [3, 4] {
            table.handle_in(&data(server(1), seq, Direction::Egress, RESPONSE), RESPONSE);
        }
        let routes = |route: &str| {
            value(
                &metrics,
                "http_server_request_duration_seconds_count",
                &format!(r#"http_route="{route}""#),
            )
        };
        let text = metrics.encode();
        assert_eq!((routes("/a"), routes("/b")), (1.0, 1.0), "{text}");
        assert_eq!(
            value(&metrics, "meshtap_parse_errors_total", ""),
            0.0,
            "{text}"
        );
        assert_eq!(
            value(&metrics, "meshtap_data_events_held_total", ""),
            1.0,
            "{text}"
        );
        // Bytes count as the syscalls moved them, the held one included.
        assert_eq!(
            value(&metrics, "meshtap_tcp_received_bytes_total", ""),
            (a1.len() + a2.len() + b.len()) as f64,
            "{text}"
        );
    }

    /// A connection that closes while events are held behind a chunked syscall whose last
    /// chunk never came, one of them itself a chunked syscall's first chunk: every held event is
    /// parsed then, none is left behind (nor counted as held any more).
    #[test]
    fn held_events_all_go_at_the_close() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_with_server_thread(&metrics);
        let server = server_thread;
        let chunk = |tid, seq, payload: &[u8], more| Event::Data {
            meta: server(tid),
            bytes: payload.len() as u64 * 2,
            parse_bytes: payload.len() as u64,
            seq,
            tcp_seq: 0,
            direction: Direction::Ingress,
            syscall: 0,
            payload: PayloadRange::whole(payload),
            more,
        };
        table.handle_in(
            &chunk(1, 0, b"GET /a HTTP/1.1\r\n", true),
            b"GET /a HTTP/1.1\r\n",
        );
        table.handle_in(&chunk(2, 1, b"Host: x\r\n", true), b"Host: x\r\n");
        table.handle_in(&chunk(3, 2, b"\r\n", false), b"\r\n");
        assert_eq!(table.held_events, 2);
        table.handle(Event::ConnClose {
            meta: server(1),
            totals: ConnTotals::default(),
        });
        assert_eq!(table.held_events, 0);
        assert_eq!(value(&metrics, "meshtap_data_events_held_total", ""), 2.0);
    }

    #[test]
    fn remote_peer_is_named_by_ip_and_wildcards_do_not_capture_foreign_addresses() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_for(&metrics, 100, 100);
        listen_srv(&mut table, "0.0.0.0:8080", 2);
        table.handle(Event::ConnOpen {
            meta: meta(
                1,
                Role::Client,
                "10.0.0.1:5000",
                "93.184.216.34:8080",
                "cli",
                1,
            ),
            connect_ns: 1000,
        });
        assert_eq!(
            value(
                &metrics,
                "meshtap_tcp_connections_opened_total",
                r#"client="cli",server="93.184.216.34""#
            ),
            1.0
        );
    }

    /// A response whose body ends at the close (no Content-Length, not chunked: node answering
    /// nginx's HTTP/1.0 upstream requests, say) completes when the wait after the close ends.
    /// On a quiet node that is as soon as the reader vouches that everything stamped up to the
    /// end of the wait has been handled, not a margin of seconds later.
    #[test]
    fn a_body_ended_by_the_close_completes_once_the_pipeline_is_known_complete() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_for(&metrics, 100, 100);
        listen_srv(&mut table, "127.0.0.1:80", 1);
        let mut server = meta(2, Role::Server, "127.0.0.1:80", "127.0.0.1:5000", "srv", 1);
        server.ts_ns = 10;
        table.handle(Event::ConnOpen {
            meta: server.clone(),
            connect_ns: 0,
        });
        table.handle_in(
            &data(server.clone(), 0, Direction::Ingress, REQUEST),
            REQUEST,
        );
        const UNTIL_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe body";
        table.handle_in(
            &data(server.clone(), 1, Direction::Egress, UNTIL_CLOSE),
            UNTIL_CLOSE,
        );
        server.ts_ns = 20;
        table.handle(Event::ConnClose {
            meta: server,
            totals: ConnTotals::default(),
        });
        let count = || {
            value(
                &metrics,
                "http_server_request_duration_seconds_count",
                r#"http_response_status_code="200""#,
            )
        };
        assert_eq!(
            count(),
            0.0,
            "in flight until the wait after the close ends"
        );
        let end = 20 + CLOSE_WAIT_NS;
        // The reader vouches for less than the wait: still waiting.
        table.tick(end + 1_000_000, end - 1);
        assert_eq!(count(), 0.0);
        // It cannot vouch for the future.
        table.tick(end - 1, end + 1_000_000);
        assert_eq!(count(), 0.0);
        table.tick(end + 1_000_000, end);
        assert_eq!(count(), 1.0, "{}", metrics.encode());
        assert!(table.closing.is_empty());
    }

    /// The server's socket reaches TCP_CLOSE inside the write of its response (the client hung
    /// up and its RST came back during the write): the response's data event, untracked by then,
    /// still answers the request. The client's request, never answered, fails once the wait
    /// after its close is over.
    #[test]
    fn a_response_written_as_the_socket_closes_still_answers() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_for(&metrics, 100, 100);
        listen_srv(&mut table, "127.0.0.1:80", 1);
        let at = |mut meta: Meta, ts_ns: u64| {
            meta.ts_ns = ts_ns;
            meta
        };
        let client = meta(1, Role::Client, "127.0.0.1:5000", "127.0.0.1:80", "cli", 1);
        let server = meta(2, Role::Server, "127.0.0.1:80", "127.0.0.1:5000", "srv", 1);
        let close = |meta: Meta| Event::ConnClose {
            meta,
            totals: ConnTotals::default(),
        };
        for (meta, connect_ns) in [(at(client.clone(), 10), 1), (at(server.clone(), 11), 0)] {
            table.handle(Event::ConnOpen { meta, connect_ns });
        }
        table.handle_in(
            &data(at(client.clone(), 20), 0, Direction::Egress, REQUEST),
            REQUEST,
        );
        table.handle(close(at(client.clone(), 21)));
        table.handle_in(
            &data(at(server.clone(), 30), 0, Direction::Ingress, REQUEST),
            REQUEST,
        );
        table.handle(close(at(server.clone(), 40)));
        // The write returns after the close: no connection id any more, the port released.
        let mut late = at(server.clone(), 41);
        late.conn_id = 0;
        late.local.set_port(0);
        table.handle_in(&data(late, 0, Direction::Egress, RESPONSE), RESPONSE);
        assert_eq!(
            table.closing.len(),
            1,
            "the answered server is done waiting"
        );
        let server_count = |status: &str| {
            value(
                &metrics,
                "http_server_request_duration_seconds_count",
                &format!(r#"http_response_status_code="{status}""#),
            )
        };
        let client_count = |status: &str| {
            value(
                &metrics,
                "http_client_request_duration_seconds_count",
                &format!(r#"http_response_status_code="{status}""#),
            )
        };
        assert_eq!(
            (server_count("200"), server_count("")),
            (1.0, 0.0),
            "{}",
            metrics.encode()
        );
        assert_eq!(client_count(""), 0.0, "still waiting for late bytes");
        // Half a second on (the node quiet: ticks run on the monotonic clock, less the margin),
        // the client's close completes its request as unanswered.
        table.tick(21 + CLOSE_WAIT_NS - 1 + TICK_IDLE_MARGIN_NS, 0);
        assert_eq!(client_count(""), 0.0, "{}", metrics.encode());
        table.tick(21 + CLOSE_WAIT_NS + TICK_IDLE_MARGIN_NS, 0);
        assert_eq!(client_count(""), 1.0, "{}", metrics.encode());
        assert!(table.closing.is_empty());
        table.tick(10_000_000_000, 0);
        assert!(table.closing.order_is_empty());
        let graph = |name: &str| {
            value(
                &metrics,
                name,
                r#"client="cli",server="srv",connection_type="""#,
            )
        };
        assert_eq!(
            (
                graph("traces_service_graph_request_total"),
                graph("traces_service_graph_request_failed_total")
            ),
            (1.0, 1.0),
            "{}",
            metrics.encode()
        );
    }

    /// The server closed an idle keep-alive connection; the client, not knowing yet, writes its
    /// next request, which draws the RST inside the write: the request comes after the close
    /// and fails.
    #[test]
    fn a_request_written_as_the_socket_closes_fails() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_for(&metrics, 100, 100);
        let client = meta(1, Role::Client, "127.0.0.1:5000", "127.0.0.1:80", "cli", 1);
        open_and_request(&mut table, &client);
        table.handle_in(
            &data(client.clone(), 1, Direction::Ingress, RESPONSE),
            RESPONSE,
        );
        let mut closed = client.clone();
        closed.ts_ns = 1_000;
        table.handle(Event::ConnClose {
            meta: closed,
            totals: ConnTotals::default(),
        });
        assert_eq!(table.closing.len(), 1, "an idle close waits briefly");
        let mut late = client.clone();
        late.ts_ns = 2_000;
        late.conn_id = 0;
        late.local.set_port(0);
        table.handle_in(&data(late.clone(), 0, Direction::Egress, REQUEST), REQUEST);
        let count = |status: &str| {
            value(
                &metrics,
                "http_client_request_duration_seconds_count",
                &format!(r#"http_response_status_code="{status}""#),
            )
        };
        assert_eq!((count("200"), count("")), (1.0, 0.0));
        // The next close ends the waits that are over.
        let other = meta(2, Role::Client, "127.0.0.1:5001", "127.0.0.1:80", "cli", 1);
        table.handle(Event::ConnOpen {
            meta: other.clone(),
            connect_ns: 1,
        });
        let mut closed = other;
        closed.ts_ns = 1_000 + CLOSE_WAIT_IDLE_NS;
        table.handle(Event::ConnClose {
            meta: closed,
            totals: ConnTotals::default(),
        });
        assert_eq!(
            (count("200"), count("")),
            (1.0, 1.0),
            "{}",
            metrics.encode()
        );
        assert!(table.closing.is_empty());
    }

    /// An edge with no connection left, unused for the series TTL, goes with its series and frees
    /// its place under the cap; one with a live connection stays however old.
    #[test]
    fn unused_edges_expire_and_free_their_place() {
        const TTL: u64 = 60_000_000_000;
        let metrics = Arc::new(Metrics::default());
        let mut table = table_with_ttl(&metrics, 100, 2, TTL);
        let at = |id: u64, server: &str, ts_ns: u64| {
            let mut m = meta(id, Role::Client, "10.0.0.1:5000", server, "cli", 1);
            m.ts_ns = ts_ns;
            m
        };
        let s = 1_000_000_000;
        table.handle(Event::ConnOpen {
            meta: at(1, "192.0.2.1:80", s),
            connect_ns: 1,
        });
        table.handle(Event::ConnClose {
            meta: at(1, "192.0.2.1:80", 2 * s),
            totals: ConnTotals::default(),
        });
        table.handle(Event::ConnOpen {
            meta: at(2, "192.0.2.2:80", s),
            connect_ns: 1,
        });
        let opened = |server: &str| {
            metrics
                .encode()
                .lines()
                .filter(|l| {
                    l.starts_with("meshtap_tcp_connections_opened_total")
                        && l.contains(&format!(r#"server="{server}""#))
                })
                .count()
        };
        assert_eq!((opened("192.0.2.1"), opened("192.0.2.2")), (1, 1));
        // Not yet: the ticks run on the event clock (2 s) or the monotonic one less a margin.
        table.tick(2 * s + TTL + TICK_IDLE_MARGIN_NS, 0);
        assert_eq!(table.edges.len(), 2);
        table.tick(
            2 * s + TTL + TICK_IDLE_MARGIN_NS + EDGE_EXPIRY_EVERY_NS + 1,
            0,
        );
        assert_eq!((opened("192.0.2.1"), opened("192.0.2.2")), (0, 1));
        assert_eq!(table.edges.len(), 1);
        assert_eq!(
            value(
                &metrics,
                "meshtap_metric_series_expired_total",
                r#"metric="meshtap_tcp_connections_opened""#
            ),
            1.0
        );
        // The cap (2) has room again: a new edge is its own series, not the overflow.
        let later = 2 * s + TTL + EDGE_EXPIRY_EVERY_NS;
        table.handle(Event::ConnOpen {
            meta: at(3, "192.0.2.3:80", later),
            connect_ns: 1,
        });
        assert_eq!((opened("192.0.2.3"), opened("__overflow__")), (1, 0));
    }

    /// A connection the agent's full table turned away still has its bytes counted once: from
    /// the kernel's totals at its close, not also from its data events. It is one failed insert,
    /// not one per event; once room is made, a connection turned away is tracked again.
    #[test]
    fn a_connection_past_the_table_limit_counts_its_bytes_once() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_for(&metrics, 1, 100);
        let first = meta(1, Role::Client, "10.0.0.1:5000", "192.0.2.1:80", "cli", 1);
        let second = meta(2, Role::Client, "10.0.0.1:5001", "192.0.2.2:80", "cli", 1);
        for m in [&first, &second] {
            table.handle(Event::ConnOpen {
                meta: m.clone(),
                connect_ns: 1,
            });
        }
        assert_eq!(table.conns.len(), 1);
        for seq in 0..2 {
            table.handle(Event::Data {
                meta: second.clone(),
                bytes: 10,
                parse_bytes: 10,
                seq,
                tcp_seq: 0,
                direction: Direction::Egress,
                syscall: 1,
                payload: PayloadRange::default(),
                more: false,
            });
        }
        let failures = |metrics: &Metrics| {
            value(
                metrics,
                "meshtap_map_insert_failures_total",
                r#"map="agent_connections""#,
            )
        };
        assert_eq!(failures(&metrics), 1.0, "{}", metrics.encode());
        let third = meta(3, Role::Client, "10.0.0.1:5002", "192.0.2.3:80", "cli", 1);
        table.handle(Event::ConnOpen {
            meta: third.clone(),
            connect_ns: 1,
        });
        assert_eq!(table.turned_away.len(), 2);
        table.handle(Event::ConnClose {
            meta: second,
            totals: ConnTotals {
                bytes_sent: 20,
                ..ConnTotals::default()
            },
        });
        assert_eq!(
            value(
                &metrics,
                "meshtap_tcp_sent_bytes_total",
                r#"server="192.0.2.2""#
            ),
            20.0,
            "{}",
            metrics.encode()
        );
        assert_eq!(table.turned_away.len(), 1);
        // Room again: the third connection's next event tracks it (from there on).
        table.handle(Event::ConnClose {
            meta: first,
            totals: ConnTotals::default(),
        });
        table.handle(Event::Data {
            meta: third.clone(),
            bytes: 7,
            parse_bytes: 7,
            seq: 0,
            tcp_seq: 0,
            direction: Direction::Egress,
            syscall: 1,
            payload: PayloadRange::default(),
            more: false,
        });
        assert!(table.conns.contains_key(&third.conn_id));
        assert!(table.turned_away.is_empty());
        assert_eq!(failures(&metrics), 2.0);
        assert_eq!(
            value(
                &metrics,
                "meshtap_tcp_sent_bytes_total",
                r#"server="192.0.2.3""#
            ),
            7.0
        );
    }

    /// A socket reused by a new connection while the old one waits after its close: the old
    /// one's wait ends (as unanswered), and the new one's late bytes are not fed to it.
    #[test]
    fn a_reused_socket_ends_the_wait_of_its_old_connection() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_for(&metrics, 100, 100);
        let old = meta(1, Role::Client, "127.0.0.1:5000", "127.0.0.1:80", "cli", 1);
        open_and_request(&mut table, &old);
        table.handle(Event::ConnClose {
            meta: old.clone(),
            totals: ConnTotals::default(),
        });
        assert_eq!(table.closing.len(), 1);
        let mut new = meta(2, Role::Client, "127.0.0.1:5001", "127.0.0.1:80", "cli", 1);
        new.sk = old.sk;
        table.handle(Event::ConnOpen {
            meta: new,
            connect_ns: 1,
        });
        assert!(table.closing.is_empty());
        assert_eq!(
            value(
                &metrics,
                "http_client_request_duration_seconds_count",
                r#"http_response_status_code="""#
            ),
            1.0
        );
    }

    /// Past `CLOSE_WAIT_MAX` connections waiting, the oldest ends its wait at once, counted.
    #[test]
    fn close_waits_are_bounded() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_for(&metrics, CLOSE_WAIT_MAX + 10, 100);
        let n = CLOSE_WAIT_MAX as u64 + 3;
        for id in 1..=n {
            let client = meta(id, Role::Client, "127.0.0.1:5000", "127.0.0.1:80", "cli", 1);
            open_and_request(&mut table, &client);
            table.handle(Event::ConnClose {
                meta: client,
                totals: ConnTotals::default(),
            });
        }
        assert_eq!(table.closing.len(), CLOSE_WAIT_MAX);
        assert_eq!(
            value(&metrics, "meshtap_close_waits_cut_short_total", ""),
            3.0
        );
        let failed = || {
            value(
                &metrics,
                "http_client_request_duration_seconds_count",
                r#"http_response_status_code="""#,
            )
        };
        assert_eq!(failed(), 3.0);
        table.tick(1 + CLOSE_WAIT_NS + TICK_IDLE_MARGIN_NS, 0);
        assert_eq!(failed(), n as f64);
        assert!(table.closing.is_empty() && table.closing.order_is_empty());
    }

    #[test]
    fn late_accept_and_drain_after_close_keep_the_edge() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_for(&metrics, 100, 100);
        listen_srv(&mut table, "127.0.0.1:80", 1);
        let client = meta(1, Role::Client, "127.0.0.1:5000", "127.0.0.1:80", "cli", 1);
        table.handle(Event::ConnOpen {
            meta: client.clone(),
            connect_ns: 1,
        });
        // The client's orphaned FIN_WAIT2 turns into a timewait socket before the accept.
        table.handle(Event::ConnClose {
            meta: client.clone(),
            totals: ConnTotals::default(),
        });
        table.handle(Event::ConnOpen {
            meta: meta(2, Role::Server, "127.0.0.1:80", "127.0.0.1:5000", "srv", 1),
            connect_ns: 0,
        });
        // The client reads what was queued after its socket reached TCP_CLOSE.
        let mut drained = client.clone();
        drained.conn_id = 0;
        drained.local.set_port(0);
        table.handle(Event::Data {
            meta: drained,
            bytes: 7,
            parse_bytes: 7,
            seq: 0,
            tcp_seq: 0,
            direction: Direction::Ingress,
            syscall: 0,
            payload: PayloadRange::default(),
            more: false,
        });
        let server_edge = r#"client="cli",server="srv",server_port="80",role="server""#;
        let client_edge = r#"client="cli",server="srv",server_port="80",role="client""#;
        assert_eq!(
            value(
                &metrics,
                "meshtap_tcp_connections_opened_total",
                server_edge
            ),
            1.0
        );
        assert_eq!(
            value(&metrics, "meshtap_tcp_received_bytes_total", client_edge),
            7.0
        );
        assert_eq!(
            value(&metrics, "meshtap_tcp_received_bytes_total", "127.0.0.1"),
            0.0
        );
        assert!(table.conns.values().all(|c| c.role == Side::Server));
    }

    #[test]
    fn series_cap_folds_into_overflow() {
        let metrics = Arc::new(Metrics::default());
        let mut table = table_for(&metrics, 1000, 10);
        for i in 0..20u64 {
            table.handle(Event::ConnOpen {
                meta: meta(
                    i + 1,
                    Role::Client,
                    "10.0.0.1:5000",
                    &format!("192.0.2.{}:80", i + 1),
                    "cli",
                    1,
                ),
                connect_ns: 1,
            });
        }
        assert_eq!(table.edges.len(), 10);
        assert_eq!(
            value(
                &metrics,
                "meshtap_tcp_connections_opened_total",
                r#"server="__overflow__""#
            ),
            10.0
        );
        assert_eq!(
            value(
                &metrics,
                "meshtap_metric_series_overflow_total",
                "meshtap_tcp"
            ),
            10.0
        );
    }
}
