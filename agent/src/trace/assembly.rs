//! Trace assembly: every exchange end becomes a span (SERVER where the server process was
//! observed, CLIENT where the client was), joined into traces.
//!
//! Links, in order of precedence:
//! 1. Trace context in the request (W3C `traceparent`, B3): the span joins that trace. A B3
//!    SERVER span shares the caller's span id (Zipkin's shared-span model); a W3C SERVER span
//!    is a new child of the caller's span. A CLIENT span whose request carries a context takes
//!    the span id the application put there, so the downstream SERVER span is its child.
//! 2. Both ends on this node (`exchange::Pairing` hands them over together): the SERVER span's
//!    parent is the CLIENT span of the same request.
//! 3. A CLIENT span sent by a thread that is serving an inbound request, inside that request's
//!    time window, is a child of that SERVER span (thread-per-request servers, event loops).
//!    Not a SERVER span of a multiplexed connection (HTTP/2, gRPC): its I/O thread serves many
//!    calls at once, so time cannot tell which one a request belongs to; without a context in
//!    the request the CLIENT span stays a root (counted), never in another call's trace.
//!    The SERVER span may have been emitted already: a CLIENT exchange that only its close
//!    completes (a response body ending at the close, as proxies' HTTP/1.0 upstreams get)
//!    arrives after the request it served was answered. Emitted SERVER spans are remembered
//!    per thread for `RECENT_SERVER_NS` for that: the link wait, plus the pairing's wait (a
//!    CLIENT end whose other end was lost reaches the assembler only when the pairing gives up).
//!
//! A proxy that forwards the incoming context unchanged (nginx, HAProxy) sends a CLIENT request
//! carrying its caller's span id: once the CLIENT span is linked to the proxy's SERVER span, it
//! gets an id of its own instead of duplicating the caller's.
//!
//! An application that runs a tracer (an OpenTelemetry or Zipkin SDK) puts its own context in
//! the requests it sends: it passes its caller's on (a proxy: handled above), continues it (same
//! trace id, a span id of its own), or starts a trace of its own (it received none, or ignored
//! the one it got). In the last case the CLIENT span is linked (3.) under a SERVER span whose
//! trace is not the application's: the spans held for that request (the SERVER span, the CLIENT
//! span paired with it on this node, what is linked under them, up to the first span whose trace
//! a context named) adopt the application's trace id and its sampling decision, so that the
//! application's own spans and these form one trace. When the spans above already belong to
//! another trace (a context named it, or an earlier call made while serving the same request
//! took them into its own: an application that starts a trace per call), the CLIENT span and
//! what is under it stay in the application's trace, cut from
//! their SERVER span; when that SERVER span was emitted already, nothing is rewritten. Both are
//! counted in `meshtap_spans_unmerged_total{reason}`. A process seen sending contexts it
//! created is *instrumented*: with `--instrumented-spans skip` its SERVER spans, and its CLIENT
//! spans that carry a context, are not emitted (its SDK reports them); their children are linked
//! to what the SDK's spans are known by (the context's span id) or to the nearest span emitted.
//!
//! Exchanges complete bottom-up (the callee's response before the caller's), so a span waits
//! up to `LINK_WAIT_NS` for the span that will be its parent; trace ids are assigned top-down
//! once a root is known. What cannot be linked this way (async runtimes and worker pools that
//! hand a request to another thread, a parent that takes longer than the wait, a server end
//! whose client end on this node never paired) becomes a root of its own trace and is counted
//! in `meshtap_spans_unlinked_total`.

use std::collections::VecDeque;

use crate::{
    exchange::{Observed, Paired, RequestKey},
    fast::Map,
    protocol::{
        Side, SpanOptions,
        context::{Format, Found, TraceContext},
    },
    trace::{
        admission::StoreAdmission,
        remote::{Covers, RemoteContext},
        span::{Remote, Resource, Span, SpanKind, Status},
    },
};

/// How long a span waits for its parent to complete.
pub const LINK_WAIT_NS: u64 = 2_000_000_000;
/// Spans waiting at once; beyond, the oldest are emitted unlinked.
const MAX_WAITING: usize = 20_000;
/// Slack when checking that a child lies inside its parent's time window. A child must still
/// start before its parent ends: on a keep-alive connection an event-loop proxy (nginx) answers
/// one request and sends the next one's upstream call within the slack.
const WINDOW_SLACK_NS: u64 = 1_000_000;
/// How long an emitted SERVER span is remembered for the CLIENT spans of its thread: an end can
/// wait `PAIR_WAIT_NS` in the pairing before it reaches the assembler.
const RECENT_SERVER_NS: u64 = LINK_WAIT_NS + crate::exchange::PAIR_WAIT_NS;
/// Emitted SERVER spans remembered per thread, and in all (beyond, new ones are not).
const RECENT_PER_THREAD: usize = 16;
const MAX_RECENT: usize = 20_000;
/// Instrumented processes remembered at once (beyond, new ones are not, and counted), and for
/// how long after their last context.
pub const MAX_INSTRUMENTED: usize = 4096;
const INSTRUMENTED_TTL_NS: u64 = 600_000_000_000;

/// What meshtap emits of a process that runs a tracer of its own (`--instrumented-spans`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InstrumentedSpans {
    /// Every span, the instrumented process's too (they sit beside its SDK's in the trace).
    #[default]
    Report,
    /// Not the instrumented process's SERVER spans nor its CLIENT spans with a context: its SDK
    /// reports them.
    Skip,
}

/// A SERVER span already emitted, for CLIENT spans of its thread that complete after it.
#[derive(Clone, Copy)]
struct EmittedServer {
    span_id: u64,
    /// Its own parent's id, if any.
    parent_id: Option<u64>,
    trace_id: u128,
    start_ns: u64,
    end_ns: u64,
    debug: bool,
    sampled: Option<bool>,
    /// What CLIENT spans of its request take as parent: its id, or when it was skipped
    /// (`InstrumentedSpans::Skip`) the nearest span emitted.
    children_parent: Option<u64>,
    /// Its arrival time, monotonic ns.
    now_ns: u64,
}

struct Node {
    input: Observed,
    /// Ids stay numbers until a span is built: most spans are never built (sampled out or
    /// declined by the store).
    span_id: u64,
    /// Known trace id (from a context) before linking.
    trace_id: Option<u128>,
    /// Parent span id when it comes from the context (not from another node).
    external_parent: Option<u64>,
    /// Parent node, when inferred.
    parent: Option<u64>,
    children: Vec<u64>,
    /// Whether this span may still get a parent by inference.
    awaits_parent: bool,
    /// A SERVER span held for its context from the client's node (see `trace::remote`).
    awaits_remote: bool,
    /// A CLIENT span whose context is published for the server's node.
    publish: bool,
    debug: bool,
    shared: bool,
    sampled: Option<bool>,
    /// A CLIENT span whose thread's SERVER span of that time was emitted already, in another
    /// trace than its context's: if nothing else adopts it, it is unmerged, not unlinked.
    missed_emitted: bool,
}

/// Assembled spans, sampled, ready for export.
#[derive(Default)]
pub struct Assembled {
    /// For the store and, when one is configured, the collectors.
    pub spans: Vec<Span>,
    /// For the collectors only: the store declined their trace (see `admission`).
    pub export_only: Vec<Span>,
    /// Sampled spans the store declined (whether or not a collector took them).
    pub store_declined: u64,
    /// Spans whose parent was expected but not found.
    pub unlinked: u64,
    /// Spans whose request carried a malformed trace context.
    pub invalid_context: u64,
    /// Spans dropped because their trace context said not sampled.
    pub not_sampled: u64,
    /// Requests whose application trace could not be joined: the SERVER span was emitted
    /// already (`emitted`), the spans above belong to another trace (`other_trace`).
    pub unmerged_emitted: u64,
    pub unmerged_other_trace: u64,
    /// Spans of instrumented processes not emitted (`InstrumentedSpans::Skip`).
    pub instrumented_skipped: u64,
    /// Instrumented processes not remembered: `MAX_INSTRUMENTED` were.
    pub instrumented_untracked: u64,
    /// SERVER spans whose client's node was asked for its context and did not give it within
    /// the link wait: roots.
    pub unlinked_remote: u64,
    /// SERVER spans linked to a CLIENT span of another node.
    pub linked_remote: u64,
    /// Keys to look up on the clients' nodes (SERVER spans now held for the answer).
    pub lookups: Vec<RequestKey>,
    /// Contexts of CLIENT spans to other nodes, for their agents.
    pub published: Vec<(RequestKey, RemoteContext)>,
}

pub struct SpanAssembler {
    nodes: Map<u64, Node>,
    order: VecDeque<u64>,
    next_key: u64,
    /// CLIENT nodes waiting for a SERVER node of the same thread: (pid, tid) -> keys.
    clients_by_thread: Map<(u32, u32), VecDeque<u64>>,
    /// Processes seen serving requests recently: a CLIENT span of theirs without a parent is
    /// unlinked, not a genuine root.
    serving: Map<u32, u64>,
    /// SERVER spans emitted in the last `RECENT_SERVER_NS`, by thread, oldest first.
    emitted_servers: Map<(u32, u32), VecDeque<EmittedServer>>,
    emitted_count: usize,
    rng: u64,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, ns.
    epoch_offset_ns: i128,
    sampling_ratio: f64,
    keep_errors: bool,
    /// What spans carry (database query text).
    span_options: SpanOptions,
    /// Whether a collector takes every sampled span (then spans the store declines are still
    /// built).
    exporting: bool,
    admission: StoreAdmission,
    instrumented_spans: InstrumentedSpans,
    /// Processes seen sending contexts they created: pid -> when last seen.
    instrumented: Map<u32, u64>,
    /// Trees cut off by `join_application_trace`, to finish once the exchange is added.
    cut: Vec<u64>,
    /// Cross-node linking: which clients' nodes can be asked, and the SERVER spans held for
    /// an answer, by their request's key.
    remote: Option<Covers>,
    awaiting_remote: Map<RequestKey, u64>,
}

/// Where the spans of one emitted tree go.
struct Outputs {
    debug: bool,
    sampled: Option<bool>,
    /// The store's decision, asked for the first kept span.
    store: Option<bool>,
    /// Arrival time of the tree's root, for the store's rate.
    now_ns: u64,
}

impl SpanAssembler {
    /// `sampling_ratio` applies to traces without a sampling decision of their own; a context
    /// that says sampled (or debug) is kept, one that says not sampled is dropped.
    pub fn new(seed: u64, sampling_ratio: f64, keep_errors: bool) -> Self {
        SpanAssembler {
            sampling_ratio,
            keep_errors,
            nodes: Map::default(),
            order: VecDeque::new(),
            next_key: 0,
            clients_by_thread: Map::default(),
            serving: Map::default(),
            emitted_servers: Map::default(),
            emitted_count: 0,
            rng: seed | 1,
            epoch_offset_ns: 0,
            exporting: false,
            admission: StoreAdmission::new(0),
            span_options: SpanOptions::default(),
            instrumented_spans: InstrumentedSpans::Report,
            instrumented: Map::default(),
            cut: Vec::new(),
            remote: None,
            awaiting_remote: Map::default(),
        }
    }

    /// Links SERVER spans to the CLIENT spans of other nodes (see `trace::remote`): a SERVER
    /// span of a request without context whose client `covers` accepts waits for
    /// [`resolve_remote`](Self::resolve_remote); CLIENT spans whose server is not on this node
    /// are published.
    pub fn set_remote(&mut self, covers: Covers) {
        self.remote = Some(covers);
    }

