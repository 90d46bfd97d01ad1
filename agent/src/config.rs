//! One configuration: command-line flags over a TOML file over defaults, validated once.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use serde::Deserialize;

use meshtap_common::{DEFAULT_CAPTURE, MAX_CAPTURE, MAX_NETNS};

use crate::export::otlp::config::{OtlpConfig, OtlpConfigError};
use crate::export::security::{SecurityConfig, TlsFiles};
use crate::metadata::netns::{NetnsFile, NetnsFileError, netns_file};
use crate::protocol::db::QueryText;
use crate::trace::assembly::InstrumentedSpans;

/// meshtap: zero-instrumentation TCP and service metrics for every process on this node, from
/// eBPF syscall and TCP tracepoints (no kprobes). Must run as root (or with CAP_BPF, CAP_PERFMON,
/// CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH).
#[derive(Parser, Debug, Default)]
#[command(name = "meshtap", version, about, long_about = None)]
pub struct Flags {
    /// Read settings from this TOML file (keys as in the README: listen, capture_bytes, ...).
    /// Flags given on the command line override the file.
    #[arg(long, value_name = "FILE", env = "MESHTAP_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address of the HTTP endpoint serving /metrics, /healthz, /readyz, the web page and the
    /// /api/ routes (see --tls-cert and --token-file to protect it) [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Serve the endpoint over TLS with this PEM certificate chain (leaf first); needs --tls-key.
    /// Plain HTTP to the port is then refused. The certificate and key files are read again
    /// when they change (checked every 2 s): a rotated certificate is served to new connections
    /// without a restart; files that do not load keep the previous certificate (logged, counted
    /// in meshtap_endpoint_reloads_total{result="failed"}).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1, unencrypted).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Require `Authorization: Bearer <token>` on every /api/ route (the web page's data, the
    /// connections, the Zipkin query API), the token being this file's content (surrounding
    /// whitespace ignored; e.g. a Kubernetes Secret's key, read again when it changes). The page
    /// asks for the token; /healthz, /readyz and, unless --metrics-require-token, /metrics stay
    /// open. Refusals answer 401 and are counted in meshtap_endpoint_unauthorized_total.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Require the --token-file token on /metrics too (give Prometheus the token with
    /// `authorization: {credentials_file: ...}`): true or false [default: false; the flag alone
    /// means true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub metrics_require_token: Option<bool>,
    /// Watch only the sockets of this network namespace (repeatable, at most 64): a namespace
    /// file such as /run/netns/<name> or /proc/<pid>/ns/net. Filtered in the kernel:
    /// connections, listeners and payloads of other namespaces never reach the agent, which
    /// then behaves as the node of these namespaces alone (their peers elsewhere are remote).
    /// Several agents can run on one kernel at once, each with its own --netns and its own
    /// --listen; nothing else needs to be told [default: every namespace of the node].
    #[arg(long = "netns", value_name = "PATH")]
    pub netns: Vec<PathBuf>,

    /// Payload bytes captured from each read/write for protocol parsing, 0..=4096 [default: 1024].
    /// Byte counts are always exact whatever this is. HTTP/2 connections are captured whole (up
    /// to 128 KiB per read/write) whatever this is: their header blocks must be seen whole.
    #[arg(long, value_name = "N")]
    pub capture_bytes: Option<u32>,

    /// Size of the kernel ring buffer in bytes: a power of two, at least 4096 [default: 4194304].
    /// Events that do not fit are counted in meshtap_events_lost_total{stage="kernel"}.
    #[arg(long, value_name = "BYTES")]
    pub ring_buffer_bytes: Option<u32>,

    /// Connections tracked at once, in the kernel map and in the agent [default: 65536].
    /// Failed inserts are counted in meshtap_map_insert_failures_total.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,

    /// Events buffered between the ring-buffer reader and the processing stage [default: 65536; each holds up to --capture-bytes of payload].
    /// Overflow is counted in meshtap_events_lost_total{stage="userspace_queue"}.
    #[arg(long, value_name = "N")]
    pub queue_events: Option<u32>,

    /// How often the reader drains the ring buffer when the kernel has not woken it, in ms
    /// (the kernel wakes it early once a quarter of the ring is pending) [default: 20].
    #[arg(long, value_name = "MS")]
    pub poll_interval_ms: Option<u64>,

    /// Turn on BPF run-time statistics while the agent runs, so that
    /// meshtap_ebpf_program_runs_total and meshtap_ebpf_program_run_seconds_total count what
    /// each program costs: true or false [default: false]. Costs two clock reads per program run
    /// (for every BPF program on the node) and needs CAP_SYS_ADMIN.
    #[arg(long, value_name = "BOOL")]
    pub ebpf_stats: Option<bool>,

    /// Read the plaintext of TLS connections with uprobes on the TLS libraries (OpenSSL's
    /// SSL_read/SSL_write in every libssl.so and in executables that export them, Go's
    /// crypto/tls in Go executables): true or false [default: true]. Needs CAP_SYS_ADMIN; without it the agent says so once and counts
    /// TLS connections' bytes only.
    #[arg(long, value_name = "BOOL")]
    pub tls_plaintext: Option<bool>,

    /// Label sets allowed per metric family; further ones are folded into one
    /// "__overflow__" series and counted in meshtap_metric_series_overflow_total [default: 1000; a histogram label set is ~17 lines of /metrics].
    #[arg(long, value_name = "N")]
    pub max_series: Option<u32>,

    /// Remove a metric series not updated for this many seconds [default: 900].
    #[arg(long, value_name = "SECS")]
    pub series_ttl_secs: Option<u64>,

