//! Wiring: pre-flight, endpoint, load and attach, then the stages with bounded queues between
//! them, and an orderly shutdown on SIGINT/SIGTERM.
//!
//! kernel -> reader thread -> queue -> processor (connection table, metrics) -> endpoint

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use meshtap_common::{map_id, stat};
use tokio::{signal::unix::SignalKind, sync::mpsc};

use crate::clock::monotonic_ns;

use crate::{
    aggregate::{graph::ServiceGraph, operations::Operations},
    config::{Config, Kubernetes},
    conntrack::{ConnTable, ConnectionView, Listener, TableSettings, metrics::L4Metrics},
    ebpf::{
        self, KernelMaps, LoadOptions, ProgramCounters,
        reader::{Drained, Reader},
        telemetry::{KernelMetrics, LostLabels, MapLabels, ProgramLabels},
    },
    event::Batch,
    export::{
        http::{ConnectionsQuery, Endpoint, router},
        otlp::sink::{OtlpMetrics, OtlpSink},
        peer,
        security::{self, Guard, Reloader, SecurityError, SecurityMetrics, TlsListener},
        web::{self, WebState},
        zipkin::{
            api as zipkin_api,
            convert::StoreExporter,
            sink::{SinkConfig, ZipkinMetrics, ZipkinSink},
            store::{StoreConfig, StoreMetrics, TraceStore},
        },
    },
    metadata::{
        kube::{self, KubeIndex, KubeMetrics, KubeSettings},
        proc::scan_listeners,
        service::ServiceNames,
    },
    metrics::Registry,
    pipeline::Pipeline,
    protocol::{Red, RedSettings, SpanOptions},
    trace::{
        SpanExporter, TraceCounters, Tracer, TracerConfig,
        assembly::LINK_WAIT_NS,
        remote::{MAX_PUBLISHED, PUBLISHED_TTL_NS, Published},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Load(#[from] ebpf::LoadError),
    #[error(
        "cannot listen on {addr}: {source} (is another meshtap or service using it? pick another with --listen)"
    )]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Kubernetes(#[from] kube::KubeError),
    #[error("cannot start the Zipkin exporter: {0}")]
    Zipkin(#[source] crate::export::zipkin::sink::SinkError),
    #[error("cannot start the OTLP exporter: {0}")]
    Otlp(#[source] crate::export::delivery::EndpointError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error(transparent)]
    PeerTls(#[from] peer::client::PeerTlsError),
    #[error("cannot set up TLS for the endpoint: {0}")]
    Tls(#[source] rustls::Error),
    #[error("the HTTP endpoint failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// How long a connection may be silent before the sweep asks the kernel whether it still exists.
const SWEEP_IDLE: Duration = Duration::from_secs(60);

/// How often the entries of the kernel maps are counted (`meshtap_map_entries`): a count walks
/// the map key by key, a syscall per entry (about 25 ms of CPU for 20,000 connections tracked),
/// so not every second like the other kernel counters.
const MAP_ENTRIES_EVERY: Duration = Duration::from_secs(10);

pub async fn run(config: Config) -> Result<(), RunError> {
    ebpf::preflight(&config.btf)?;
    // The endpoint's certificate and token files, read before anything else starts.
    let security_metrics = SecurityMetrics::default();
    let reloader = Reloader::load(&config.security, security_metrics.clone())?;
    let tls = reloader
        .resolver()
        .map(security::acceptor)
        .transpose()
        .map_err(RunError::Tls)?;
    // Bind before loading anything, so that a busy port fails fast and leaves nothing behind.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.listen,
            source,
        })?;

    let registry = Arc::new(Registry::default());
    registry.register_with(|r| security_metrics.register(r));
    let kernel_metrics = Arc::new(KernelMetrics::new(&registry));
    let series_ttl_ns = config.series_ttl_secs.saturating_mul(1_000_000_000);
    let mut services =
        ServiceNames::new(config.service_names.clone(), config.service_ports.clone())
            .with_proc_root(config.proc_root.clone());
    let mut kube_index = None;
    if let Kubernetes::On {
        api_url,
        node_name,
        retry_max_secs,
        cache_entries,
    } = &config.kubernetes
    {
        let index = KubeIndex::default();
        kube::start(
            KubeSettings {
                api_url: api_url.clone(),
                node_name: node_name.clone(),
                retry_max: Duration::from_secs(*retry_max_secs),
                cache_entries: *cache_entries as usize,
            },
            index.clone(),
            KubeMetrics::new(&registry),
        )?;
        kube_index = Some(index.clone());
        services = services.with_kubernetes(index, config.cgroup_root.clone());
    }

    // Span exporters: the built-in store, then the collectors.
    let store_metrics = StoreMetrics::default();
    registry.register_with(|r| store_metrics.register(r));
    let store = Arc::new(TraceStore::new(
        StoreConfig {
            max_spans: config.trace_store_spans as usize,
            ..StoreConfig::default()
        },
        store_metrics,
    ));
    let zipkin_metrics = ZipkinMetrics::default();
    registry.register_with(|r| zipkin_metrics.register(r));
    let zipkin = match &config.zipkin_endpoint {
        Some(endpoint) => Some(
            ZipkinSink::start(
                SinkConfig {
                    endpoint: endpoint.clone(),
                    queue_spans: config.zipkin_queue_spans as usize,
                    batch_spans: config.zipkin_batch_spans as usize,
                    flush_interval: Duration::from_millis(config.zipkin_flush_ms),
                    gzip: config.zipkin_gzip,
                    request_timeout: Duration::from_millis(config.zipkin_timeout_ms),
                    ..SinkConfig::default()
                },
                &zipkin_metrics,
            )
            .map_err(RunError::Zipkin)?,
        ),
        None => None,
    };
    let otlp_metrics = OtlpMetrics::default();
    registry.register_with(|r| otlp_metrics.register(r));
    let otlp = match &config.otlp {
        Some(otlp) => Some(OtlpSink::start(otlp, &otlp_metrics).map_err(RunError::Otlp)?),
        None => None,
    };
    let mut collectors: Vec<Box<dyn SpanExporter>> = Vec::new();
    if let Some(sink) = &zipkin {
        collectors.push(Box::new(sink.clone()));
    }
    if let Some(sink) = &otlp {
        collectors.push(Box::new(sink.clone()));
    }
    log::info!(
        "spans go to: store{}",
        collectors
            .iter()
            .map(|c| format!(", {}", c.name()))
            .collect::<String>()
    );
    let tracer = Tracer::new(
        &TracerConfig {
            sampling_ratio: config.sampling_ratio,
            keep_errors: config.keep_errors,
            store_rate: u64::from(config.trace_store_rate),
            span_options: SpanOptions {
                db_query_text: config.db_query_text,
            },
            instrumented_spans: config.instrumented_spans,
        },
        Some(Box::new(StoreExporter(store.clone()))),
        collectors,
        TraceCounters::new(&registry),
    );
    // Cross-node links: with peers, this agent asks them for its remote clients' contexts and
    // answers theirs.
    let kube_peers = if config.peers_from_kubernetes {
        if kube_index.is_none() {
            log::warn!(
                "--peers-from-kubernetes: Kubernetes metadata is off, so only --peer ranges link traces across nodes"
            );
        }
        kube_index.clone()
    } else {
        None
    };
    let cross_node = !config.peers.is_empty() || kube_peers.is_some();
    let mut peer_wake = None;
    let mut peer_routes = None;
    let tracer = if cross_node {
        let published = Arc::new(Published::new(MAX_PUBLISHED, PUBLISHED_TTL_NS, &registry));
        peer_routes = Some(peer::router(peer::Served::new(
            published.clone(),
            &registry,
        )));
        let peers = config.peers.clone();
        // The other agents listen on the same port as this one (a DaemonSet).
        let peer_port = config.listen.port();
        let scheme = if config.security.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let resolve: peer::client::Resolve = Arc::new(move |ip| {
            peers.url_for(ip).or_else(|| {
                let agent = kube_peers.as_ref()?.agent_serving(ip)?;
                Some(format!("{scheme}://{}", std::net::SocketAddr::new(agent, peer_port)).into())
            })
        });
        // The endpoint's token, as it is now, on every lookup (it follows the file's rotation).
        let token: Option<peer::client::TokenSource> =
            config.security.token_file.as_ref().map(|_| {
                let token = reloader.token();
                Arc::new(move || token.current()) as peer::client::TokenSource
            });
        let peer_tls = match &config.peer_ca {
            Some(ca) => Some(peer::client::PeerTls::load(
                ca,
                config.peer_server_name.clone(),
            )?),
            None => None,
        };
        let link = peer::client::start(
            resolve,
            token,
            peer_tls,
            published,
            Duration::from_nanos(LINK_WAIT_NS),
            &registry,
        );
        peer_wake = Some(link.wake.clone());
        log::info!(
            "cross-node trace links: {} --peer range(s){}",
            config.peers.ranges.len(),
            if config.peers_from_kubernetes {
                ", and the agents of the other nodes found through Kubernetes"
            } else {
                ""
            }
        );
        tracer.with_remote(link)
    } else {
        tracer
    };

    // Exchanges: request metrics, pairing, service graph, tracer; and what the web page reads.
    let graph = ServiceGraph::new(
        &registry,
        &config.duration_buckets,
        config.max_series as usize,
    );
    let operations = Operations::new(&registry, &config.duration_buckets);
    let web_state = WebState::new(
        graph.live(),
        operations.table(),
        registry.clone(),
        monotonic_ns,
    );
    let pipeline = Pipeline::new(
        registry.clone(),
        Red::new(
            &registry,
            &RedSettings {
                duration_buckets: config.duration_buckets.clone(),
                max_series: config.max_series as usize,
            },
        ),
        operations,
        graph,
        Some(tracer),
        series_ttl_ns,
    );
    let l4_metrics = L4Metrics::new(
        &registry,
        kernel_metrics.insert_failures("agent_connections"),
    );
    let web_state = web_state.with_tcp(l4_metrics.live.clone());
    let table = Arc::new(Mutex::new(ConnTable::new(
        registry.clone(),
        l4_metrics,
        services,
        Box::new(pipeline),
        TableSettings {
            max_connections: config.max_connections as usize,
            max_series: config.max_series as usize,
            series_ttl_ns,
            request_keys: cross_node,
        },
    )));
    let ready = Arc::new(AtomicBool::new(false));
    let (queries_tx, queries) = mpsc::channel::<ConnectionsQuery>(16);
    let endpoint = Endpoint {
        registry: registry.clone(),
        connections: queries_tx,
        ready: ready.clone(),
    };
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(false);
    let mut routes = router(endpoint)
        .merge(zipkin_api::router(store))
        .merge(web::router(web_state));
    if let Some(peer_routes) = peer_routes {
        routes = routes.merge(peer_routes);
    }
    // Last, over every route: see `security::protect`.
    if config.security.token_file.is_some() {
        routes = security::protect(
            routes,
            Guard {
                token: reloader.token(),
                metrics_require_token: config.security.metrics_require_token,
                metrics: security_metrics.clone(),
            },
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let shutdown = async move {
        let _ = shutdown_rx.changed().await;
    };
    let server = match tls {
        Some(acceptor) => {
            let listener = TlsListener::new(listener, acceptor, security_metrics.clone())
                .map_err(RunError::Serve)?;
            tokio::spawn(async move {
                axum::serve(listener, routes)
                    .with_graceful_shutdown(shutdown)
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(listener, routes)
                .with_graceful_shutdown(shutdown)
                .await
        }),
    };
    let reloads = (config.security.tls.is_some() || config.security.token_file.is_some())
        .then(|| reloader.spawn());

    let btf = ebpf::btf::KernelBtf::from_file(&config.btf).map_err(ebpf::LoadError::from)?;
    let offsets = ebpf::offsets::resolve(&btf).map_err(ebpf::LoadError::from)?;
    drop(btf);
    let run_time_stats = if config.ebpf_stats {
        Some(ebpf::RunTimeStats::enable()?)
    } else {
        None
    };
    let (probes, ring, maps) = ebpf::load(
        &LoadOptions {
            capture_bytes: config.capture_bytes,
            ring_buffer_bytes: config.ring_buffer_bytes,
            max_connections: config.max_connections,
            tls_plaintext: config.tls_plaintext,
            netns: config.netns.iter().map(|ns| ns.inode).collect(),
            request_keys: cross_node,
        },
        &offsets,
    )?;
    if !config.netns.is_empty() {
        log::info!(
            "scoped to network namespaces {}",
            config
                .netns
                .iter()
                .map(|ns| format!("{} ({})", ns.inode, ns.path.display()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    kernel_metrics.programs_attached.set(probes.attached as i64);
    let mut probes = probes;
    let tls_on = config.tls_plaintext
        && probes.start_tls(&config.proc_root, ebpf::tls::TlsMetrics::new(&registry));
    if tls_on {
        log::info!(
            "TLS plaintext: {} TLS library files probed",
            probes.tls_libraries()
        );
    }
    let probes = Arc::new(Mutex::new(probes));

    // Listeners that existed before the programs were attached (of the scope's namespaces).
    let scope: Vec<u32> = config.netns.iter().map(|ns| ns.inode).collect();
    seed_listeners(&table, &scope);

    let queue_batches = (config.queue_events as usize / ebpf::reader::BATCH).max(1);
    let (tx, rx) = mpsc::channel::<Batch>(queue_batches);
    let stop = Arc::new(AtomicBool::new(false));
    let drained = Arc::new(Drained::default());
    let reader = Reader {
        ring,
        queue: tx,
        metrics: kernel_metrics.clone(),
        poll_interval: Duration::from_millis(config.poll_interval_ms),
        stop: stop.clone(),
        drained: drained.clone(),
    };
    let reader = std::thread::Builder::new()
        .name("ringbuf-reader".into())
        .spawn(move || reader.run())
        .map_err(RunError::Signals)?;
    let processor = tokio::spawn(process(rx, queries, table.clone(), drained, peer_wake));
    let maps = Arc::new(Mutex::new(maps));
    let housekeeping = tokio::spawn(housekeeping(
        maps.clone(),
        kernel_metrics.clone(),
        table.clone(),
        tls_on.then(|| probes.clone()),
    ));

    crate::alloc::release_freed_memory();
    ready.store(true, Ordering::Release);
    log::info!(
        "meshtap ready: {} programs attached, serving {scheme}://{}/metrics and the web page at {scheme}://{}/{}",
        probes.lock().unwrap_or_else(|e| e.into_inner()).attached,
        config.listen,
        config.listen,
        if config.security.token_file.is_some() {
            " (/api/ needs the token)"
        } else {
            ""
        }
    );

    let mut sigterm =
        tokio::signal::unix::signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut sigint =
        tokio::signal::unix::signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let server_result = tokio::select! {
        _ = sigterm.recv() => { log::info!("SIGTERM: shutting down"); None }
        _ = sigint.recv() => { log::info!("SIGINT: shutting down"); None }
        r = server => Some(r),
    };

    // Shutdown order: stop serving, detach the programs (no new events), stop the reader, let
    // the processor drain what is queued.
    ready.store(false, Ordering::Release);
    let _ = shutdown_tx.send(true);
    housekeeping.abort();
    if let Some(reloads) = reloads {
        reloads.abort();
    }
    // A scan running on a blocking thread holds the lock: detaching waits for it.
    probes.lock().unwrap_or_else(|e| e.into_inner()).unload();
    drop(run_time_stats);
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let _ = processor.await;
    drop(maps);
    // Both exporters flush at once, within the same 5 s.
    let flush = Duration::from_secs(5);
    tokio::join!(
        async {
            if let Some(sink) = &zipkin {
                sink.flush_and_stop(flush).await;
            }
        },
        async {
            if let Some(sink) = &otlp {
                sink.flush_and_stop(flush).await;
            }
        },
    );
    log::info!("all eBPF programs detached");
    match server_result {
        Some(Ok(Err(e))) => Err(RunError::Serve(e)),
        _ => Ok(()),
    }
}

/// Indexes the listening sockets found in `/proc`, and the addresses of their namespaces; only
/// those of the namespaces in `scope` when it is not empty (`--netns`), as the kernel side
/// reports only theirs: a listener elsewhere on the node is a remote peer to this agent.
fn seed_listeners(table: &Mutex<ConnTable>, scope: &[u32]) {
    let proc_root = table
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .services
        .proc_root()
        .to_path_buf();
    match scan_listeners(&proc_root, 65536) {
        Ok(scan) => {
            let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
            let mut seen_netns = std::collections::HashSet::new();
            for l in scan.listeners {
                let netns = l.netns as u32;
                if !scope.is_empty() && !scope.contains(&netns) {
                    continue;
                }
                if seen_netns.insert(netns) {
                    for ip in crate::metadata::netns_addresses(&proc_root, l.tgid) {
                        table.listeners.add_addr(netns, ip);
                    }
                }
                let process = crate::event::Process {
                    tgid: l.tgid,
                    tid: l.tgid,
                    start_ns: 0,
                    cgroup_id: 0,
                    comm: l.comm.clone().into(),
                };
                let id = table.services.identify(&process, Some(l.addr.port()));
                table.listeners.add(Listener {
                    addr: l.addr,
                    netns,
                    service: id.service,
                    pod: id.pod,
                    process: Some(process),
                });
            }
            if scan.skipped > 0 {
                log::warn!(
                    "{} listening sockets not indexed (limit reached)",
                    scan.skipped
                );
            }
        }
        Err(e) => log::warn!("cannot scan existing listeners: {e}"),
    }
}

async fn process(
    mut rx: mpsc::Receiver<Batch>,
    mut queries: mpsc::Receiver<ConnectionsQuery>,
    table: Arc<Mutex<ConnTable>>,
    drained: Arc<Drained>,
    peer_wake: Option<Arc<tokio::sync::Notify>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let peer_wake = peer_wake.unwrap_or_default();
    loop {
        tokio::select! {
            _ = peer_wake.notified() => {
                // Other agents answered for spans held here: link them now.
                let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
                table.tick(monotonic_ns(), 0);
            }
            batch = rx.recv() => {
                let Some(batch) = batch else { break };
                let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
                for event in &batch.events {
                    table.handle_in(event, &batch.payloads);
                }
            }
            Some(reply) = queries.recv() => {
                let snapshot: Vec<ConnectionView> =
                    table.lock().unwrap_or_else(|e| e.into_inner()).snapshot();
                let _ = reply.send(snapshot);
            }
            _ = tick.tick() => {
                // In this order (see `Drained`): what the reader had queued when it last found
                // the ring empty has been processed if the queue is empty now.
                let complete_before = drained.complete_before();
                let complete_before = if rx.is_empty() { complete_before } else { 0 };
                let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
                table.tick(monotonic_ns(), complete_before);
            }
        }
    }
}

/// Once a second: kernel counters and map occupancy into metrics, new TLS libraries; every
/// minute: end connections whose close event was lost.
async fn housekeeping(
    maps: Arc<Mutex<KernelMaps>>,
    metrics: Arc<KernelMetrics>,
    table: Arc<Mutex<ConnTable>>,
    tls: Option<Arc<Mutex<ebpf::Probes>>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let maps = maps.clone();
        let metrics_c = metrics.clone();
        let table_c = table.clone();
        let sweep = n.is_multiple_of(SWEEP_IDLE.as_secs());
        let count_entries = n == 1 || n.is_multiple_of(MAP_ENTRIES_EVERY.as_secs());
        let tls = tls.clone();
        // Map iteration is a syscall per key: keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(probes) = tls {
                probes.lock().unwrap_or_else(|e| e.into_inner()).scan_tls();
            }
            let mut maps = maps.lock().unwrap_or_else(|e| e.into_inner());
            refresh_kernel_metrics(&mut maps, &metrics_c, count_entries);
            if sweep {
                let now = monotonic_ns();
                let mut table = table_c.lock().unwrap_or_else(|e| e.into_inner());
                let ended = table.sweep(now, SWEEP_IDLE.as_nanos() as u64, |sk, id| {
                    maps.tracks(sk, id)
                });
                if ended > 0 {
                    log::debug!("ended {ended} connections whose close event was lost");
                }
            }
        })
        .await;
    }
}

fn refresh_kernel_metrics(maps: &mut KernelMaps, metrics: &KernelMetrics, count_entries: bool) {
    refresh_program_metrics(maps, metrics);
    let stats = maps.stats();
    for k in 1..meshtap_common::kind::COUNT {
        let slot = (stat::LOST_BASE + k as u32) as usize;
        let counter = metrics.events_lost.get_or_create_owned(&LostLabels {
            stage: "kernel".to_string(),
            kind: crate::event::kind_name(k).to_string(),
        });
        metrics.kernel_counter(slot, stats[slot], &counter);
    }
    for (i, name) in map_id::NAMES.iter().enumerate() {
        let slot = (stat::MAP_FAIL_BASE as usize) + i;
        let counter = metrics.map_insert_failures.get_or_create_owned(&MapLabels {
            map: name.to_string(),
        });
        metrics.kernel_counter(slot, stats[slot], &counter);
    }
    let slot = stat::RETRANSMIT_UNTRACKED as usize;
    metrics.kernel_counter(slot, stats[slot], &metrics.retransmits_untracked);
    let slot = stat::TLS_PAYLOAD_SKIPPED as usize;
    metrics.kernel_counter(slot, stats[slot], &metrics.tls_payload_skipped);
    let slot = stat::CONTINUATION_FAILED as usize;
    metrics.kernel_counter(slot, stats[slot], &metrics.http2_continuations_failed);
    let slot = stat::TLS_UNTIED as usize;
    metrics.kernel_counter(slot, stats[slot], &metrics.tls_plaintext_untied);
    let slot = stat::TLS_UNMATCHED_RETURN as usize;
    metrics.kernel_counter(slot, stats[slot], &metrics.tls_unmatched_returns);

    if !count_entries {
        return;
    }
    for (name, count) in maps.entries() {
        metrics
            .map_entries
            .get_or_create(&MapLabels {
                map: name.to_string(),
            })
            .set(count as i64);
    }
}

/// The kernel's per-program counters (fdinfo) into counters: skipped runs always, runs and run
/// time when BPF run-time statistics are on. A program's series appear at its first read.
fn refresh_program_metrics(maps: &mut KernelMaps, metrics: &KernelMetrics) {
    for program in &mut maps.programs {
        let Some(now) = ProgramCounters::read(&program.fd) else {
            continue;
        };
        let labels = ProgramLabels {
            program: program.name.clone(),
        };
        let was = program.seen;
        if let Some(misses) = now.misses {
            metrics
                .program_misses
                .get_or_create(&labels)
                .inc_by(misses.saturating_sub(was.misses.unwrap_or(0)));
        }
        metrics
            .program_runs
            .get_or_create(&labels)
            .inc_by(now.runs.saturating_sub(was.runs));
        metrics
            .program_run_seconds
            .get_or_create(&labels)
            .inc_by(now.run_time_ns.saturating_sub(was.run_time_ns) as f64 / 1e9);
        program.seen = now;
    }
}