    /// What is emitted of instrumented processes.
    pub fn with_instrumented_spans(mut self, mode: InstrumentedSpans) -> Self {
        self.instrumented_spans = mode;
        self
    }

    /// What spans carry beyond the defaults.
    pub fn with_span_options(mut self, options: SpanOptions) -> Self {
        self.span_options = options;
        self
    }

    /// Spans go to collectors (`exporting`) and to a store that admits traces as `admission`
    /// says. Without this, every sampled span is built and goes to the store.
    pub fn with_outputs(mut self, exporting: bool, admission: StoreAdmission) -> Self {
        self.exporting = exporting;
        self.admission = admission;
        self
    }

    /// Sets the monotonic-to-wall-clock offset (refreshed by the caller's clock).
    pub fn set_epoch_offset(&mut self, offset_ns: i128) {
        self.epoch_offset_ns = offset_ns;
    }

    fn random_u64(&mut self) -> u64 {
        // xorshift64*: ids need to be unique, not secret.
        loop {
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let v = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
            if v != 0 {
                return v;
            }
        }
    }

    fn new_span_id(&mut self) -> u64 {
        self.random_u64()
    }

    fn new_trace_id(&mut self) -> u128 {
        (u128::from(self.random_u64()) << 64) | u128::from(self.random_u64())
    }

    /// Adds one exchange, both its ends or one alone; appends what became final to `out`.
    pub fn add(&mut self, paired: Paired, out: &mut Assembled) {
        match paired {
            Paired::Both { client, server } => {
                let c = self.insert(client, out);
                let s = self.insert(server, out);
                // The server's parent is the client end of the same request (rule 2).
                self.link(s, c);
                self.adopt_thread_children(s, out);
                self.settle(c, out);
            }
            Paired::Alone {
                end,
                partner_expected,
            } => {
                let side = end.side;
                let k = self.insert(end, out);
                if !partner_expected {
                    self.mark_remote(k);
                }
                if side == Side::Server {
                    // Its client end is a process on this node whose observation never paired:
                    // a parent was expected (unless a context names one).
                    if partner_expected && self.nodes.get(&k).is_some_and(|n| n.trace_id.is_none())
                    {
                        out.unlinked += 1;
                    }
                    self.adopt_thread_children(k, out);
                }
                self.settle(k, out);
            }
        }
        while let Some(cut) = self.cut.pop() {
            self.finish(cut, out);
        }
        while self.nodes.len() > MAX_WAITING {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.expire(oldest, out);
        }
    }