    /// Bucket boundaries of the request-duration histograms, seconds, comma-separated
    /// [default: OpenTelemetry's 0.005,0.01,0.025,0.05,0.075,0.1,0.25,0.5,0.75,1,2.5,5,7.5,10].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub duration_buckets: Option<Vec<f64>>,

    /// Name the service of processes running executable EXE as NAME (repeatable). Beats
    /// OTEL_SERVICE_NAME and the executable name.
    #[arg(long = "service-name", value_name = "EXE=NAME")]
    pub service_name: Vec<String>,

    /// Name the service of the process serving on PORT as NAME (repeatable). Beats every other
    /// source of a server's name; the process's calls to others go by NAME too.
    #[arg(long = "service-port", value_name = "PORT=NAME")]
    pub service_port: Vec<String>,

    /// Link traces across nodes (repeatable): the meshtap agent at URL (its endpoint, e.g.
    /// http://10.1.2.1:9464) serves the clients whose address is in CIDR. A SERVER span of a
    /// request without trace headers from such a client waits (at most the 2 s link wait)
    /// for that agent to give the context of the CLIENT span that sent it, and joins its
    /// trace; CLIENT spans to other nodes are kept 30 s for the agents that ask. With
    /// --token-file the same token is sent to the peers.
    #[arg(long = "peer", value_name = "CIDR=URL")]
    pub peer: Vec<String>,

    /// Link traces across nodes with the meshtap agents of the other nodes found through the
    /// Kubernetes API: a client that is a pod of another node is served by the meshtap pod of
    /// that node (labels app.kubernetes.io/name=meshtap, app.kubernetes.io/component=agent),
    /// asked on this agent's own --listen port (https with --tls-cert): true or false
    /// [default: false; the DaemonSet sets it].
    #[arg(long, value_name = "BOOL")]
    pub peers_from_kubernetes: Option<bool>,

    /// CA certificates (PEM) that https peers' certificates must chain to, or the peers' own
    /// certificate (one self-signed certificate shared by the agents is trusted as it is):
    /// required when a --peer URL is https, or with --peers-from-kubernetes and --tls-cert (the
    /// agents then ask each other over https).
    #[arg(long, value_name = "FILE")]
    pub peer_ca: Option<PathBuf>,

    /// The name https peers' certificates must carry, instead of the address in their URL
    /// (one certificate shared by every agent, whose pod addresses it cannot list).
    #[arg(long, value_name = "NAME")]
    pub peer_server_name: Option<String>,

    /// Export spans to this Zipkin v2 endpoint (e.g. http://zipkin:9411/api/v2/spans). Without
    /// it spans are only kept in the built-in store, served at /api/v2/* on --listen.
    #[arg(long, value_name = "URL")]
    pub zipkin_endpoint: Option<String>,

    /// Spans per POST to Zipkin [default: 500].
    #[arg(long, value_name = "N")]
    pub zipkin_batch_spans: Option<u32>,

    /// How long a span waits for a batch to fill before it is sent, ms [default: 1000].
    #[arg(long, value_name = "MS")]
    pub zipkin_flush_ms: Option<u64>,

    /// Gzip the bodies sent to Zipkin: true or false [default: true].
    #[arg(long, value_name = "BOOL")]
    pub zipkin_gzip: Option<bool>,

    /// Timeout of one POST to Zipkin, ms [default: 10000].
    #[arg(long, value_name = "MS")]
    pub zipkin_timeout_ms: Option<u64>,

    /// Spans queued for Zipkin at most; beyond, spans are dropped and counted in
    /// meshtap_spans_dropped_total{reason="queue_full"} [default: 10000].
    #[arg(long, value_name = "N")]
    pub zipkin_queue_spans: Option<u32>,

    /// Export spans over OTLP/HTTP (protobuf) to this receiver, e.g. http://otel-collector:4318
    /// (spans go to /v1/traces; a URL with a path is used as it is). Can run with
    /// --zipkin-endpoint: both get the same spans.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Spans per POST to the OTLP receiver [default: 500].
    #[arg(long, value_name = "N")]
    pub otlp_batch_spans: Option<u32>,

    /// How long a span waits for an OTLP batch to fill before it is sent, ms [default: 1000].
    #[arg(long, value_name = "MS")]
    pub otlp_flush_ms: Option<u64>,

    /// Gzip the bodies sent to the OTLP receiver: true or false [default: true].
    #[arg(long, value_name = "BOOL")]
    pub otlp_gzip: Option<bool>,

    /// Timeout of one POST to the OTLP receiver, ms [default: 10000].
    #[arg(long, value_name = "MS")]
    pub otlp_timeout_ms: Option<u64>,

    /// Spans queued for the OTLP receiver at most; beyond, spans are dropped and counted in
    /// meshtap_otlp_spans_dropped_total{reason="queue_full"} [default: 10000].
    #[arg(long, value_name = "N")]
    pub otlp_queue_spans: Option<u32>,

    /// Fraction of traces kept, decided from the trace id so that every node keeps the same
    /// traces, 0.0..=1.0 [default: 1.0].
    #[arg(long, value_name = "RATIO")]
    pub sampling_ratio: Option<f64>,

    /// Keep every span with an error whatever the sampling ratio: true or false [default: false].
    #[arg(long, value_name = "BOOL")]
    pub keep_errors: Option<bool>,

    /// Spans kept in the built-in trace store (oldest traces evicted first) [default: 10000].
    #[arg(long, value_name = "N")]
    pub trace_store_spans: Option<u32>,

    /// What database spans carry of a statement in `db.query.text`: off, sanitized (literals
    /// replaced by `?`: no value of a user's data leaves the node) or raw [default: sanitized].
    #[arg(long, value_name = "MODE")]
    pub db_query_text: Option<String>,

    /// Spans of processes that run a tracer of their own (seen sending trace contexts they
    /// created): report (emit them beside the SDK's) or skip (their SDK reports them; their
    /// neighbours' spans and every metric stay) [default: report].
    #[arg(long, value_name = "MODE")]
    pub instrumented_spans: Option<String>,

    /// Traces per second the built-in trace store admits once a burst of 10 seconds' worth is
    /// spent (the rest are counted and still exported to a collector); 0 = every trace
    /// [default: 200].
    #[arg(long, value_name = "TRACES_PER_S")]
    pub trace_store_rate: Option<u32>,

    /// BTF describing the running kernel, used to find kernel structure offsets
    /// [default: /sys/kernel/btf/vmlinux]. For kernels without CONFIG_DEBUG_INFO_BTF, pass a
    /// BTF file built for the exact kernel (e.g. from BTFHub).
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,

    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides) [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Kubernetes metadata (pod, namespace and workload names): auto, on or off [default: auto:
    /// on when KUBERNETES_SERVICE_HOST is set, as in a pod, or --kube-api-url is given].
    #[arg(long, value_name = "MODE")]
    pub kubernetes: Option<String>,

    /// Talk to the Kubernetes API at this http(s) URL without in-cluster credentials (for
    /// `kubectl proxy` or tests) [default: the in-cluster service account].
    #[arg(long, value_name = "URL", env = "MESHTAP_KUBE_API_URL")]
    pub kube_api_url: Option<String>,

    /// Name of the node this agent runs on, to watch only its pods (the DaemonSet sets it from
    /// spec.nodeName). Required when Kubernetes metadata is on.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Ceiling of the back-off between retries when the Kubernetes API fails, seconds
    /// (retries start at 0.5 s and double) [default: 30].
    #[arg(long, value_name = "SECS")]
    pub kube_retry_max_seconds: Option<u64>,

    /// Objects kept per Kubernetes cache (pods, services, replicasets); beyond, objects are
    /// counted in meshtap_kubernetes_cache_rejected_total and not stored [default: 100000].
    #[arg(long, value_name = "N")]
    pub kube_cache_entries: Option<u32>,

    /// Where the host's procfs is mounted (a container mounts the host's /proc elsewhere)
    /// [default: /proc].
    #[arg(long, value_name = "PATH")]
    pub proc_root: Option<PathBuf>,

    /// The host's cgroup v2 hierarchy, to name the container of a process that exited before
    /// /proc/<pid>/cgroup was read; a hybrid host's /sys/fs/cgroup is taken as its unified/
    /// [default: the first cgroup2 mount in /proc/self/mountinfo].
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
}

/// The same settings as a file. Unknown keys are an error, so a typo never goes unnoticed.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub metrics_require_token: Option<bool>,
    /// `["/run/netns/a", "/proc/1234/ns/net"]`
    pub netns: Option<Vec<PathBuf>>,
    pub capture_bytes: Option<u32>,
    pub ring_buffer_bytes: Option<u32>,
    pub max_connections: Option<u32>,
    pub queue_events: Option<u32>,
    pub poll_interval_ms: Option<u64>,
    pub ebpf_stats: Option<bool>,
    pub tls_plaintext: Option<bool>,
    pub max_series: Option<u32>,
    pub series_ttl_secs: Option<u64>,
    pub duration_buckets: Option<Vec<f64>>,
    /// `{ executable = "service" }`
    pub service_names: Option<std::collections::HashMap<String, String>>,
    /// `{ "8080" = "service" }`
    pub service_ports: Option<std::collections::HashMap<String, String>>,
    /// `["10.1.2.0/24=http://10.1.2.1:9464"]`
    pub peers: Option<Vec<String>>,
    pub peers_from_kubernetes: Option<bool>,
    pub peer_ca: Option<PathBuf>,
    pub peer_server_name: Option<String>,
    pub btf: Option<PathBuf>,
    pub zipkin_endpoint: Option<String>,
    pub zipkin_batch_spans: Option<u32>,
    pub zipkin_flush_ms: Option<u64>,
    pub zipkin_gzip: Option<bool>,
    pub zipkin_timeout_ms: Option<u64>,
    pub zipkin_queue_spans: Option<u32>,
    pub otlp_endpoint: Option<String>,
    pub otlp_batch_spans: Option<u32>,
    pub otlp_flush_ms: Option<u64>,
    pub otlp_gzip: Option<bool>,
    pub otlp_timeout_ms: Option<u64>,
    pub otlp_queue_spans: Option<u32>,
    pub sampling_ratio: Option<f64>,
    pub keep_errors: Option<bool>,
    pub trace_store_spans: Option<u32>,
    pub trace_store_rate: Option<u32>,
    pub db_query_text: Option<String>,
    pub instrumented_spans: Option<String>,
    pub log_level: Option<String>,
    pub kubernetes: Option<String>,
    pub kube_api_url: Option<String>,
    pub node_name: Option<String>,
    pub kube_retry_max_seconds: Option<u64>,
    pub kube_cache_entries: Option<u32>,
    pub proc_root: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
}