    /// Makes the node of one end: its ids from the request's context, whether it waits for a
    /// parent (a CLIENT span of a process that serves requests, rule 3).
    fn insert(&mut self, input: Observed, out: &mut Assembled) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        let ctx: Option<TraceContext> = match &input.exchange.context {
            Found::Valid(ctx) => Some(ctx.clone()),
            Found::Invalid => {
                out.invalid_context += 1;
                None
            }
            Found::None => None,
        };
        let mut node = Node {
            span_id: 0,
            trace_id: None,
            external_parent: None,
            parent: None,
            children: Vec::new(),
            awaits_parent: false,
            awaits_remote: false,
            publish: false,
            debug: false,
            shared: false,
            sampled: None,
            missed_emitted: false,
            input,
        };
        match (&ctx, node.input.side) {
            (Some(ctx), Side::Server) => {
                node.trace_id = Some(hex_u128(&ctx.trace_id));
                node.debug = ctx.debug;
                node.sampled = ctx.sampled;
                match ctx.format {
                    Format::B3 => {
                        node.span_id = hex_u64(&ctx.span_id);
                        node.external_parent = ctx.parent_id.as_deref().map(hex_u64);
                        node.shared = true;
                    }
                    Format::W3c => {
                        node.span_id = self.new_span_id();
                        node.external_parent = Some(hex_u64(&ctx.span_id));
                    }
                }
            }
            (Some(ctx), Side::Client) => {
                node.trace_id = Some(hex_u128(&ctx.trace_id));
                node.debug = ctx.debug;
                node.sampled = ctx.sampled;
                node.span_id = hex_u64(&ctx.span_id);
                node.external_parent = ctx.parent_id.as_deref().map(hex_u64);
                // Even with a parent in the context (B3): if the process forwarded its caller's
                // context unchanged, the id is the caller's, and only the link to this
                // process's SERVER span tells (see `link`).
                node.awaits_parent = node.input.in_server_process;
                if !node.input.in_server_process {
                    // It serves nothing: the context is its own.
                    self.mark_instrumented(node.input.pid, node.input.now_ns, out);
                }
            }
            (None, Side::Server) => node.span_id = self.new_span_id(),
            (None, Side::Client) => {
                node.span_id = self.new_span_id();
                node.awaits_parent = node.input.in_server_process;
            }
        }
        if node.input.side == Side::Server {
            self.serving.insert(node.input.pid, node.input.now_ns);
        } else {
            self.link_to_emitted_server(&mut node, ctx.as_ref(), out);
        }
        self.nodes.insert(key, node);
        self.order.push_back(key);
        key
    }

    /// A SERVER node adopts the CLIENT nodes of its thread that were waiting for it and lie in
    /// its time window (rule 3).
    fn adopt_thread_children(&mut self, key: u64, out: &mut Assembled) {
        let Some(node) = self.nodes.get(&key) else {
            return;
        };
        // Many calls share the I/O thread of a multiplexed connection: the rule does not hold.
        if node.input.exchange.multiplexed() {
            return;
        }
        let thread = (node.input.pid, node.input.tid);
        let (start, end) = (node.input.exchange.start_ns, node.input.exchange.end_ns);
        let Some(waiting) = self.clients_by_thread.get_mut(&thread) else {
            return;
        };
        // Newest first: a client span that completed before this request started cannot be
        // inside it, nor can any older one (they arrive in completion order, give or take the
        // slack), so the scan stops there instead of visiting every span the thread has
        // waiting.
        let mut adopted = Vec::new();
        for k in waiting.iter().rev() {
            let Some(c) = self.nodes.get(k) else {
                continue;
            };
            if c.input.now_ns + WINDOW_SLACK_NS < start {
                break;
            }
            if c.parent.is_none()
                && c.input.exchange.start_ns + WINDOW_SLACK_NS >= start
                && c.input.exchange.start_ns < end
                && c.input.exchange.end_ns <= end + WINDOW_SLACK_NS
            {
                adopted.push(*k);
            }
        }
        if !adopted.is_empty() {
            waiting.retain(|k| !adopted.contains(k));
        }
        if waiting.is_empty() {
            self.clients_by_thread.remove(&thread);
        }
        // In arrival order: the first call whose application trace differs decides the trace
        // of the spans above (see `join_application_trace`).
        for child in adopted.into_iter().rev() {
            let passed_through = self.link(child, key);
            self.join_application_trace(child, key, passed_through, out);
        }
    }

    /// After `child` (a CLIENT span, with what is linked under it) was linked under `parent`, a
    /// SERVER span of its thread (3.): if the child's request carries a context of the
    /// application's own, or a trace the child's subtree adopted, the spans held above join that
    /// trace, or the child is cut from them when they are in another one (see the module
    /// documentation).
    fn join_application_trace(
        &mut self,
        child: u64,
        parent: u64,
        passed_through: bool,
        out: &mut Assembled,
    ) {
        let Some(c) = self.nodes.get(&child) else {
            return;
        };
        if !passed_through && matches!(c.input.exchange.context, Found::Valid(_)) {
            let (pid, now) = (c.input.pid, c.input.now_ns);
            self.mark_instrumented(pid, now, out);
        }
        let Some(c) = self.nodes.get(&child) else {
            return;
        };
        let Some(trace_id) = c.trace_id else {
            return;
        };
        let (sampled, debug) = (c.sampled, c.debug);
        // Up to the first span whose trace is known, or the root (the tree's trace then comes
        // from this child). Bounded by the tree's depth.
        let mut at = parent;
        loop {
            let Some(n) = self.nodes.get_mut(&at) else {
                return;
            };
            match (n.trace_id, n.parent) {
                (Some(t), _) if t == trace_id => return,
                (Some(_), _) => break,
                (None, Some(up)) => at = up,
                (None, None) => {
                    n.trace_id = Some(trace_id);
                    n.sampled = sampled;
                    n.debug = debug;
                    return;
                }
            }
        }
        // Another trace above: the child and its subtree stay in the application's, a tree of
        // their own.
        out.unmerged_other_trace += 1;
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children.retain(|k| *k != child);
        }
        if let Some(c) = self.nodes.get_mut(&child) {
            c.parent = None;
            c.awaits_parent = false;
        }
        self.cut.push(child);
    }

    /// Remembers that process `pid` sends contexts it created.
    fn mark_instrumented(&mut self, pid: u32, now_ns: u64, out: &mut Assembled) {
        if let Some(seen) = self.instrumented.get_mut(&pid) {
            *seen = (*seen).max(now_ns);
        } else if self.instrumented.len() < MAX_INSTRUMENTED {
            self.instrumented.insert(pid, now_ns);
        } else {
            out.instrumented_untracked += 1;
        }
    }

    /// Whether `node` is a span its process's own tracer reports, not to emit.
    fn skipped(&self, node: &Node) -> bool {
        self.instrumented_spans == InstrumentedSpans::Skip
            && self.instrumented.contains_key(&node.input.pid)
            && (node.input.side == Side::Server
                || matches!(node.input.exchange.context, Found::Valid(_)))
    }

    /// An end whose other end is not on this node (see `trace::remote`): a SERVER span without
    /// context whose client's node can be asked waits for its answer; a CLIENT span is
    /// published when emitted.
    fn mark_remote(&mut self, k: u64) {
        let Some(covers) = &self.remote else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&k) else {
            return;
        };
        let Some(key) = node.input.key else {
            return;
        };
        match node.input.side {
            Side::Client => node.publish = true,
            Side::Server => {
                node.awaits_remote = node.trace_id.is_none()
                    && !self.awaiting_remote.contains_key(&key)
                    && covers(key.client.ip());
            }
        }
    }

    /// A node that waits for its parent goes in its thread's queue, one that waits for its
    /// client's node is looked up there; any other is final now.
    fn settle(&mut self, key: u64, out: &mut Assembled) {
        let Some(node) = self.nodes.get(&key) else {
            return;
        };
        if node.awaits_parent {
            let thread = (node.input.pid, node.input.tid);
            self.clients_by_thread
                .entry(thread)
                .or_default()
                .push_back(key);
        } else if node.awaits_remote {
            if let Some(request) = node.input.key {
                self.awaiting_remote.insert(request, key);
                out.lookups.push(request);
            }
        } else {
            self.finish(key, out);
        }
    }

    /// Links a CLIENT span to the SERVER span its thread served it in, if that one was emitted
    /// already (see the module documentation, 3.). Not to a span of another trace than the
    /// one the request's context names.
    fn link_to_emitted_server(
        &mut self,
        node: &mut Node,
        ctx: Option<&TraceContext>,
        out: &mut Assembled,
    ) {
        let thread = (node.input.pid, node.input.tid);
        let (start, end) = (node.input.exchange.start_ns, node.input.exchange.end_ns);
        let Some(recent) = self.emitted_servers.get(&thread) else {
            return;
        };
        let inside = |s: &&EmittedServer| {
            start + WINDOW_SLACK_NS >= s.start_ns
                && start < s.end_ns
                && end <= s.end_ns + WINDOW_SLACK_NS
        };
        let Some(server) = recent
            .iter()
            .rev()
            .filter(inside)
            .find(|s| node.trace_id.is_none_or(|t| t == s.trace_id))
            .copied()
        else {
            // Served, in that time, only by requests already emitted in another trace: the
            // application started a trace of its own there (unless a request still held
            // adopts it).
            node.missed_emitted = recent.iter().any(|s| inside(&s));
            return;
        };
        if node.span_id == server.span_id || Some(node.span_id) == server.parent_id {
            node.span_id = self.new_span_id();
        } else if ctx.is_some() {
            self.mark_instrumented(node.input.pid, node.input.now_ns, out);
        }
        node.trace_id = Some(server.trace_id);
        node.external_parent = server.children_parent;
        if ctx.is_none() {
            node.debug = server.debug;
            node.sampled = server.sampled;
        }
        node.awaits_parent = false;
    }

    /// Remembers an emitted SERVER span for the CLIENT spans of its thread still to come.
    fn remember_server(
        &mut self,
        node: &Node,
        trace_id: u128,
        parent_id: Option<u64>,
        children_parent: Option<u64>,
        outputs: &Outputs,
    ) {
        if self.emitted_count >= MAX_RECENT || node.input.exchange.multiplexed() {
            return;
        }
        let recent = self
            .emitted_servers
            .entry((node.input.pid, node.input.tid))
            .or_default();
        if recent.len() >= RECENT_PER_THREAD {
            recent.pop_front();
        } else {
            self.emitted_count += 1;
        }
        recent.push_back(EmittedServer {
            span_id: node.span_id,
            parent_id,
            trace_id,
            start_ns: node.input.exchange.start_ns,
            end_ns: node.input.exchange.end_ns,
            debug: outputs.debug,
            sampled: outputs.sampled,
            children_parent,
            now_ns: node.input.now_ns,
        });
    }

    /// `child`'s parent is `parent`. Returns whether the child's id was its parent's (or its
    /// parent's parent's): a proxy passed its caller's context on, and the child got an id of its
    /// own.
    fn link(&mut self, child: u64, parent: u64) -> bool {
        let parent_ids = self
            .nodes
            .get(&parent)
            .map(|p| (p.span_id, p.external_parent));
        let Some((parent_span, parent_of_parent)) = parent_ids else {
            return false;
        };
        let mut fresh_id = None;
        if let Some(c) = self.nodes.get(&child)
            && !c.shared
            && (c.span_id == parent_span || Some(c.span_id) == parent_of_parent)
        {
            // A proxy passed the incoming context through unchanged: the id belongs to
            // another span, so this one needs its own.
            fresh_id = Some(());
        }
        let new_id = fresh_id.map(|_| self.new_span_id());
        if let Some(c) = self.nodes.get_mut(&child) {
            c.parent = Some(parent);
            c.awaits_parent = false;
            if let Some(id) = new_id {
                c.span_id = id;
            }
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children.push(child);
        }
        new_id.is_some()
    }

    /// Emits `key` and its subtree if its root is final.
    fn finish(&mut self, key: u64, out: &mut Assembled) {
        // Walk up: the root must not be waiting.
        let mut root = key;
        while let Some(p) = self.nodes.get(&root).and_then(|n| n.parent) {
            root = p;
        }
        if self
            .nodes
            .get(&root)
            .is_none_or(|n| n.awaits_parent || n.awaits_remote)
        {
            return;
        }
        let trace_id = match self.nodes.get(&root).and_then(|n| n.trace_id) {
            Some(t) => t,
            None => self.new_trace_id(),
        };
        let mut outputs = match self.nodes.get(&root) {
            Some(n) => Outputs {
                debug: n.debug,
                sampled: n.sampled,
                store: None,
                now_ns: n.input.now_ns,
            },
            None => return,
        };
        self.emit_tree(root, trace_id, None, None, &mut outputs, out);
    }

    /// Emits `key`'s subtree: samples each span, asks the store once, and builds only the
    /// spans someone takes.
    /// `parent_span`: the id of the span emitted as this one's parent, and `grandparent` that
    /// one's parent id.
    fn emit_tree(
        &mut self,
        key: u64,
        trace_id: u128,
        parent_span: Option<u64>,
        grandparent: Option<u64>,
        outputs: &mut Outputs,
        out: &mut Assembled,
    ) {
        let Some(mut node) = self.nodes.remove(&key) else {
            return;
        };
        let mut parent_id = parent_span.or(node.external_parent);
        if node.shared && parent_span.is_some() {
            if parent_span == Some(node.span_id) {
                // B3: the server half of its CLIENT parent's span, with the same parent.
                parent_id = grandparent;
            } else {
                // Its CLIENT end took an id of its own (a proxy passed its caller's context
                // through): the shared id is the caller's, so this is a child with its own.
                node.span_id = self.new_span_id();
                node.shared = false;
            }
        }
        let skip = self.skipped(&node);
        // What its children name as parent (and their parent's parent, for a B3 SERVER child
        // that shares its CLIENT parent's id). A skipped CLIENT span's id is its SDK's span's (the
        // context's), whose parent the B3 context may name; a skipped SERVER span's SDK twin
        // has an id nobody here knows: its children take the span above (for a B3 SERVER span,
        // its caller's CLIENT span, whose id it shares).
        let (children_parent, children_grandparent) = match (skip, node.input.side) {
            (false, _) => (Some(node.span_id), parent_id),
            (true, Side::Client) => (Some(node.span_id), node.external_parent.or(parent_id)),
            (true, Side::Server) if node.shared => (Some(node.span_id), parent_id),
            (true, Side::Server) => (parent_id, None),
        };
        for child in &node.children {
            self.emit_tree(
                *child,
                trace_id,
                children_parent,
                children_grandparent,
                outputs,
                out,
            );
        }
        if node.input.side == Side::Server {
            self.remember_server(&node, trace_id, parent_id, children_parent, outputs);
        }
        if node.publish
            && let Some(request) = node.input.key
        {
            let sampled = outputs.debug
                || outputs
                    .sampled
                    .unwrap_or_else(|| sampled_by_ratio(trace_id, self.sampling_ratio));
            out.published.push((
                request,
                RemoteContext {
                    trace_id,
                    span_id: node.span_id,
                    sampled,
                },
            ));
        }
        if skip {
            out.instrumented_skipped += 1;
            return;
        }
        let keep = outputs.debug
            || (self.keep_errors && node.input.exchange.failed(node.input.side))
            || match outputs.sampled {
                Some(decision) => decision,
                None => sampled_by_ratio(trace_id, self.sampling_ratio),
            };
        if !keep {
            out.not_sampled += 1;
            return;
        }
        let store = *outputs
            .store
            .get_or_insert_with(|| self.admission.admit(trace_id, outputs.now_ns));
        if !store {
            out.store_declined += 1;
            if !self.exporting {
                return;
            }
        }
        let span = self.to_span(node, trace_id, parent_id, outputs.debug);
        if store {
            out.spans.push(span);
        } else {
            out.export_only.push(span);
        }
    }

    fn to_span(&self, node: Node, trace_id: u128, parent_id: Option<u64>, debug: bool) -> Span {
        let input = node.input;
        let ex = &input.exchange;
        let mut attributes = Vec::with_capacity(6);
        ex.attributes
            .span_attributes(&self.span_options, &mut attributes);
        let status = if ex.failed(input.side) {
            Status::Error {
                error_type: ex.error_type(),
            }
        } else {
            Status::Ok
        };
        let start_unix_ns = (ex.start_ns as i128 + self.epoch_offset_ns).max(0) as u64;
        Span {
            trace_id,
            span_id: node.span_id,
            parent_id,
            kind: match input.side {
                Side::Server => SpanKind::Server,
                Side::Client => SpanKind::Client,
            },
            name: ex.attributes.span_name(),
            start_unix_ns,
            end_unix_ns: start_unix_ns + ex.end_ns.saturating_sub(ex.start_ns),
            status,
            resource: Resource {
                service: input.names.service.clone(),
                pid: input.pid,
                executable: input.names.executable.clone(),
                pod: input.names.pod.clone(),
            },
            local: input.local,
            remote: Remote {
                service: input.names.peer_name().map(Into::into),
                addr: input.remote,
            },
            attributes,
            shared: node.shared,
            debug,
        }
    }

    /// Stops waiting for the parent of `key`'s root: it becomes a root, and its tree is
    /// emitted.
    fn expire(&mut self, key: u64, out: &mut Assembled) {
        let mut key = key;
        while let Some(p) = self.nodes.get(&key).and_then(|n| n.parent) {
            key = p;
        }
        let Some(node) = self.nodes.get_mut(&key) else {
            return;
        };
        if node.awaits_remote {
            // Its client's node did not answer in time.
            node.awaits_remote = false;
            out.unlinked_remote += 1;
            if let Some(request) = node.input.key {
                self.awaiting_remote.remove(&request);
            }
        }
        if node.awaits_parent {
            // Only CLIENT spans wait (rule 3): a process seen serving expected one.
            node.awaits_parent = false;
            let pid = node.input.pid;
            let thread = (pid, node.input.tid);
            if node.missed_emitted {
                // Its context is the application's own (it named another trace).
                let now = node.input.now_ns;
                out.unmerged_emitted += 1;
                self.mark_instrumented(pid, now, out);
            } else if self.serving.contains_key(&pid) {
                out.unlinked += 1;
            }
            if let Some(v) = self.clients_by_thread.get_mut(&thread) {
                remove_key(v, key, &self.nodes);
                if v.is_empty() {
                    self.clients_by_thread.remove(&thread);
                }
            }
        }
        self.finish(key, out);
    }

    /// The client's node answered for a SERVER span held for it: it joins the client's trace
    /// as a child of the client's span, with the client's sampling decision, and is emitted
    /// with what is linked under it. An answer for a span no longer held (emitted when its
    /// wait ended, or never held here) changes nothing.
    pub fn resolve_remote(
        &mut self,
        request: RequestKey,
        context: RemoteContext,
        out: &mut Assembled,
    ) {
        let Some(key) = self.awaiting_remote.remove(&request) else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&key) else {
            return;
        };
        if !node.awaits_remote {
            return;
        }
        node.awaits_remote = false;
        node.trace_id = Some(context.trace_id);
        node.external_parent = Some(context.span_id);
        node.sampled = Some(context.sampled);
        out.linked_remote += 1;
        self.finish(key, out);
    }

    /// Periodic work: spans that waited long enough for a parent become roots.
    pub fn tick(&mut self, now_ns: u64, out: &mut Assembled) {
        while let Some(&key) = self.order.front() {
            match self.nodes.get(&key) {
                Some(n) if now_ns.saturating_sub(n.input.now_ns) <= LINK_WAIT_NS => break,
                Some(n) if n.parent.is_some() => {
                    // Emitted with its root, which is in the queue itself.
                    self.order.pop_front();
                }
                Some(_) => {
                    self.order.pop_front();
                    self.expire(key, out);
                }
                None => {
                    self.order.pop_front();
                }
            }
        }
        self.serving
            .retain(|_, seen| now_ns.saturating_sub(*seen) < 60 * LINK_WAIT_NS);
        self.instrumented
            .retain(|_, seen| now_ns.saturating_sub(*seen) < INSTRUMENTED_TTL_NS);
        let mut forgotten = 0;
        self.emitted_servers.retain(|_, recent| {
            while recent
                .front()
                .is_some_and(|s| now_ns.saturating_sub(s.now_ns) > RECENT_SERVER_NS)
            {
                recent.pop_front();
                forgotten += 1;
            }
            !recent.is_empty()
        });
        self.emitted_count -= forgotten;
    }
}