/// Where Kubernetes metadata comes from, if anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kubernetes {
    Off,
    On {
        /// None: the in-cluster service account.
        api_url: Option<String>,
        node_name: String,
        retry_max_secs: u64,
        cache_entries: u32,
    },
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// TLS and the bearer token of the endpoint.
    pub security: SecurityConfig,
    /// The network namespaces the agent is scoped to, distinct; empty: all of the node's.
    pub netns: Vec<NetnsFile>,
    pub capture_bytes: u32,
    pub ring_buffer_bytes: u32,
    pub max_connections: u32,
    pub queue_events: u32,
    pub poll_interval_ms: u64,
    pub ebpf_stats: bool,
    pub tls_plaintext: bool,
    pub max_series: u32,
    pub series_ttl_secs: u64,
    pub duration_buckets: Vec<f64>,
    pub service_names: std::collections::HashMap<String, String>,
    pub service_ports: std::collections::HashMap<u16, String>,
    /// Agents of other nodes, for cross-node trace links.
    pub peers: crate::export::peer::Peers,
    /// Also the agents found through the Kubernetes API.
    pub peers_from_kubernetes: bool,
    /// Trust for https peers, and the name to check instead of their address.
    pub peer_ca: Option<PathBuf>,
    pub peer_server_name: Option<String>,
    pub btf: PathBuf,
    pub zipkin_endpoint: Option<String>,
    pub zipkin_batch_spans: u32,
    pub zipkin_flush_ms: u64,
    pub zipkin_gzip: bool,
    pub zipkin_timeout_ms: u64,
    pub zipkin_queue_spans: u32,
    /// None: no OTLP export.
    pub otlp: Option<OtlpConfig>,
    pub sampling_ratio: f64,
    pub keep_errors: bool,
    pub trace_store_spans: u32,
    /// Traces per second admitted to the store after its burst; 0 = no limit.
    pub trace_store_rate: u32,
    /// `db.query.text` of database spans.
    pub db_query_text: QueryText,
    /// What is emitted of instrumented processes' spans.
    pub instrumented_spans: InstrumentedSpans,
    pub log_level: String,
    pub kubernetes: Kubernetes,
    pub proc_root: PathBuf,
    /// None: no cgroup v2 hierarchy found (cgroup ids are then not resolved).
    pub cgroup_root: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {setting} = {value}: {expected}")]
    Invalid {
        setting: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "invalid netns (--netns) = {}: {source}; give a network namespace file such as /run/netns/<name> (ip netns add) or /proc/<pid>/ns/net",
        path.display()
    )]
    Netns {
        path: PathBuf,
        #[source]
        source: NetnsFileError,
    },
    #[error(transparent)]
    Otlp(#[from] OtlpConfigError),
    #[error(transparent)]
    Peer(#[from] crate::export::peer::PeerError),
}

/// `--netns` (all of them; none given: the file's list) resolved to distinct namespaces.
fn netns(flags: &Flags, file: &FileConfig) -> Result<Vec<NetnsFile>, ConfigError> {
    let paths = if flags.netns.is_empty() {
        file.netns.clone().unwrap_or_default()
    } else {
        flags.netns.clone()
    };
    let mut scope: Vec<NetnsFile> = Vec::new();
    for path in paths {
        let ns = netns_file(&path).map_err(|source| ConfigError::Netns {
            path: path.clone(),
            source,
        })?;
        if !scope.iter().any(|known| known.inode == ns.inode) {
            scope.push(ns);
        }
    }
    if scope.len() > MAX_NETNS as usize {
        return Err(ConfigError::Invalid {
            setting: "netns (--netns)",
            value: format!("{} network namespaces", scope.len()),
            expected: "at most 64 network namespaces per agent: run another agent for the rest",
        });
    }
    Ok(scope)
}

fn split_pair(setting: &'static str, pair: &str) -> Result<(String, String), ConfigError> {
    match pair.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(ConfigError::Invalid {
            setting,
            value: pair.to_string(),
            expected: "must look like KEY=NAME",
        }),
    }
}

fn parse_port(setting: &'static str, port: &str) -> Result<u16, ConfigError> {
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or(ConfigError::Invalid {
            setting,
            value: port.to_string(),
            expected: "the port must be a number between 1 and 65535",
        })
}

/// One line for a TOML error: the offending line of the file (which names the key) and why.
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let Some(span) = err.span() else {
        return err.message().to_string();
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    format!("line {line_no} `{line}`: {}", err.message())
}

/// The cgroup v2 hierarchy at or under `root`: a host on the hybrid layout (cgroup v1
/// controllers, v2 at `unified/`) mounted whole has it one level down.
fn cgroup2_root(root: PathBuf) -> PathBuf {
    let unified = root.join("unified");
    if !root.join("cgroup.controllers").exists() && unified.join("cgroup.controllers").exists() {
        unified
    } else {
        root
    }
}

/// Resolves `--kubernetes` (auto: on inside a pod or with an explicit API URL).
fn kubernetes(flags: &Flags, file: &FileConfig) -> Result<Kubernetes, ConfigError> {
    let mode = flags
        .kubernetes
        .clone()
        .or(file.kubernetes.clone())
        .unwrap_or_else(|| "auto".to_string());
    let api_url = flags.kube_api_url.clone().or(file.kube_api_url.clone());
    let on = match mode.as_str() {
        "off" => false,
        "on" => true,
        "auto" => api_url.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        _ => {
            return Err(ConfigError::Invalid {
                setting: "kubernetes (--kubernetes)",
                value: mode,
                expected: "must be auto, on or off",
            });
        }
    };
    if !on {
        return Ok(Kubernetes::Off);
    }
    if let Some(url) = &api_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(ConfigError::Invalid {
            setting: "kube_api_url (--kube-api-url)",
            value: url.clone(),
            expected: "must be an http:// or https:// URL",
        });
    }
    let Some(node_name) = flags
        .node_name
        .clone()
        .or(file.node_name.clone())
        .filter(|n| !n.is_empty())
    else {
        return Err(ConfigError::Invalid {
            setting: "node_name (--node-name, NODE_NAME)",
            value: String::new(),
            expected: "is required with Kubernetes metadata: set NODE_NAME from the downward API (spec.nodeName), or pass --kubernetes off",
        });
    };
    let retry_max_secs = flags
        .kube_retry_max_seconds
        .or(file.kube_retry_max_seconds)
        .unwrap_or(30);
    if !(1..=3600).contains(&retry_max_secs) {
        return Err(ConfigError::Invalid {
            setting: "kube_retry_max_seconds (--kube-retry-max-seconds)",
            value: retry_max_secs.to_string(),
            expected: "must be between 1 and 3600",
        });
    }
    let cache_entries = flags
        .kube_cache_entries
        .or(file.kube_cache_entries)
        .unwrap_or(100_000);
    if !(100..=10_000_000).contains(&cache_entries) {
        return Err(ConfigError::Invalid {
            setting: "kube_cache_entries (--kube-cache-entries)",
            value: cache_entries.to_string(),
            expected: "must be between 100 and 10000000",
        });
    }
    Ok(Kubernetes::On {
        api_url,
        node_name,
        retry_max_secs,
        cache_entries,
    })
}

/// The endpoint's TLS files and token: the certificate and the key go together, and /metrics can
/// require a token only when there is one.
fn security(flags: &Flags, file: &FileConfig) -> Result<SecurityConfig, ConfigError> {
    let cert = flags.tls_cert.clone().or(file.tls_cert.clone());
    let key = flags.tls_key.clone().or(file.tls_key.clone());
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(path), None) | (None, Some(path)) => {
            return Err(ConfigError::Invalid {
                setting: "tls_cert / tls_key (--tls-cert / --tls-key)",
                value: path.display().to_string(),
                expected: "the certificate and its key are given together",
            });
        }
    };
    let token_file = flags.token_file.clone().or(file.token_file.clone());
    let metrics_require_token = flags
        .metrics_require_token
        .or(file.metrics_require_token)
        .unwrap_or(false);
    if metrics_require_token && token_file.is_none() {
        return Err(ConfigError::Invalid {
            setting: "metrics_require_token (--metrics-require-token)",
            value: "true".to_string(),
            expected: "needs a token: set token_file (--token-file) too",
        });
    }
    Ok(SecurityConfig {
        tls,
        token_file,
        metrics_require_token,
    })
}

/// The OTLP exporter's section, when `--otlp-endpoint` is set (validated with the rest).
fn otlp(flags: &Flags, file: &FileConfig) -> Option<OtlpConfig> {
    let endpoint = flags.otlp_endpoint.clone().or(file.otlp_endpoint.clone())?;
    let mut otlp = OtlpConfig::new(endpoint);
    let d = &mut otlp.delivery;
    if let Some(n) = flags.otlp_batch_spans.or(file.otlp_batch_spans) {
        d.batch_spans = n as usize;
    }
    if let Some(ms) = flags.otlp_flush_ms.or(file.otlp_flush_ms) {
        d.flush_interval = Duration::from_millis(ms);
    }
    if let Some(gzip) = flags.otlp_gzip.or(file.otlp_gzip) {
        d.gzip = gzip;
    }
    if let Some(ms) = flags.otlp_timeout_ms.or(file.otlp_timeout_ms) {
        d.request_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = flags.otlp_queue_spans.or(file.otlp_queue_spans) {
        d.queue_spans = n as usize;
    }
    Some(otlp)
}

impl Config {
    pub fn load(flags: Flags) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: describe_toml_error(&text, &e),
                })?
            }
            None => FileConfig::default(),
        };
        let kubernetes = kubernetes(&flags, &file)?;
        let otlp = otlp(&flags, &file);
        let security = security(&flags, &file)?;
        let netns = netns(&flags, &file)?;
        let config = Config {
            listen: flags
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9464))),
            security,
            netns,
            capture_bytes: flags
                .capture_bytes
                .or(file.capture_bytes)
                .unwrap_or(DEFAULT_CAPTURE),
            ring_buffer_bytes: flags
                .ring_buffer_bytes
                .or(file.ring_buffer_bytes)
                .unwrap_or(4 * 1024 * 1024),
            max_connections: flags
                .max_connections
                .or(file.max_connections)
                .unwrap_or(65536),
            queue_events: flags.queue_events.or(file.queue_events).unwrap_or(65536),
            poll_interval_ms: flags
                .poll_interval_ms
                .or(file.poll_interval_ms)
                .unwrap_or(20),
            ebpf_stats: flags.ebpf_stats.or(file.ebpf_stats).unwrap_or(false),
            tls_plaintext: flags.tls_plaintext.or(file.tls_plaintext).unwrap_or(true),
            max_series: flags.max_series.or(file.max_series).unwrap_or(1000),
            series_ttl_secs: flags
                .series_ttl_secs
                .or(file.series_ttl_secs)
                .unwrap_or(900),
            duration_buckets: flags
                .duration_buckets
                .or(file.duration_buckets)
                .unwrap_or_else(|| crate::metrics::DEFAULT_DURATION_BUCKETS.to_vec()),
            service_names: {
                let mut map = file.service_names.unwrap_or_default();
                for pair in &flags.service_name {
                    let (exe, name) = split_pair("--service-name", pair)?;
                    map.insert(exe, name);
                }
                map
            },
            service_ports: {
                let mut map = std::collections::HashMap::new();
                for (port, name) in file.service_ports.unwrap_or_default() {
                    map.insert(parse_port("service_ports", &port)?, name);
                }
                for pair in &flags.service_port {
                    let (port, name) = split_pair("--service-port", pair)?;
                    map.insert(parse_port("--service-port", &port)?, name);
                }
                map
            },
            peer_ca: flags.peer_ca.or(file.peer_ca),
            peer_server_name: flags.peer_server_name.or(file.peer_server_name),
            peers_from_kubernetes: flags
                .peers_from_kubernetes
                .or(file.peers_from_kubernetes)
                .unwrap_or(false),
            peers: crate::export::peer::Peers {
                ranges: file
                    .peers
                    .unwrap_or_default()
                    .iter()
                    .chain(&flags.peer)
                    .map(|p| crate::export::peer::PeerRange::parse(p))
                    .collect::<Result<_, _>>()?,
            },
            btf: flags
                .btf
                .or(file.btf)
                .unwrap_or_else(|| PathBuf::from("/sys/kernel/btf/vmlinux")),
            zipkin_endpoint: flags.zipkin_endpoint.or(file.zipkin_endpoint),
            zipkin_batch_spans: flags
                .zipkin_batch_spans
                .or(file.zipkin_batch_spans)
                .unwrap_or(500),
            zipkin_flush_ms: flags
                .zipkin_flush_ms
                .or(file.zipkin_flush_ms)
                .unwrap_or(1000),
            zipkin_gzip: flags.zipkin_gzip.or(file.zipkin_gzip).unwrap_or(true),
            zipkin_timeout_ms: flags
                .zipkin_timeout_ms
                .or(file.zipkin_timeout_ms)
                .unwrap_or(10_000),
            zipkin_queue_spans: flags
                .zipkin_queue_spans
                .or(file.zipkin_queue_spans)
                .unwrap_or(10_000),
            otlp,
            sampling_ratio: flags.sampling_ratio.or(file.sampling_ratio).unwrap_or(1.0),
            keep_errors: flags.keep_errors.or(file.keep_errors).unwrap_or(false),
            trace_store_spans: flags
                .trace_store_spans
                .or(file.trace_store_spans)
                .unwrap_or(10_000),
            trace_store_rate: flags
                .trace_store_rate
                .or(file.trace_store_rate)
                .unwrap_or(200),
            db_query_text: match flags
                .db_query_text
                .or(file.db_query_text)
                .as_deref()
                .unwrap_or("sanitized")
            {
                "off" => QueryText::Off,
                "sanitized" => QueryText::Sanitized,
                "raw" => QueryText::Raw,
                other => {
                    return Err(ConfigError::Invalid {
                        setting: "db_query_text (--db-query-text)",
                        value: other.to_string(),
                        expected: "one of off, sanitized, raw",
                    });
                }
            },
            instrumented_spans: match flags
                .instrumented_spans
                .or(file.instrumented_spans)
                .as_deref()
                .unwrap_or("report")
            {
                "report" => InstrumentedSpans::Report,
                "skip" => InstrumentedSpans::Skip,
                other => {
                    return Err(ConfigError::Invalid {
                        setting: "instrumented_spans (--instrumented-spans)",
                        value: other.to_string(),
                        expected: "one of report, skip",
                    });
                }
            },
            log_level: flags
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_string()),
            kubernetes,
            proc_root: flags
                .proc_root
                .clone()
                .or(file.proc_root.clone())
                .unwrap_or_else(|| PathBuf::from("/proc")),
            cgroup_root: flags
                .cgroup_root
                .clone()
                .or(file.cgroup_root.clone())
                .map(cgroup2_root)
                .or_else(|| {
                    std::fs::read_to_string("/proc/self/mountinfo")
                        .ok()
                        .and_then(|m| crate::metadata::cgroup::cgroup2_mount(&m))
                }),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, value: String, expected| {
            Err(ConfigError::Invalid {
                setting,
                value,
                expected,
            })
        };
        let https_peers = self
            .peers
            .ranges
            .iter()
            .any(|r| r.url.starts_with("https://"))
            || (self.peers_from_kubernetes && self.security.tls.is_some());
        if https_peers && self.peer_ca.is_none() {
            return invalid(
                "peer_ca (--peer-ca)",
                "none".to_string(),
                "https peers (an https --peer URL, or --peers-from-kubernetes with --tls-cert) need the CA their certificates chain to: set --peer-ca FILE",
            );
        }
        if self.capture_bytes as usize > MAX_CAPTURE {
            return invalid(
                "capture_bytes (--capture-bytes)",
                self.capture_bytes.to_string(),
                "must be between 0 and 4096",
            );
        }
        if self.ring_buffer_bytes < 4096 || !self.ring_buffer_bytes.is_power_of_two() {
            return invalid(
                "ring_buffer_bytes (--ring-buffer-bytes)",
                self.ring_buffer_bytes.to_string(),
                "must be a power of two of at least 4096",
            );
        }
        if !(16..=4_194_304).contains(&self.max_connections) {
            return invalid(
                "max_connections (--max-connections)",
                self.max_connections.to_string(),
                "must be between 16 and 4194304",
            );
        }
        if !(1024..=16_777_216).contains(&self.queue_events) {
            return invalid(
                "queue_events (--queue-events)",
                self.queue_events.to_string(),
                "must be between 1024 and 16777216",
            );
        }
        if !(1..=10_000).contains(&self.poll_interval_ms) {
            return invalid(
                "poll_interval_ms (--poll-interval-ms)",
                self.poll_interval_ms.to_string(),
                "must be between 1 and 10000",
            );
        }
        if self.max_series < 10 {
            return invalid(
                "max_series (--max-series)",
                self.max_series.to_string(),
                "must be at least 10",
            );
        }
        if self.series_ttl_secs < 1 {
            return invalid(
                "series_ttl_secs (--series-ttl-secs)",
                self.series_ttl_secs.to_string(),
                "must be at least 1",
            );
        }
        let b = &self.duration_buckets;
        if b.is_empty()
            || b.len() > 64
            || b.iter().any(|x| !x.is_finite() || *x <= 0.0)
            || b.windows(2).any(|w| w[0] >= w[1])
        {
            return invalid(
                "duration_buckets (--duration-buckets)",
                format!("{b:?}"),
                "must be 1 to 64 increasing positive numbers of seconds",
            );
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return invalid(
                "sampling_ratio (--sampling-ratio)",
                self.sampling_ratio.to_string(),
                "must be between 0.0 and 1.0",
            );
        }
        if let Some(url) = &self.zipkin_endpoint
            && !url.starts_with("http://")
        {
            return invalid(
                "zipkin_endpoint (--zipkin-endpoint)",
                url.clone(),
                "must be an http:// URL such as http://zipkin:9411/api/v2/spans",
            );
        }
        if !(1..=100_000).contains(&self.zipkin_batch_spans)
            || !(1..=10_000_000).contains(&self.zipkin_queue_spans)
            || self.zipkin_batch_spans > self.zipkin_queue_spans
        {
            return invalid(
                "zipkin_batch_spans / zipkin_queue_spans",
                format!("{} / {}", self.zipkin_batch_spans, self.zipkin_queue_spans),
                "the batch must be 1..=100000 spans and the queue 1..=10000000 spans, batch <= queue",
            );
        }
        if !(10..=600_000).contains(&self.zipkin_timeout_ms)
            || !(1..=600_000).contains(&self.zipkin_flush_ms)
        {
            return invalid(
                "zipkin_timeout_ms / zipkin_flush_ms",
                format!("{} / {}", self.zipkin_timeout_ms, self.zipkin_flush_ms),
                "must be 10..=600000 ms and 1..=600000 ms",
            );
        }
        if let Some(otlp) = &self.otlp {
            otlp.validate()?;
        }
        if !(100..=10_000_000).contains(&self.trace_store_spans) {
            return invalid(
                "trace_store_spans (--trace-store-spans)",
                self.trace_store_spans.to_string(),
                "must be between 100 and 10000000",
            );
        }
        if self.trace_store_rate > 1_000_000 {
            return invalid(
                "trace_store_rate (--trace-store-rate)",
                self.trace_store_rate.to_string(),
                "must be at most 1000000 traces per second (0 = no limit)",
            );
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return invalid(
                "log_level (--log-level)",
                self.log_level.clone(),
                "must be one of error, warn, info, debug, trace",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::load(Flags::default()).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.capture_bytes, DEFAULT_CAPTURE);
        assert_eq!(config.trace_store_rate, 200);
    }

    #[test]
    fn netns_scope_from_flags_or_file() {
        assert!(Config::load(Flags::default()).unwrap().netns.is_empty());
        let own = netns_file(std::path::Path::new("/proc/self/ns/net")).unwrap();
        // The same namespace twice (two paths to it) is one namespace.
        let config = Config::load(Flags {
            netns: vec![
                "/proc/self/ns/net".into(),
                "/proc/thread-self/ns/net".into(),
            ],
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(config.netns, vec![own.clone()]);

        let dir = std::env::temp_dir().join(format!("meshtap-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("netns.toml");
        std::fs::write(&path, "netns = [\"/proc/self/ns/net\"]\n").unwrap();
        let config = Config::load(Flags {
            config: Some(path.clone()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(config.netns, vec![own]);
        // Flags replace the file's list.
        let err = Config::load(Flags {
            config: Some(path),
            netns: vec!["/proc/self/ns/mnt".into()],
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "invalid netns (--netns) = /proc/self/ns/mnt: it is a namespace file, but not of a \
             network namespace; give a network namespace file such as /run/netns/<name> \
             (ip netns add) or /proc/<pid>/ns/net"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flag_beats_file_and_unknown_keys_fail() {
        let dir = std::env::temp_dir().join(format!("meshtap-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ok.toml");
        std::fs::write(&path, "capture_bytes = 256\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let config = Config::load(Flags {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(config.capture_bytes, 256);
        assert_eq!(config.listen.port(), 2);

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "capture_byte = 256\n").unwrap();
        let err = Config::load(Flags {
            config: Some(bad),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("capture_byte"), "{err}");

        let wrong_type = dir.join("type.toml");
        std::fs::write(
            &wrong_type,
            "listen = \"127.0.0.1:1\"\ncapture_bytes = \"lots\"\n",
        )
        .unwrap();
        let err = Config::load(Flags {
            config: Some(wrong_type),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2 `capture_bytes = \"lots\"`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn instrumented_spans() {
        let config = Config::load(Flags::default()).unwrap();
        assert_eq!(config.instrumented_spans, InstrumentedSpans::Report);
        let config = Config::load(Flags {
            instrumented_spans: Some("skip".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(config.instrumented_spans, InstrumentedSpans::Skip);
        let err = Config::load(Flags {
            instrumented_spans: Some("drop".into()),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--instrumented-spans") && err.contains("drop"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn service_mappings_and_buckets() {
        let config = Config::load(Flags {
            service_name: vec!["python3=backend".into()],
            service_port: vec!["8080=frontend".into()],
            duration_buckets: Some(vec![0.05, 0.1, 0.2]),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(config.service_names["python3"], "backend");
        assert_eq!(config.service_ports[&8080], "frontend");
        let err = Config::load(Flags {
            service_port: vec!["http=frontend".into()],
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--service-port"), "{err}");
        let err = Config::load(Flags {
            duration_buckets: Some(vec![0.2, 0.1]),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--duration-buckets"), "{err}");
    }

    #[test]
    fn cgroup_root_of_a_hybrid_host_is_its_unified_hierarchy() {
        let dir = std::env::temp_dir().join(format!("meshtap-cgroot-{}", std::process::id()));
        let hybrid = dir.join("hybrid");
        std::fs::create_dir_all(hybrid.join("unified")).unwrap();
        std::fs::write(hybrid.join("unified/cgroup.controllers"), "").unwrap();
        assert_eq!(cgroup2_root(hybrid.clone()), hybrid.join("unified"));
        let v2 = dir.join("v2");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cgroup.controllers"), "cpu memory").unwrap();
        assert_eq!(cgroup2_root(v2.clone()), v2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kubernetes_needs_a_node_name_and_a_valid_mode() {
        let err = Config::load(Flags {
            kubernetes: Some("on".into()),
            node_name: None,
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("NODE_NAME"), "{err}");
        let err = Config::load(Flags {
            kubernetes: Some("maybe".into()),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--kubernetes"), "{err}");
        let config = Config::load(Flags {
            kube_api_url: Some("http://127.0.0.1:1".into()),
            node_name: Some("node-a".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(
            config.kubernetes,
            Kubernetes::On {
                api_url: Some("http://127.0.0.1:1".into()),
                node_name: "node-a".into(),
                retry_max_secs: 30,
                cache_entries: 100_000,
            }
        );
        let config = Config::load(Flags {
            kubernetes: Some("off".into()),
            kube_api_url: Some("http://127.0.0.1:1".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(config.kubernetes, Kubernetes::Off);
    }

    #[test]
    fn otlp_is_off_by_default_and_built_from_flags_over_the_file() {
        assert_eq!(Config::load(Flags::default()).unwrap().otlp, None);
        let dir = std::env::temp_dir().join(format!("meshtap-otlp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("otlp.toml");
        std::fs::write(
            &path,
            "otlp_endpoint = \"http://otel:4318\"\notlp_batch_spans = 64\notlp_gzip = false\n",
        )
        .unwrap();
        let config = Config::load(Flags {
            config: Some(path),
            otlp_batch_spans: Some(32),
            otlp_flush_ms: Some(250),
            otlp_timeout_ms: Some(3000),
            otlp_queue_spans: Some(640),
            zipkin_endpoint: Some("http://zipkin:9411/api/v2/spans".into()),
            ..Flags::default()
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let otlp = config.otlp.expect("on");
        assert_eq!(otlp.endpoint, "http://otel:4318");
        assert_eq!(otlp.delivery.batch_spans, 32, "the flag beats the file");
        assert!(!otlp.delivery.gzip);
        assert_eq!(otlp.delivery.flush_interval, Duration::from_millis(250));
        assert_eq!(otlp.delivery.request_timeout, Duration::from_secs(3));
        assert_eq!(otlp.delivery.queue_spans, 640);
        assert!(config.zipkin_endpoint.is_some(), "both exporters at once");

        let err = Config::load(Flags {
            otlp_endpoint: Some("https://otel:4318".into()),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--otlp-endpoint"), "{err}");
        assert!(err.contains("https is not supported"), "{err}");
        let err = Config::load(Flags {
            otlp_endpoint: Some("http://otel:4318".into()),
            otlp_batch_spans: Some(0),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--otlp-batch-spans"), "{err}");
    }

    #[test]
    fn endpoint_security_from_flags_and_file() {
        assert_eq!(
            Config::load(Flags::default()).unwrap().security,
            SecurityConfig::default()
        );
        let dir = std::env::temp_dir().join(format!("meshtap-security-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("security.toml");
        std::fs::write(
            &path,
            "tls_cert = \"/etc/meshtap/tls/tls.crt\"\ntls_key = \"/etc/meshtap/tls/tls.key\"\ntoken_file = \"/etc/meshtap/token/token\"\nmetrics_require_token = true\n",
        )
        .unwrap();
        let config = Config::load(Flags {
            config: Some(path.clone()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(
            config.security,
            SecurityConfig {
                tls: Some(TlsFiles {
                    cert: "/etc/meshtap/tls/tls.crt".into(),
                    key: "/etc/meshtap/tls/tls.key".into(),
                }),
                token_file: Some("/etc/meshtap/token/token".into()),
                metrics_require_token: true,
            }
        );
        let config = Config::load(Flags {
            config: Some(path),
            token_file: Some("/run/token".into()),
            metrics_require_token: Some(false),
            ..Flags::default()
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(config.security.token_file, Some("/run/token".into()));
        assert!(
            !config.security.metrics_require_token,
            "the flag beats the file"
        );

        let err = Config::load(Flags {
            tls_cert: Some("/c.pem".into()),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--tls-key") && err.contains("together"),
            "{err}"
        );
        let err = Config::load(Flags {
            metrics_require_token: Some(true),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--token-file"), "{err}");
        // `--metrics-require-token` alone means true.
        let flags =
            Flags::try_parse_from(["meshtap", "--metrics-require-token", "--token-file", "/t"])
                .unwrap();
        assert_eq!(flags.metrics_require_token, Some(true));
        let flags = Flags::try_parse_from(["meshtap", "--metrics-require-token", "false"]).unwrap();
        assert_eq!(flags.metrics_require_token, Some(false));
    }

    #[test]
    fn out_of_range_values_name_the_setting() {
        let err = Config::load(Flags {
            capture_bytes: Some(999_999),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--capture-bytes"), "{err}");
        let err = Config::load(Flags {
            ring_buffer_bytes: Some(5000),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--ring-buffer-bytes"), "{err}");
        let err = Config::load(Flags {
            trace_store_rate: Some(2_000_000),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--trace-store-rate"), "{err}");
    }
}