/// Removes `key` from a queue in arrival order, with the keys of spans already emitted that
/// precede it. Spans expire oldest first, so it is almost always at the front then: no scan of
/// the whole queue (a busy client thread has thousands waiting).
fn remove_key<V>(queue: &mut VecDeque<u64>, key: u64, nodes: &Map<u64, V>) {
    while let Some(front) = queue.front() {
        if *front == key {
            queue.pop_front();
            return;
        }
        if nodes.contains_key(front) {
            break;
        }
        queue.pop_front();
    }
    if let Some(i) = queue.iter().position(|k| *k == key) {
        queue.remove(i);
    }
}

/// Whether a trace is kept by a ratio sampler: decided from the trace id alone (its low 64
/// bits), so that every node keeps the same traces.
pub fn sampled_by_ratio(trace_id: u128, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    (trace_id as u64 as f64) < ratio * (u64::MAX as f64)
}

/// A context id's value. Contexts hold validated lower-hex ids (`context::extract`).
fn hex_u64(id: &str) -> u64 {
    u64::from_str_radix(id, 16).unwrap_or(0)
}

fn hex_u128(id: &str) -> u128 {
    u128::from_str_radix(id, 16).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    //! Scenarios as the connection table produces them: ends one at a time, through the
    //! pairing of both ends (`exchange::Pairing`) into the assembler; spans read as Zipkin
    //! would receive them.
    use std::{net::SocketAddr, sync::Arc};

    use super::*;
    use crate::{
        exchange::{ExchangeNames, Pairing},
        export::zipkin::model::{Kind, Span},
        metrics::Registry,
        protocol::http1::{HttpExchange, Outcome},
    };

    const MS: u64 = 1_000_000;

    /// What the assembler emitted, as Zipkin spans.
    #[derive(Default)]
    struct Out {
        spans: Vec<Span>,
        export_only: Vec<Span>,
        store_declined: u64,
        unlinked: u64,
        invalid_context: u64,
        not_sampled: u64,
        unmerged_emitted: u64,
        unmerged_other_trace: u64,
        instrumented_skipped: u64,
    }

    impl Out {
        fn take(&mut self, a: Assembled) {
            self.spans.extend(a.spans.iter().map(Span::from_domain));
            self.export_only
                .extend(a.export_only.iter().map(Span::from_domain));
            self.store_declined += a.store_declined;
            self.unlinked += a.unlinked;
            self.invalid_context += a.invalid_context;
            self.not_sampled += a.not_sampled;
            self.unmerged_emitted += a.unmerged_emitted;
            self.unmerged_other_trace += a.unmerged_other_trace;
            self.instrumented_skipped += a.instrumented_skipped;
        }
    }

    /// The pairing and the assembler, fed one end at a time.
    struct Asm {
        pairing: Pairing,
        asm: SpanAssembler,
    }

    impl Asm {
        fn new(seed: u64, sampling_ratio: f64, keep_errors: bool) -> Self {
            Asm {
                pairing: Pairing::new(&Registry::default()),
                asm: SpanAssembler::new(seed, sampling_ratio, keep_errors),
            }
        }

        fn with_outputs(mut self, exporting: bool, admission: StoreAdmission) -> Self {
            self.asm = self.asm.with_outputs(exporting, admission);
            self
        }

        fn add(&mut self, end: Observed, out: &mut Out) {
            let mut paired = Vec::new();
            self.pairing.add(end, &mut paired);
            for p in paired {
                let mut a = Assembled::default();
                self.asm.add(p, &mut a);
                out.take(a);
            }
        }

        fn tick(&mut self, now_ns: u64, out: &mut Out) {
            let mut paired = Vec::new();
            self.pairing.tick(now_ns, &mut paired);
            let mut a = Assembled::default();
            for p in paired {
                self.asm.add(p, &mut a);
            }
            self.asm.tick(now_ns, &mut a);
            out.take(a);
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "a test fixture spelling out every field"
    )]
    fn input(
        side: Side,
        pid: u32,
        tid: u32,
        window: (u64, u64),
        connection: (&str, &str),
        peer: Option<&str>,
        headers: &[(&'static str, &str)],
        now_ns: u64,
    ) -> Observed {
        let connection: (SocketAddr, SocketAddr) =
            (connection.0.parse().unwrap(), connection.1.parse().unwrap());
        let (local, remote) = match side {
            Side::Client => connection,
            Side::Server => (connection.1, connection.0),
        };
        Observed {
            exchange: HttpExchange {
                start_ns: window.0,
                end_ns: window.1,
                method: "GET".into(),
                version: crate::protocol::http1::Version::Http11,
                path: "/users/7".into(),
                status: Some(200),
                request_body_bytes: 0,
                response_body_bytes: 2,
                headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
                outcome: Outcome::Complete,
            }
            .into_exchange(),
            side,
            names: Arc::new(ExchangeNames {
                service: format!("svc{pid}").into(),
                executable: "python3".into(),
                peer_service: peer.map(Into::into),
                pod: None,
                peer_k8s: None,
                server_ip: None,
            }),
            pid,
            tid,
            local,
            remote,
            connection,
            in_server_process: true,
            key: None,
            now_ns,
        }
    }

    fn empty() -> Out {
        Out::default()
    }

    fn by_service<'a>(spans: &'a [Span], service: &str, kind: Kind) -> &'a Span {
        spans
            .iter()
            .find(|s| {
                s.kind == Some(kind)
                    && s.local_endpoint
                        .as_ref()
                        .and_then(|e| e.service_name.as_deref())
                        == Some(service)
            })
            .unwrap_or_else(|| panic!("no {kind:?} span of {service}"))
    }

    /// One agent per node, linked through `trace::remote`: what one node publishes, the other
    /// looks up (the peer exchange, done by hand here).
    struct Node3 {
        asm: SpanAssembler,
        out: Out,
        lookups: Vec<RequestKey>,
        published: Vec<(RequestKey, RemoteContext)>,
        unlinked_remote: u64,
        linked_remote: u64,
    }

    impl Node3 {
        fn new(seed: u64) -> Self {
            let mut asm = SpanAssembler::new(seed, 1.0, false);
            asm.set_remote(Arc::new(|_| true));
            Node3 {
                asm,
                out: empty(),
                lookups: Vec::new(),
                published: Vec::new(),
                unlinked_remote: 0,
                linked_remote: 0,
            }
        }

        fn take(&mut self, mut a: Assembled) {
            self.lookups.append(&mut a.lookups);
            self.published.append(&mut a.published);
            self.unlinked_remote += a.unlinked_remote;
            self.linked_remote += a.linked_remote;
            self.out.take(a);
        }

        /// An end whose other end is on another node.
        fn add(&mut self, mut end: Observed, key: RequestKey) {
            end.key = Some(key);
            let mut a = Assembled::default();
            self.asm.add(
                Paired::Alone {
                    end,
                    partner_expected: false,
                },
                &mut a,
            );
            self.take(a);
        }

        /// Answers what `from` published for this node's lookups.
        fn answer_from(&mut self, from: &Node3) {
            let mut a = Assembled::default();
            for key in std::mem::take(&mut self.lookups) {
                match from.published.iter().find(|(k, _)| *k == key) {
                    Some((k, c)) => self.asm.resolve_remote(*k, *c, &mut a),
                    None => self.lookups.push(key),
                }
            }
            self.take(a);
        }

        fn tick(&mut self, now_ns: u64) {
            let mut a = Assembled::default();
            self.asm.tick(now_ns, &mut a);
            self.take(a);
        }
    }

    fn request_key(client: &str, seq: u32) -> RequestKey {
        RequestKey {
            client: client.parse().unwrap(),
            seq,
            ordinal: 0,
        }
    }

    /// client (node 1) -> frontend (node 2, thread 20) -> backend (node 3), no headers: the
    /// backend's SERVER span waits for node 2, whose SERVER span waits for node 1; each joins
    /// the trace above once its client's node answers.
    #[test]
    fn three_nodes_link_through_their_agents() {
        let (mut n1, mut n2, mut n3) = (Node3::new(1), Node3::new(2), Node3::new(3));
        let k1 = ("10.0.1.2:40000", "10.0.2.2:8080");
        let k2 = ("10.0.2.2:40001", "10.0.3.2:9090");
        let (key1, key2) = (request_key(k1.0, 1000), request_key(k2.0, 5000));
        // Bottom-up, as the exchanges complete.
        n3.add(
            input(
                Side::Server,
                3,
                30,
                (20 * MS, 30 * MS),
                k2,
                None,
                &[],
                31 * MS,
            ),
            key2,
        );
        assert_eq!(n3.lookups, vec![key2]);
        assert!(n3.out.spans.is_empty(), "held for node 2");
        n2.add(
            input(
                Side::Client,
                2,
                20,
                (19 * MS, 31 * MS),
                k2,
                None,
                &[],
                32 * MS,
            ),
            key2,
        );
        n2.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 40 * MS),
                k1,
                None,
                &[],
                41 * MS,
            ),
            key1,
        );
        assert_eq!(n2.lookups, vec![key1]);
        assert!(n2.out.spans.is_empty(), "held for node 1");
        n3.answer_from(&n2);
        assert!(
            n3.out.spans.is_empty(),
            "node 2 does not know its trace yet"
        );
        let mut curl = input(
            Side::Client,
            1,
            10,
            (9 * MS, 41 * MS),
            k1,
            None,
            &[],
            42 * MS,
        );
        curl.in_server_process = false;
        n1.add(curl, key1);
        assert_eq!(n1.out.spans.len(), 1, "a client serving nothing is a root");
        n2.answer_from(&n1);
        n3.answer_from(&n2);
        assert!(n2.lookups.is_empty() && n3.lookups.is_empty());

        let client = by_service(&n1.out.spans, "svc1", Kind::Client);
        let front = by_service(&n2.out.spans, "svc2", Kind::Server);
        let call = by_service(&n2.out.spans, "svc2", Kind::Client);
        let back = by_service(&n3.out.spans, "svc3", Kind::Server);
        for s in [front, call, back] {
            assert_eq!(s.trace_id, client.trace_id, "{s:?}");
        }
        assert_eq!(client.parent_id, None);
        assert_eq!(front.parent_id.as_deref(), Some(client.id.as_str()));
        assert_eq!(call.parent_id.as_deref(), Some(front.id.as_str()));
        assert_eq!(back.parent_id.as_deref(), Some(call.id.as_str()));
        assert_eq!((n2.linked_remote, n3.linked_remote), (1, 1));
        for n in [&n1, &n2, &n3] {
            assert_eq!(n.unlinked_remote, 0);
            assert_eq!(n.out.unlinked, 0);
        }
        assert_eq!(n1.published.len(), 1);
        assert_eq!(n2.published.len(), 1);
        assert!(n1.published[0].1.sampled);
    }

    /// A client's node that never answers: the SERVER span is a root once its wait ends,
    /// with what is linked under it, counted; a late answer changes nothing.
    #[test]
    fn an_unanswered_lookup_ends_with_the_link_wait() {
        let mut n2 = Node3::new(2);
        let k1 = ("10.0.1.2:40000", "10.0.2.2:8080");
        let key1 = request_key(k1.0, 1000);
        n2.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 40 * MS),
                k1,
                None,
                &[],
                41 * MS,
            ),
            key1,
        );
        n2.tick(41 * MS + LINK_WAIT_NS);
        assert!(n2.out.spans.is_empty(), "still within its wait");
        n2.tick(42 * MS + LINK_WAIT_NS);
        assert_eq!(n2.out.spans.len(), 1);
        assert_eq!(n2.out.spans[0].parent_id, None);
        assert_eq!(n2.unlinked_remote, 1);
        let mut a = Assembled::default();
        n2.asm.resolve_remote(
            key1,
            RemoteContext {
                trace_id: 5,
                span_id: 6,
                sampled: true,
            },
            &mut a,
        );
        assert!(a.spans.is_empty() && a.linked_remote == 0);
    }

    /// The sampling decision crosses the hop: a trace the client's node did not sample is not
    /// sampled on the server's node either.
    #[test]
    fn the_clients_sampling_decision_is_kept() {
        let mut n2 = Node3::new(2);
        let k1 = ("10.0.1.2:40000", "10.0.2.2:8080");
        let key1 = request_key(k1.0, 1000);
        n2.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 40 * MS),
                k1,
                None,
                &[],
                41 * MS,
            ),
            key1,
        );
        let mut a = Assembled::default();
        n2.asm.resolve_remote(
            key1,
            RemoteContext {
                trace_id: 5,
                span_id: 6,
                sampled: false,
            },
            &mut a,
        );
        assert!(a.spans.is_empty());
        assert_eq!((a.not_sampled, a.linked_remote), (1, 1));
    }

    /// client (pid 1) -> frontend (pid 2, thread 20) -> backend (pid 3), no headers, all on
    /// this node. Exchanges arrive bottom-up, as they complete.
    #[test]
    fn three_tiers_without_headers() {
        let mut asm = Asm::new(7, 1.0, false);
        let mut out = empty();
        let k1 = ("10.0.0.1:40000", "10.0.0.2:8080");
        let k2 = ("10.0.0.2:40001", "10.0.0.3:9090");
        asm.add(
            input(
                Side::Server,
                3,
                30,
                (20 * MS, 30 * MS),
                k2,
                Some("svc2"),
                &[],
                31 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Client,
                2,
                20,
                (19 * MS, 31 * MS),
                k2,
                Some("svc3"),
                &[],
                32 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 40 * MS),
                k1,
                Some("svc1"),
                &[],
                41 * MS,
            ),
            &mut out,
        );
        assert!(out.spans.is_empty(), "the tree waits for its root");
        asm.add(
            input(
                Side::Client,
                1,
                10,
                (9 * MS, 41 * MS),
                k1,
                Some("svc2"),
                &[],
                42 * MS,
            ),
            &mut out,
        );
        assert_eq!(
            out.spans.len(),
            0,
            "a client span waits for a possible server parent"
        );
        asm.tick(42 * MS + LINK_WAIT_NS + 1, &mut out);
        assert_eq!(out.spans.len(), 4);
        assert_eq!(out.unlinked, 0, "pid 1 serves nothing: a genuine root");
        let root = by_service(&out.spans, "svc1", Kind::Client);
        let fe_server = by_service(&out.spans, "svc2", Kind::Server);
        let fe_client = by_service(&out.spans, "svc2", Kind::Client);
        let be_server = by_service(&out.spans, "svc3", Kind::Server);
        assert!(out.spans.iter().all(|s| s.trace_id == root.trace_id));
        assert_eq!(root.parent_id, None);
        assert_eq!(fe_server.parent_id.as_ref(), Some(&root.id));
        assert_eq!(fe_client.parent_id.as_ref(), Some(&fe_server.id));
        assert_eq!(be_server.parent_id.as_ref(), Some(&fe_client.id));
        assert_eq!(be_server.name, "get /users/*");
        assert!(be_server.duration >= 1);
    }

    /// An event-loop proxy on a keep-alive connection answers a request and sends the next
    /// one's upstream call less than the window slack later: that call belongs to the next
    /// request, not the one that just ended.
    #[test]
    fn a_call_started_after_a_request_ended_is_not_its_child() {
        let mut asm = Asm::new(7, 1.0, false);
        let mut out = empty();
        let front = ("10.0.0.1:40000", "10.0.0.2:8080");
        let upstream = ("10.0.0.2:40001", "10.0.0.3:9090");
        let us = 1_000;
        // Request 1, answered at 20 ms (its own upstream call is not observed).
        asm.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 20 * MS),
                front,
                Some("svc1"),
                &[],
                20 * MS + us,
            ),
            &mut out,
        );
        // Request 2 arrives at 20.1 ms; its upstream call runs 20.2 to 20.8 ms.
        asm.add(
            input(
                Side::Client,
                2,
                20,
                (20 * MS + 200 * us, 20 * MS + 800 * us),
                upstream,
                Some("svc3"),
                &[],
                20 * MS + 900 * us,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Server,
                2,
                20,
                (20 * MS + 100 * us, 21 * MS),
                front,
                Some("svc1"),
                &[],
                21 * MS + us,
            ),
            &mut out,
        );
        asm.tick(22 * MS + LINK_WAIT_NS + RECENT_SERVER_NS, &mut out);
        let call = by_service(&out.spans, "svc2", Kind::Client);
        let servers: Vec<_> = out
            .spans
            .iter()
            .filter(|s| s.kind == Some(Kind::Server))
            .collect();
        assert_eq!(servers.len(), 2);
        let later = servers
            .iter()
            .max_by_key(|s| s.timestamp)
            .expect("two servers");
        assert_eq!(call.parent_id.as_ref(), Some(&later.id));
        assert_eq!(call.trace_id, later.trace_id);
    }

    /// The store takes a burst of 10 traces at 1 per second: the rest are not built without a
    /// collector, and go to the collector only with one. Later parts of a trace follow it.
    #[test]
    fn store_admission_declines_whole_traces() {
        for exporting in [false, true] {
            let mut asm = Asm::new(7, 1.0, false).with_outputs(exporting, StoreAdmission::new(1));
            let mut out = empty();
            let server = |trace: u32, parent: u32, port: u32| {
                let tp = format!("00-{trace:032x}-{parent:016x}-01");
                let conn = format!("10.0.0.1:{port}");
                input(
                    Side::Server,
                    2,
                    20,
                    (10 * MS, 20 * MS),
                    (conn.as_str(), "10.0.0.2:8080"),
                    None,
                    &[("traceparent", tp.as_str())],
                    21 * MS,
                )
            };
            for trace in 1..=15 {
                asm.add(server(trace, 1, 40000 + trace), &mut out);
            }
            // Second parts of a stored trace and of a declined one.
            asm.add(server(1, 2, 41000), &mut out);
            asm.add(server(12, 2, 41001), &mut out);
            let traces = |spans: &[Span]| -> Vec<u32> {
                spans
                    .iter()
                    .map(|s| u32::from_str_radix(&s.trace_id, 16).unwrap())
                    .collect()
            };
            let stored = traces(&out.spans);
            assert_eq!(stored, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1], "{exporting}");
            assert_eq!(out.store_declined, 6, "{exporting}");
            let exported_only = traces(&out.export_only);
            if exporting {
                assert_eq!(exported_only, [11, 12, 13, 14, 15, 12]);
            } else {
                assert!(exported_only.is_empty());
            }
            assert_eq!(out.not_sampled, 0);
        }
    }

    #[test]
    fn b3_headers_share_server_spans() {
        let mut asm = Asm::new(9, 1.0, false);
        let mut out = empty();
        let trace = "463ac35c9f6413ad48485a3953bb6124";
        let k1 = ("10.0.0.1:40000", "10.0.0.2:8080");
        let k2 = ("10.0.0.2:40001", "10.0.0.3:9090");
        let to_backend = [
            ("x-b3-traceid", trace),
            ("x-b3-spanid", "bbbbbbbbbbbbbbbb"),
            ("x-b3-parentspanid", "aaaaaaaaaaaaaaaa"),
            ("x-b3-sampled", "1"),
        ];
        let to_frontend = [("x-b3-traceid", trace), ("x-b3-spanid", "aaaaaaaaaaaaaaaa")];
        asm.add(
            input(
                Side::Server,
                3,
                30,
                (20 * MS, 30 * MS),
                k2,
                Some("svc2"),
                &to_backend,
                31 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Client,
                2,
                20,
                (19 * MS, 31 * MS),
                k2,
                Some("svc3"),
                &to_backend,
                32 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 40 * MS),
                k1,
                Some("svc1"),
                &to_frontend,
                41 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Client,
                1,
                10,
                (9 * MS, 41 * MS),
                k1,
                Some("svc2"),
                &to_frontend,
                42 * MS,
            ),
            &mut out,
        );
        asm.tick(42 * MS + LINK_WAIT_NS + 1, &mut out);
        assert_eq!(out.spans.len(), 4);
        assert!(out.spans.iter().all(|s| s.trace_id == trace));
        let fe_server = by_service(&out.spans, "svc2", Kind::Server);
        let be_server = by_service(&out.spans, "svc3", Kind::Server);
        let fe_client = by_service(&out.spans, "svc2", Kind::Client);
        assert_eq!(fe_server.id, "aaaaaaaaaaaaaaaa");
        assert!(fe_server.shared);
        assert_eq!(fe_client.id, "bbbbbbbbbbbbbbbb");
        assert_eq!(fe_client.parent_id.as_deref(), Some("aaaaaaaaaaaaaaaa"));
        assert_eq!(be_server.id, "bbbbbbbbbbbbbbbb");
        assert_eq!(be_server.parent_id.as_deref(), Some("aaaaaaaaaaaaaaaa"));
    }

    #[test]
    fn w3c_headers_make_server_children() {
        let mut asm = Asm::new(11, 1.0, false);
        let mut out = empty();
        let k2 = ("10.0.0.2:40001", "10.0.0.3:9090");
        let tp = [(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )];
        asm.add(
            input(
                Side::Server,
                3,
                30,
                (20 * MS, 30 * MS),
                k2,
                Some("svc2"),
                &tp,
                31 * MS,
            ),
            &mut out,
        );
        assert!(
            out.spans.is_empty(),
            "its client end is observed: the server span waits for the client's"
        );
        asm.add(
            input(
                Side::Client,
                2,
                20,
                (19 * MS, 31 * MS),
                k2,
                Some("svc3"),
                &tp,
                32 * MS,
            ),
            &mut out,
        );
        asm.tick(32 * MS + LINK_WAIT_NS + 1, &mut out);
        let c = by_service(&out.spans, "svc2", Kind::Client);
        assert_eq!(c.id, "00f067aa0ba902b7");
        assert_eq!(c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let s = by_service(&out.spans, "svc3", Kind::Server);
        assert_eq!(s.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(s.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(s.id, "00f067aa0ba902b7");
        assert_eq!(out.unlinked, 0);
    }

    /// Keep-alive connection, B3 contexts: the first request's client end is lost, so its
    /// server span waits in vain. The second request's client span must not pair with it
    /// (their requests carried different contexts); it pairs with its own server span.
    #[test]
    fn ends_of_different_requests_never_pair() {
        let mut asm = Asm::new(19, 1.0, false);
        let mut out = empty();
        let k = ("10.0.0.1:50000", "10.0.0.2:80");
        let b3 = |span: &'static str| {
            vec![
                ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
                ("x-b3-spanid", span),
                ("x-b3-sampled", "1"),
            ]
        };
        let (first, second) = (b3("00000000000000a1"), b3("00000000000000a2"));
        // The server of the first request (its client end lost), the client and the server of
        // the second, each arriving at `now`.
        let lost = |now| {
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 20 * MS),
                k,
                Some("svc1"),
                &first,
                now,
            )
        };
        let client = |now| {
            let mut c = input(
                Side::Client,
                1,
                10,
                (29 * MS, 41 * MS),
                k,
                Some("svc2"),
                &second,
                now,
            );
            c.in_server_process = false;
            c
        };
        let server = |now| {
            input(
                Side::Server,
                2,
                20,
                (30 * MS, 40 * MS),
                k,
                Some("svc1"),
                &second,
                now,
            )
        };
        asm.add(lost(20 * MS), &mut out);
        asm.add(client(42 * MS), &mut out);
        asm.add(server(43 * MS), &mut out);
        asm.tick(43 * MS + LINK_WAIT_NS + 1, &mut out);
        assert_eq!(out.spans.len(), 3);
        let ids: Vec<(&str, Option<&str>, Kind, bool)> = out
            .spans
            .iter()
            .map(|s| {
                (
                    s.id.as_str(),
                    s.parent_id.as_deref(),
                    s.kind.unwrap(),
                    s.shared,
                )
            })
            .collect();
        assert!(
            ids.contains(&("00000000000000a1", None, Kind::Server, true)),
            "{ids:?}"
        );
        assert!(
            ids.contains(&("00000000000000a2", None, Kind::Client, false)),
            "{ids:?}"
        );
        assert!(
            ids.contains(&("00000000000000a2", None, Kind::Server, true)),
            "{ids:?}"
        );

        // The client end first: a server of another request (its client lost) leaves it
        // waiting for its own.
        let mut asm = Asm::new(23, 1.0, false);
        let mut out = empty();
        asm.add(client(41 * MS), &mut out);
        asm.add(lost(42 * MS), &mut out);
        asm.add(server(43 * MS), &mut out);
        let paired: Vec<(&str, Kind)> = out
            .spans
            .iter()
            .map(|s| (s.id.as_str(), s.kind.unwrap()))
            .collect();
        assert!(
            paired.contains(&("00000000000000a2", Kind::Client)),
            "{paired:?}"
        );
        assert!(
            paired.contains(&("00000000000000a2", Kind::Server)),
            "{paired:?}"
        );
        asm.tick(43 * MS + LINK_WAIT_NS + 1, &mut out);
        assert_eq!(out.spans.len(), 3);
        assert_eq!(out.unlinked, 0);
    }

    /// curl (pid 1) -> nginx (pid 2, thread 20) -> node (pid 3), nginx passing curl's context
    /// through unchanged (W3C, then B3 with a parent), its upstream answered by a body that
    /// ends at the close: nginx's CLIENT exchange arrives after its SERVER span was emitted
    /// (curl's connection closed meanwhile). It still joins the trace under nginx's SERVER
    /// span, with an id of its own, and node's SERVER span is its child.
    #[test]
    fn a_proxy_passing_its_callers_context_through_gets_spans_of_its_own() {
        for (headers, shared) in [
            (
                vec![(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )],
                false,
            ),
            (
                vec![
                    ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
                    ("x-b3-spanid", "00f067aa0ba902b7"),
                    ("x-b3-parentspanid", "1111111111111111"),
                    ("x-b3-sampled", "1"),
                ],
                true,
            ),
        ] {
            let mut asm = Asm::new(17, 1.0, false);
            let mut out = empty();
            let front = ("10.0.0.1:50000", "10.0.0.2:80");
            let back = ("10.0.0.2:40000", "10.0.0.3:8080");
            let hdrs: Vec<(&'static str, &str)> = headers.iter().map(|(k, v)| (*k, *v)).collect();
            asm.add(
                input(
                    Side::Server,
                    2,
                    20,
                    (10 * MS, 40 * MS),
                    front,
                    Some("svc1"),
                    &hdrs,
                    40 * MS,
                ),
                &mut out,
            );
            let mut curl = input(
                Side::Client,
                1,
                10,
                (9 * MS, 41 * MS),
                front,
                Some("svc2"),
                &hdrs,
                41 * MS,
            );
            curl.in_server_process = false;
            asm.add(curl, &mut out);
            assert_eq!(out.spans.len(), 2, "curl's and nginx's spans go at once");
            let late = 600 * MS;
            asm.add(
                input(
                    Side::Server,
                    3,
                    30,
                    (20 * MS, 30 * MS),
                    back,
                    Some("svc2"),
                    &hdrs,
                    late,
                ),
                &mut out,
            );
            let mut upstream = input(
                Side::Client,
                2,
                20,
                (15 * MS, 35 * MS),
                back,
                Some("svc3"),
                &hdrs,
                late,
            );
            upstream.in_server_process = false;
            asm.add(upstream, &mut out);
            asm.tick(late + LINK_WAIT_NS + 1, &mut out);
            assert_eq!(out.spans.len(), 4);
            assert_eq!(out.unlinked, 0);
            let ids: std::collections::BTreeSet<&str> =
                out.spans.iter().map(|s| s.id.as_str()).collect();
            let nginx_server = by_service(&out.spans, "svc2", Kind::Server);
            let curl = by_service(&out.spans, "svc1", Kind::Client);
            let nginx_client = by_service(&out.spans, "svc2", Kind::Client);
            let node = by_service(&out.spans, "svc3", Kind::Server);
            assert!(
                out.spans
                    .iter()
                    .all(|s| s.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736")
            );
            assert_eq!(curl.id, "00f067aa0ba902b7");
            if shared {
                assert_eq!(
                    nginx_server.id, curl.id,
                    "B3: the two halves of curl's span"
                );
                assert_eq!(ids.len(), 3);
            } else {
                assert_eq!(nginx_server.parent_id.as_deref(), Some(curl.id.as_str()));
                assert_eq!(ids.len(), 4);
            }
            assert_ne!(nginx_client.id, curl.id, "not the caller's id");
            assert_eq!(
                nginx_client.parent_id.as_deref(),
                Some(nginx_server.id.as_str())
            );
            assert_eq!(node.parent_id.as_deref(), Some(nginx_client.id.as_str()));
            assert_ne!(node.id, curl.id);
            assert!(!node.shared, "a child, not a half of the caller's span");
        }
    }

    #[test]
    fn malformed_and_unsampled_contexts() {
        let mut asm = Asm::new(13, 1.0, false);
        let mut out = empty();
        let k = ("10.0.0.1:1", "10.0.0.2:2");
        let bad = [(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )];
        asm.add(
            input(Side::Server, 3, 30, (1, 2), k, None, &bad, 3),
            &mut out,
        );
        assert_eq!(out.invalid_context, 1);
        assert_eq!(out.spans.len(), 1);
        assert_ne!(out.spans[0].trace_id, "00000000000000000000000000000000");
        let off = [("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0")];
        asm.add(
            input(Side::Server, 3, 30, (1, 2), k, None, &off, 3),
            &mut out,
        );
        assert_eq!(out.not_sampled, 1);
        assert_eq!(out.spans.len(), 1);
    }

    #[test]
    fn async_client_of_a_server_process_is_unlinked() {
        let mut asm = Asm::new(17, 1.0, false);
        let mut out = empty();
        let k1 = ("10.0.0.1:40000", "10.0.0.2:8080");
        let k2 = ("10.0.0.2:40001", "10.0.0.3:9090");
        asm.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 40 * MS),
                k1,
                None,
                &[],
                41 * MS,
            ),
            &mut out,
        );
        // Another thread (a worker pool) makes the downstream call.
        asm.add(
            input(
                Side::Client,
                2,
                21,
                (19 * MS, 31 * MS),
                k2,
                None,
                &[],
                42 * MS,
            ),
            &mut out,
        );
        asm.tick(42 * MS + LINK_WAIT_NS + 1, &mut out);
        assert_eq!(out.spans.len(), 2);
        assert_eq!(out.unlinked, 1);
    }

    #[test]
    fn clients_of_a_process_that_serves_nothing_wait_for_their_server_only() {
        // Its server is a process on this node (named) or not (192.0.2.1).
        let pure = |conn: (&str, &str), window, now| {
            let peer = (!conn.1.starts_with("192.0.2.")).then_some("svc2");
            let mut i = input(Side::Client, 1, 10, window, conn, peer, &[], now);
            i.in_server_process = false;
            i
        };
        let server =
            |conn, window, now| input(Side::Server, 2, 20, window, conn, Some("svc1"), &[], now);
        let mut asm = Asm::new(19, 1.0, false);
        let mut out = empty();
        let k1 = ("10.0.0.1:40000", "10.0.0.2:8080");
        // Client first: held for its server span only, then both go out together.
        asm.add(pure(k1, (MS, 5 * MS), 6 * MS), &mut out);
        assert!(out.spans.is_empty());
        assert!(asm.asm.clients_by_thread.is_empty());
        asm.add(server(k1, (2 * MS, 4 * MS), 7 * MS), &mut out);
        assert_eq!(out.spans.len(), 2);
        let client = by_service(&out.spans, "svc1", Kind::Client);
        let srv = by_service(&out.spans, "svc2", Kind::Server);
        assert_eq!(client.parent_id, None);
        assert_eq!(srv.parent_id.as_ref(), Some(&client.id));
        assert_eq!(srv.trace_id, client.trace_id);
        // Server first: the client pairs with it and both go out at once.
        asm.add(server(k1, (12 * MS, 14 * MS), 15 * MS), &mut out);
        asm.add(pure(k1, (11 * MS, 15 * MS), 16 * MS), &mut out);
        assert_eq!(out.spans.len(), 4);
        // A server that is not a process on this node: nothing to wait for, the client goes out
        // at once, and not as unlinked.
        let k2 = ("10.0.0.1:40002", "192.0.2.1:443");
        asm.add(pure(k2, (20 * MS, 25 * MS), 26 * MS), &mut out);
        assert_eq!(out.spans.len(), 5);
        asm.tick(26 * MS + LINK_WAIT_NS + 1, &mut out);
        assert_eq!(out.spans.len(), 5);
        assert_eq!(out.unlinked, 0);
        assert!(asm.asm.nodes.is_empty());
    }

    #[test]
    fn client_exchange_completing_first_still_parents_the_server() {
        let mut asm = Asm::new(23, 1.0, false);
        let mut out = empty();
        let k = ("10.0.0.1:40000", "10.0.0.2:8080");
        asm.add(
            input(
                Side::Client,
                1,
                10,
                (9 * MS, 12 * MS),
                k,
                Some("svc2"),
                &[],
                12 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 11 * MS),
                k,
                Some("svc1"),
                &[],
                13 * MS,
            ),
            &mut out,
        );
        asm.tick(13 * MS + LINK_WAIT_NS + 1, &mut out);
        assert_eq!(out.spans.len(), 2);
        let c = by_service(&out.spans, "svc1", Kind::Client);
        let srv = by_service(&out.spans, "svc2", Kind::Server);
        assert_eq!(srv.parent_id.as_ref(), Some(&c.id));
        assert_eq!(srv.trace_id, c.trace_id);
        assert_eq!(out.unlinked, 0);
    }

    #[test]
    fn context_decisions_beat_the_ratio() {
        let mut asm = Asm::new(19, 0.0, false);
        let mut out = empty();
        let k = ("10.0.0.1:1", "10.0.0.2:2");
        let on = [(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )];
        asm.add(
            input(Side::Server, 3, 30, (1, 2), k, None, &on, 3),
            &mut out,
        );
        asm.add(
            input(Side::Server, 3, 30, (1, 2), k, None, &[], 3),
            &mut out,
        );
        assert_eq!(out.spans.len(), 1, "sampled context kept at ratio 0");
        assert_eq!(out.not_sampled, 1, "no context: the ratio decides");
    }

    #[test]
    fn ratio_sampling_is_by_trace_id() {
        assert!(sampled_by_ratio(1, 0.5));
        assert!(!sampled_by_ratio(u128::from(u64::MAX), 0.5));
        assert!(sampled_by_ratio(u128::from(u64::MAX), 1.0));
        assert!(!sampled_by_ratio(1, 0.0));
    }

    /// A proxy's CLIENT end whose upstream end was lost reaches the assembler only when the
    /// pairing gives up, 2 s later: it still links under the SERVER span its thread served,
    /// emitted long before.
    #[test]
    fn a_client_end_released_by_the_pairing_still_finds_its_emitted_server() {
        let mut asm = Asm::new(29, 1.0, false);
        let mut out = empty();
        let front = ("10.0.0.1:40000", "10.0.0.2:8080");
        let upstream = ("10.0.0.2:40001", "10.0.0.3:9090");
        // curl -> nginx (pid 2, thread 20): both ends paired, emitted at once.
        asm.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 40 * MS),
                front,
                Some("svc1"),
                &[],
                41 * MS,
            ),
            &mut out,
        );
        // curl serves nothing: its span is a root at once.
        let mut curl = input(
            Side::Client,
            1,
            10,
            (9 * MS, 41 * MS),
            front,
            Some("svc2"),
            &[],
            42 * MS,
        );
        curl.in_server_process = false;
        asm.add(curl, &mut out);
        assert_eq!(
            out.spans.len(),
            2,
            "curl's and nginx's SERVER span go out at once"
        );
        // nginx's upstream call, completed by the close 0.5 s later; its upstream end never
        // comes.
        let late = 540 * MS;
        asm.add(
            input(
                Side::Client,
                2,
                20,
                (15 * MS, 35 * MS),
                upstream,
                Some("svc3"),
                &[],
                late,
            ),
            &mut out,
        );
        asm.tick(late + crate::exchange::PAIR_WAIT_NS + 1, &mut out);
        asm.tick(
            late + crate::exchange::PAIR_WAIT_NS + LINK_WAIT_NS + 2,
            &mut out,
        );
        let server = by_service(&out.spans, "svc2", Kind::Server);
        let client = by_service(&out.spans, "svc2", Kind::Client);
        assert_eq!(client.parent_id.as_ref(), Some(&server.id));
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(out.unlinked, 0);
    }

    // -----------------------------------------------------------------------------------------
    // Instrumented and uninstrumented processes in one trace

    const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const APP_SPAN: &str = "00f067aa0ba902b7";
    /// The application's SERVER span, which a B3 context names as the parent.
    const APP_SERVER: &str = "1111111111111111";

    fn skipping(mut asm: Asm) -> Asm {
        asm.asm = asm.asm.with_instrumented_spans(InstrumentedSpans::Skip);
        asm
    }

    /// curl (pid 1, serves nothing) -> frontend (pid 2, thread 20) -> backend (pid 3), curl
    /// sending `incoming`, the frontend's tracer sending `app` to the backend; ends in the
    /// order they complete, from `t0`.
    fn mixed_chain(
        asm: &mut Asm,
        out: &mut Out,
        incoming: &[(&'static str, &str)],
        app: &[(&'static str, &str)],
        t0: u64,
    ) {
        let k1 = ("10.0.0.1:40000", "10.0.0.2:8080");
        let k2 = ("10.0.0.2:40001", "10.0.0.3:9090");
        let at = |ms: u64| t0 + ms * MS;
        asm.add(
            input(
                Side::Server,
                3,
                30,
                (at(20), at(30)),
                k2,
                Some("svc2"),
                app,
                at(31),
            ),
            out,
        );
        asm.add(
            input(
                Side::Client,
                2,
                20,
                (at(19), at(31)),
                k2,
                Some("svc3"),
                app,
                at(32),
            ),
            out,
        );
        asm.add(
            input(
                Side::Server,
                2,
                20,
                (at(10), at(40)),
                k1,
                Some("svc1"),
                incoming,
                at(41),
            ),
            out,
        );
        let mut curl = input(
            Side::Client,
            1,
            10,
            (at(9), at(41)),
            k1,
            Some("svc2"),
            incoming,
            at(42),
        );
        curl.in_server_process = false;
        asm.add(curl, out);
    }

    /// The frontend's tracer starts a trace (curl sent none): all four spans take its trace id
    /// and its sampling decision (kept at ratio 0 when it says sampled, dropped when not).
    #[test]
    fn a_trace_the_application_starts_is_adopted_with_its_sampling_decision() {
        let sampled = format!("00-{APP_TRACE}-{APP_SPAN}-01");
        let mut asm = Asm::new(31, 0.0, false);
        let mut out = empty();
        mixed_chain(&mut asm, &mut out, &[], &[("traceparent", &sampled)], 0);
        assert_eq!(out.spans.len(), 4, "emitted with the root, at once");
        assert!(
            out.spans.iter().all(|s| s.trace_id == APP_TRACE),
            "{:?}",
            out.spans
        );
        let curl = by_service(&out.spans, "svc1", Kind::Client);
        let fs = by_service(&out.spans, "svc2", Kind::Server);
        let fc = by_service(&out.spans, "svc2", Kind::Client);
        let be = by_service(&out.spans, "svc3", Kind::Server);
        assert_eq!(curl.parent_id, None);
        assert_eq!(fs.parent_id.as_ref(), Some(&curl.id));
        assert_eq!(fc.id, APP_SPAN, "the application's span id");
        assert_eq!(fc.parent_id.as_ref(), Some(&fs.id));
        assert_eq!(be.parent_id.as_deref(), Some(APP_SPAN));
        assert_eq!(
            (out.unlinked, out.unmerged_emitted, out.unmerged_other_trace),
            (0, 0, 0)
        );
        assert_eq!(out.instrumented_skipped, 0, "report: everything");

        let unsampled = format!("00-{APP_TRACE}-{APP_SPAN}-00");
        let mut asm = Asm::new(31, 1.0, false);
        let mut out = empty();
        mixed_chain(&mut asm, &mut out, &[], &[("traceparent", &unsampled)], 0);
        assert!(out.spans.is_empty());
        assert_eq!(out.not_sampled, 4);
    }

    /// B3, multi and single header, with the application's SERVER span as parent: the backend's
    /// SERVER span is the server half of the application's CLIENT span. With `skip`, the
    /// frontend's spans are left to its SDK, and the backend's half names the SDK's parent.
    #[test]
    fn b3_application_traces_are_adopted_and_skip_leaves_the_sdk_its_spans() {
        let single = format!("{APP_TRACE}-{APP_SPAN}-1-{APP_SERVER}");
        let multi = [
            ("x-b3-traceid", APP_TRACE),
            ("x-b3-spanid", APP_SPAN),
            ("x-b3-parentspanid", APP_SERVER),
            ("x-b3-sampled", "1"),
        ];
        for app in [vec![("b3", single.as_str())], multi.to_vec()] {
            let mut asm = Asm::new(37, 1.0, false);
            let mut out = empty();
            mixed_chain(&mut asm, &mut out, &[], &app, 0);
            assert_eq!(out.spans.len(), 4);
            assert!(out.spans.iter().all(|s| s.trace_id == APP_TRACE));
            let fs = by_service(&out.spans, "svc2", Kind::Server);
            let fc = by_service(&out.spans, "svc2", Kind::Client);
            let be = by_service(&out.spans, "svc3", Kind::Server);
            assert_eq!(fc.id, APP_SPAN);
            assert_eq!(fc.parent_id.as_ref(), Some(&fs.id));
            assert_eq!((be.id.as_str(), be.shared), (APP_SPAN, true));
            assert_eq!(
                be.parent_id.as_ref(),
                Some(&fs.id),
                "meshtap's half: its parent"
            );

            let mut asm = skipping(Asm::new(37, 1.0, false));
            let mut out = empty();
            for n in 0..2 {
                mixed_chain(&mut asm, &mut out, &[], &app, n * 100 * MS);
            }
            assert_eq!(out.spans.len(), 4, "curl's and the backend's, twice");
            assert_eq!(out.instrumented_skipped, 4);
            for be in out.spans.iter().filter(|s| s.kind == Some(Kind::Server)) {
                assert_eq!(
                    be.local_endpoint.as_ref().unwrap().service_name.as_deref(),
                    Some("svc3")
                );
                assert_eq!((be.id.as_str(), be.shared), (APP_SPAN, true));
                assert_eq!(
                    be.parent_id.as_deref(),
                    Some(APP_SERVER),
                    "the SDK's SERVER span"
                );
                assert_eq!(be.trace_id, APP_TRACE);
            }
            assert!(out.spans.iter().all(|s| s.trace_id == APP_TRACE));
        }
    }

    /// W3C with `skip`: the backend's SERVER span is a child of the SDK's CLIENT span, curl's
    /// CLIENT span a root of the same trace.
    #[test]
    fn skip_with_w3c_keeps_the_uninstrumented_neighbours_in_the_applications_trace() {
        let app = format!("00-{APP_TRACE}-{APP_SPAN}-01");
        let mut asm = skipping(Asm::new(41, 1.0, false));
        let mut out = empty();
        mixed_chain(&mut asm, &mut out, &[], &[("traceparent", &app)], 0);
        assert_eq!(out.spans.len(), 2);
        assert_eq!(out.instrumented_skipped, 2);
        let curl = by_service(&out.spans, "svc1", Kind::Client);
        let be = by_service(&out.spans, "svc3", Kind::Server);
        assert_eq!(
            (curl.trace_id.as_str(), curl.parent_id.as_deref()),
            (APP_TRACE, None)
        );
        assert_eq!(be.trace_id, APP_TRACE);
        assert_eq!(be.parent_id.as_deref(), Some(APP_SPAN));
    }

    /// The application continues its caller's context (same trace id, new span id): nothing
    /// changes in the trace, but the process is now known as instrumented.
    #[test]
    fn an_application_continuing_its_callers_context_changes_nothing() {
        let incoming = format!("00-{APP_TRACE}-{APP_SERVER}-01");
        let app = format!("00-{APP_TRACE}-{APP_SPAN}-01");
        let mut asm = Asm::new(43, 1.0, false);
        let mut out = empty();
        mixed_chain(
            &mut asm,
            &mut out,
            &[("traceparent", &incoming)],
            &[("traceparent", &app)],
            0,
        );
        assert_eq!(out.spans.len(), 4);
        assert!(out.spans.iter().all(|s| s.trace_id == APP_TRACE));
        let curl = by_service(&out.spans, "svc1", Kind::Client);
        let fs = by_service(&out.spans, "svc2", Kind::Server);
        let fc = by_service(&out.spans, "svc2", Kind::Client);
        assert_eq!(curl.id, APP_SERVER);
        assert_eq!(fs.parent_id.as_deref(), Some(APP_SERVER));
        assert_eq!(
            (fc.id.as_str(), fc.parent_id.as_ref()),
            (APP_SPAN, Some(&fs.id))
        );
        assert_eq!(
            (out.unmerged_emitted, out.unmerged_other_trace, out.unlinked),
            (0, 0, 0)
        );
        assert!(asm.asm.instrumented.contains_key(&2));
    }

    /// A (pid 1, a tracer, serves nothing) -> P (pid 2, plain) -> B (pid 3, a tracer that
    /// ignores what P did not send and starts a trace) -> C (pid 4): B's trace cannot join A's
    /// (A's SDK exported its spans in it): P's CLIENT span and what is under it go to B's trace,
    /// P's SERVER span stays in A's, each trace whole.
    #[test]
    fn two_application_traces_split_at_the_plain_process_between_them() {
        let a_ctx = format!("00-{APP_TRACE}-{APP_SERVER}-01");
        let b_trace = "80f198ee56343ba864fe8b2a57d3eff7";
        let b_ctx = format!("00-{b_trace}-{APP_SPAN}-01");
        let (a_ctx, b_ctx) = (
            [("traceparent", a_ctx.as_str())],
            [("traceparent", b_ctx.as_str())],
        );
        let ap = ("10.0.0.1:40000", "10.0.0.2:8080");
        let pb = ("10.0.0.2:40001", "10.0.0.3:9090");
        let bc = ("10.0.0.3:40002", "10.0.0.4:7070");
        let mut asm = Asm::new(47, 1.0, false);
        let mut out = empty();
        asm.add(
            input(
                Side::Server,
                4,
                40,
                (30 * MS, 35 * MS),
                bc,
                Some("svc3"),
                &b_ctx,
                36 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Client,
                3,
                30,
                (29 * MS, 36 * MS),
                bc,
                Some("svc4"),
                &b_ctx,
                37 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Server,
                3,
                30,
                (20 * MS, 38 * MS),
                pb,
                Some("svc2"),
                &[],
                39 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Client,
                2,
                20,
                (19 * MS, 39 * MS),
                pb,
                Some("svc3"),
                &[],
                40 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 45 * MS),
                ap,
                Some("svc1"),
                &a_ctx,
                46 * MS,
            ),
            &mut out,
        );
        let mut a = input(
            Side::Client,
            1,
            10,
            (9 * MS, 46 * MS),
            ap,
            Some("svc2"),
            &a_ctx,
            47 * MS,
        );
        a.in_server_process = false;
        asm.add(a, &mut out);
        assert_eq!(out.spans.len(), 6, "both trees at once");
        assert_eq!((out.unmerged_other_trace, out.unlinked), (1, 0));
        let mut traces: std::collections::BTreeMap<&str, Vec<&Span>> = Default::default();
        for s in &out.spans {
            traces.entry(s.trace_id.as_str()).or_default().push(s);
        }
        assert_eq!(traces.len(), 2);
        for (trace, spans) in &traces {
            let ids: Vec<&str> = spans.iter().map(|s| s.id.as_str()).collect();
            let roots: Vec<&&Span> = spans
                .iter()
                .filter(|s| s.parent_id.as_deref().is_none_or(|p| !ids.contains(&p)))
                .collect();
            assert_eq!(roots.len(), 1, "{trace}: {spans:?}");
            let expected = if *trace == APP_TRACE {
                vec!["svc1", "svc2"]
            } else {
                vec!["svc2", "svc3", "svc3", "svc4"]
            };
            let mut services: Vec<&str> = spans
                .iter()
                .map(|s| {
                    s.local_endpoint
                        .as_ref()
                        .unwrap()
                        .service_name
                        .as_deref()
                        .unwrap()
                })
                .collect();
            services.sort();
            assert_eq!(services, expected, "{trace}");
        }
        let p_client = by_service(&out.spans, "svc2", Kind::Client);
        assert_eq!(
            (p_client.trace_id.as_str(), p_client.parent_id.as_deref()),
            (b_trace, None)
        );
        // A's root in A's trace is its context's span (A's SDK CLIENT span).
        let p_server = by_service(&out.spans, "svc2", Kind::Server);
        assert_eq!(p_server.parent_id.as_deref(), Some(APP_SERVER));
    }

    /// The frontend's SERVER span was emitted before its CLIENT exchange with the application's
    /// context came: it is not rewritten, the CLIENT span and the backend's stay in the
    /// application's trace, and that is counted as unmerged, not unlinked.
    #[test]
    fn an_application_trace_after_its_server_span_was_emitted_is_counted_unmerged() {
        let app = format!("00-{APP_TRACE}-{APP_SPAN}-01");
        let app = [("traceparent", app.as_str())];
        let k1 = ("10.0.0.1:40000", "10.0.0.2:8080");
        let k2 = ("10.0.0.2:40001", "10.0.0.3:9090");
        let mut asm = Asm::new(53, 1.0, false);
        let mut out = empty();
        asm.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 40 * MS),
                k1,
                Some("svc1"),
                &[],
                41 * MS,
            ),
            &mut out,
        );
        let mut curl = input(
            Side::Client,
            1,
            10,
            (9 * MS, 41 * MS),
            k1,
            Some("svc2"),
            &[],
            42 * MS,
        );
        curl.in_server_process = false;
        asm.add(curl, &mut out);
        assert_eq!(out.spans.len(), 2);
        let late = 600 * MS;
        asm.add(
            input(
                Side::Server,
                3,
                30,
                (20 * MS, 30 * MS),
                k2,
                Some("svc2"),
                &app,
                late,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Client,
                2,
                20,
                (19 * MS, 31 * MS),
                k2,
                Some("svc3"),
                &app,
                late,
            ),
            &mut out,
        );
        asm.tick(late + LINK_WAIT_NS + 1, &mut out);
        assert_eq!(out.spans.len(), 4);
        assert_eq!((out.unmerged_emitted, out.unlinked), (1, 0));
        let fc = by_service(&out.spans, "svc2", Kind::Client);
        let be = by_service(&out.spans, "svc3", Kind::Server);
        assert_eq!(
            (
                fc.trace_id.as_str(),
                fc.id.as_str(),
                fc.parent_id.as_deref()
            ),
            (APP_TRACE, APP_SPAN, None)
        );
        assert_eq!(
            (be.trace_id.as_str(), be.parent_id.as_deref()),
            (APP_TRACE, Some(APP_SPAN))
        );
        assert!(asm.asm.instrumented.contains_key(&2));
    }

    /// An application without a SERVER span of its own starts a trace for every call it makes
    /// (client instrumentation only): the first call's trace takes the held spans above, the
    /// second call stays a root of its own trace, counted as unmerged.
    #[test]
    fn a_trace_per_outgoing_call_keeps_the_first_and_cuts_the_second() {
        let second_trace = "80f198ee56343ba864fe8b2a57d3eff7";
        let (one, two) = (
            format!("00-{APP_TRACE}-{APP_SPAN}-01"),
            format!("00-{second_trace}-{APP_SERVER}-01"),
        );
        let (one, two) = (
            [("traceparent", one.as_str())],
            [("traceparent", two.as_str())],
        );
        let k1 = ("10.0.0.1:40000", "10.0.0.2:8080");
        let (ka, kb) = (
            ("10.0.0.2:40001", "10.0.0.3:9090"),
            ("10.0.0.2:40002", "10.0.0.3:9090"),
        );
        let mut asm = Asm::new(59, 1.0, false);
        let mut out = empty();
        asm.add(
            input(
                Side::Server,
                3,
                30,
                (12 * MS, 14 * MS),
                ka,
                Some("svc2"),
                &one,
                15 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Client,
                2,
                20,
                (11 * MS, 15 * MS),
                ka,
                Some("svc3"),
                &one,
                16 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Server,
                3,
                31,
                (22 * MS, 24 * MS),
                kb,
                Some("svc2"),
                &two,
                25 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Client,
                2,
                20,
                (21 * MS, 25 * MS),
                kb,
                Some("svc3"),
                &two,
                26 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 40 * MS),
                k1,
                Some("svc1"),
                &[],
                41 * MS,
            ),
            &mut out,
        );
        let mut curl = input(
            Side::Client,
            1,
            10,
            (9 * MS, 41 * MS),
            k1,
            Some("svc2"),
            &[],
            42 * MS,
        );
        curl.in_server_process = false;
        asm.add(curl, &mut out);
        assert_eq!(out.spans.len(), 6);
        assert_eq!((out.unmerged_other_trace, out.unlinked), (1, 0));
        let in_first = out.spans.iter().filter(|s| s.trace_id == APP_TRACE).count();
        let in_second: Vec<&Span> = out
            .spans
            .iter()
            .filter(|s| s.trace_id == second_trace)
            .collect();
        assert_eq!((in_first, in_second.len()), (4, 2));
        let cut = in_second
            .iter()
            .find(|s| s.kind == Some(Kind::Client))
            .unwrap();
        assert_eq!(
            (cut.id.as_str(), cut.parent_id.as_deref()),
            (APP_SERVER, None)
        );
    }

    /// With `skip`, a call the instrumented process makes without a context (its SDK does not
    /// see it) stays meshtap's, under the span above the skipped SERVER span.
    #[test]
    fn skip_puts_a_call_without_context_under_the_span_above() {
        let app = format!("00-{APP_TRACE}-{APP_SPAN}-01");
        let app = [("traceparent", app.as_str())];
        let k1 = ("10.0.0.1:40000", "10.0.0.2:8080");
        let ka = ("10.0.0.2:40001", "10.0.0.3:9090");
        let kb = ("10.0.0.2:40002", "192.0.2.1:6379");
        let mut asm = skipping(Asm::new(61, 1.0, false));
        let mut out = empty();
        asm.add(
            input(
                Side::Server,
                3,
                30,
                (12 * MS, 14 * MS),
                ka,
                Some("svc2"),
                &app,
                15 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Client,
                2,
                20,
                (11 * MS, 15 * MS),
                ka,
                Some("svc3"),
                &app,
                16 * MS,
            ),
            &mut out,
        );
        // A call to a server elsewhere (192.0.2.1), without a context.
        asm.add(
            input(
                Side::Client,
                2,
                20,
                (21 * MS, 25 * MS),
                kb,
                None,
                &[],
                26 * MS,
            ),
            &mut out,
        );
        asm.add(
            input(
                Side::Server,
                2,
                20,
                (10 * MS, 40 * MS),
                k1,
                Some("svc1"),
                &[],
                41 * MS,
            ),
            &mut out,
        );
        let mut curl = input(
            Side::Client,
            1,
            10,
            (9 * MS, 41 * MS),
            k1,
            Some("svc2"),
            &[],
            42 * MS,
        );
        curl.in_server_process = false;
        asm.add(curl, &mut out);
        assert_eq!(out.spans.len(), 3);
        assert_eq!(out.instrumented_skipped, 2);
        assert!(out.spans.iter().all(|s| s.trace_id == APP_TRACE));
        let curl = by_service(&out.spans, "svc1", Kind::Client);
        let plain_call = out
            .spans
            .iter()
            .find(|s| s.kind == Some(Kind::Client) && s.id != curl.id)
            .unwrap();
        assert_eq!(plain_call.parent_id.as_ref(), Some(&curl.id));
        let be = by_service(&out.spans, "svc3", Kind::Server);
        assert_eq!(be.parent_id.as_deref(), Some(APP_SPAN));
    }
}
