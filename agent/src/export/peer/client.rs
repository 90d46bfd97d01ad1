//! Asking the other agents: one task per peer (see the module above).

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::http::{HeaderValue, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};
use tokio::sync::{Notify, mpsc};

use super::{LookupAnswer, LookupRequest, MAX_KEYS_PER_REQUEST, POLL, Peers, ROUTE};
use crate::{
    exchange::RequestKey,
    fast::Map,
    metrics::Registry,
    trace::remote::{Published, RemoteContext, RemoteLink},
};

/// Lookups queued from the tracer at most, and per peer.
pub const QUEUE: usize = 16_384;
/// Keys a peer task waits on at most (beyond, new ones are dropped, counted).
pub const MAX_PENDING: usize = 65_536;
/// One request's time limit.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Answer bodies are read up to this much.
const MAX_ANSWER: usize = 4 << 20;

/// The current bearer token to send, if any (read again for every request: rotated files).
pub type TokenSource = Arc<dyn Fn() -> Option<Arc<str>> + Send + Sync>;

/// How https peers are verified: their certificates must chain to a CA of `--peer-ca` and
/// carry `server_name` (else the host of their URL), or be one of the certificates of
/// `--peer-ca` itself (a self-signed certificate shared by the agents, pinned as it is).
#[derive(Clone)]
pub struct PeerTls {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error("cannot read --peer-ca {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--peer-ca {0}: no usable PEM certificate in it")]
    NoCertificate(std::path::PathBuf),
    #[error("--peer-server-name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    #[error("TLS client configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl PeerTls {
    /// From the `--peer-ca` file and `--peer-server-name`.
    pub fn load(ca: &std::path::Path, server_name: Option<String>) -> Result<Self, PeerTlsError> {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        let pem = std::fs::read(ca).map_err(|source| PeerTlsError::Read {
            path: ca.to_path_buf(),
            source,
        })?;
        let mut roots = rustls::RootCertStore::empty();
        let mut pinned = Vec::new();
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert.clone());
            pinned.push(cert);
        }
        if roots.is_empty() {
            return Err(PeerTlsError::NoCertificate(ca.to_path_buf()));
        }
        if let Some(name) = &server_name {
            ServerName::try_from(name.clone())
                .map_err(|_| PeerTlsError::ServerName(name.clone()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chained = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedOrChained { pinned, chained }))
            .with_no_client_auth();
        Ok(PeerTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// A peer's certificate is trusted when it is, byte for byte, one of `--peer-ca`'s (the
/// agents share one self-signed certificate: `openssl req -x509` makes it a CA certificate,
/// which WebPKI refuses as a server's own), else when it chains to them as WebPKI checks it
/// (validity, name). Either way the handshake's signature is checked against the certificate's
/// key, so a peer must hold the private key.
#[derive(Debug)]
struct PinnedOrChained {
    pinned: Vec<rustls::pki_types::CertificateDer<'static>>,
    chained: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedOrChained {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        self.chained
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chained.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chained.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chained.supported_verify_schemes()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    peer: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone)]
struct PeerMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<PeerLabel, Histogram, fn() -> Histogram>,
    resolved: Family<PeerLabel, Counter>,
    expired: Family<PeerLabel, Counter>,
    dropped: Family<PeerLabel, Counter>,
}

impl PeerMetrics {
    fn new(registry: &Registry) -> Self {
        let m = PeerMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0])
            }),
            resolved: Family::default(),
            expired: Family::default(),
            dropped: Family::default(),
        };
        registry.register(
            "meshtap_peer_requests",
            "Lookups sent to other agents, by peer and outcome (ok, unauthorized: the peer refused our token, status: another non-2xx answer, bad_answer: not the expected JSON, connect: no connection, tls: the peer's certificate was not trusted or the handshake failed, timeout, error)",
            m.requests.clone(),
        );
        registry.register(
            "meshtap_peer_request_duration_seconds",
            "Time of each lookup request to another agent, by peer",
            m.duration.clone(),
        );
        registry.register(
            "meshtap_peer_contexts_resolved",
            "Client contexts another agent gave for SERVER spans of this node, by peer",
            m.resolved.clone(),
        );
        registry.register(
            "meshtap_peer_lookups_expired",
            "Keys a peer did not know within the link wait, by peer (its SERVER span stays a root)",
            m.expired.clone(),
        );
        registry.register(
            "meshtap_peer_lookups_refused",
            "Keys not asked because the peer's queue or pending set was full, or no peer serves the client (by peer; empty: none)",
            m.dropped.clone(),
        );
        m
    }
}

/// Peer agents asked at once at most (each has a task and a connection); lookups for more are
/// refused, counted.
pub const MAX_PEERS: usize = 1024;

/// The URL of the agent serving a client address, if any: the `--peer` ranges, then the
/// Kubernetes caches (the meshtap pod of the node where the client's pod runs).
pub type Resolve = Arc<dyn Fn(IpAddr) -> Option<Arc<str>> + Send + Sync>;

impl Peers {
    /// The URL of the configured peer serving `ip`.
    pub fn url_for(&self, ip: IpAddr) -> Option<Arc<str>> {
        self.peer_for(ip)
            .map(|i| self.ranges[i].url.as_str().into())
    }
}

/// Starts the task that hands lookups to one task per peer (started when first needed);
/// returns the tracer's end of the link.
pub fn start(
    resolve: Resolve,
    token: Option<TokenSource>,
    tls: Option<PeerTls>,
    published: Arc<Published>,
    wait: Duration,
    registry: &Registry,
) -> RemoteLink {
    let metrics = PeerMetrics::new(registry);
    let (lookups_tx, mut lookups) = mpsc::channel::<RequestKey>(QUEUE);
    let (answers_tx, answers) = mpsc::channel::<(RequestKey, RemoteContext)>(QUEUE);
    let wake = Arc::new(Notify::new());
    let router_resolve = resolve.clone();
    let router_wake = wake.clone();
    tokio::spawn(async move {
        let mut queues: Map<Arc<str>, mpsc::Sender<RequestKey>> = Map::default();
        while let Some(key) = lookups.recv().await {
            let url = router_resolve(key.client.ip());
            let refused = |peer: &str| {
                metrics
                    .dropped
                    .get_or_create(&PeerLabel {
                        peer: peer.to_string(),
                    })
                    .inc();
            };
            let Some(url) = url else {
                refused("");
                continue;
            };
            if !queues.contains_key(&url) {
                if queues.len() >= MAX_PEERS {
                    refused("");
                    continue;
                }
                let (tx, rx) = mpsc::channel::<RequestKey>(QUEUE);
                let task = PeerTask {
                    url: url.to_string(),
                    token: token.clone(),
                    tls: tls.clone(),
                    answers: answers_tx.clone(),
                    wake: router_wake.clone(),
                    metrics: metrics.clone(),
                    wait,
                    pending: Map::default(),
                    conn: None,
                    failing: None,
                };
                tokio::spawn(task.run(rx));
                queues.insert(url.clone(), tx);
            }
            if queues
                .get(&url)
                .is_none_or(|queue| queue.try_send(key).is_err())
            {
                refused(&url);
            }
        }
    });
    RemoteLink {
        covers: Arc::new(move |ip: IpAddr| resolve(ip).is_some()),
        lookups: lookups_tx,
        answers,
        wake,
        published,
    }
}

/// HTTP/1.1 over `stream`, its connection driven by a task of its own.
async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ("connect", e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

struct PeerTask {
    url: String,
    token: Option<TokenSource>,
    tls: Option<PeerTls>,
    answers: mpsc::Sender<(RequestKey, RemoteContext)>,
    wake: Arc<Notify>,
    metrics: PeerMetrics,
    wait: Duration,
    /// Keys asked for, with when to give up.
    pending: Map<RequestKey, Instant>,
    conn: Option<SendRequest<Full<Bytes>>>,
    /// The last failure logged, so that a failing peer is logged once, not at every poll.
    failing: Option<String>,
}

/// Why a lookup failed: the outcome label, and the detail for the log.
type Failure = (&'static str, String);

impl PeerTask {
    async fn run(mut self, mut rx: mpsc::Receiver<RequestKey>) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                key = rx.recv() => {
                    let Some(key) = key else { return };
                    self.add(key);
                    while let Ok(key) = rx.try_recv() {
                        self.add(key);
                    }
                }
                _ = poll.tick() => {
                    self.expire();
                    if !self.pending.is_empty() {
                        self.ask().await;
                    }
                }
            }
        }
    }

    fn label(&self) -> PeerLabel {
        PeerLabel {
            peer: self.url.clone(),
        }
    }

    fn add(&mut self, key: RequestKey) {
        if self.pending.len() >= MAX_PENDING {
            self.metrics.dropped.get_or_create(&self.label()).inc();
            return;
        }
        self.pending.insert(key, Instant::now() + self.wait);
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let before = self.pending.len();
        self.pending.retain(|_, deadline| *deadline > now);
        let expired = before - self.pending.len();
        if expired > 0 {
            self.metrics
                .expired
                .get_or_create(&self.label())
                .inc_by(expired as u64);
        }
    }

    /// One round: every pending key, in requests of at most `MAX_KEYS_PER_REQUEST`.
    async fn ask(&mut self) {
        let keys: Vec<RequestKey> = self.pending.keys().copied().collect();
        for batch in keys.chunks(MAX_KEYS_PER_REQUEST) {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, self.post(batch)).await {
                Ok(Ok(answer)) => {
                    self.take(answer);
                    if self.failing.take().is_some() {
                        log::info!("peer agent {}: answering again", self.url);
                    }
                    "ok"
                }
                Ok(Err((outcome, detail))) => {
                    self.failed(outcome, detail);
                    outcome
                }
                Err(_) => {
                    self.conn = None;
                    self.failed("timeout", format!("no answer within {REQUEST_TIMEOUT:?}"));
                    "timeout"
                }
            };
            self.metrics
                .duration
                .get_or_create(&self.label())
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .requests
                .get_or_create(&RequestLabels {
                    peer: self.url.clone(),
                    outcome,
                })
                .inc();
            if outcome != "ok" {
                // A failing peer is asked again at the next poll, not at once for every batch.
                return;
            }
        }
    }

    /// Logs a failure when it differs from the last one logged for this peer.
    fn failed(&mut self, outcome: &'static str, detail: String) {
        let message = format!("{outcome}: {detail}");
        if self.failing.as_deref() != Some(message.as_str()) {
            log::warn!(
                "peer agent {}: lookup failed ({message}); its clients' spans stay unlinked \
                 until it answers (meshtap_peer_requests_total{{outcome=\"{outcome}\"}})",
                self.url
            );
            self.failing = Some(message);
        }
    }

    fn take(&mut self, answer: LookupAnswer) {
        let mut resolved = 0;
        for wire in answer.contexts {
            // Only keys asked for, with well-formed ids: anything else is the peer's garbage.
            let Some(context) = wire.context() else {
                continue;
            };
            if self.pending.remove(&wire.key).is_none() {
                continue;
            }
            resolved += 1;
            if self.answers.try_send((wire.key, context)).is_err() {
                self.metrics.dropped.get_or_create(&self.label()).inc();
            }
        }
        if resolved > 0 {
            self.metrics
                .resolved
                .get_or_create(&self.label())
                .inc_by(resolved);
            self.wake.notify_one();
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let (https, authority) = match self.url.split_once("://") {
            Some(("http", a)) => (false, a),
            Some(("https", a)) => (true, a),
            _ => return Err(("error", "the URL is neither http:// nor https://".into())),
        };
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| ("connect", e.to_string()))?;
        let _ = stream.set_nodelay(true);
        if !https {
            return handshake(stream).await;
        }
        let tls = self
            .tls
            .as_ref()
            .ok_or(("tls", "https peers need --peer-ca".to_string()))?;
        let host = match &tls.server_name {
            Some(name) => name.clone(),
            None => authority
                .rsplit_once(':')
                .map_or(authority, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        };
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| ("tls", format!("{host} is not a valid server name")))?;
        let stream = tls
            .connector
            .connect(name, stream)
            .await
            .map_err(|e| ("tls", e.to_string()))?;
        handshake(stream).await
    }

    async fn post(&mut self, keys: &[RequestKey]) -> Result<LookupAnswer, Failure> {
        let body = serde_json::to_vec(&LookupRequest {
            keys: keys.to_vec(),
        })
        .map_err(|e| ("error", e.to_string()))?;
        let mut sender = match self.conn.take() {
            Some(s) => s,
            None => self.connect().await?,
        };
        if sender.ready().await.is_err() {
            sender = self.connect().await?;
        }
        let authority = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, a)| a);
        let mut request = Request::post(ROUTE)
            .header(
                header::HOST,
                HeaderValue::from_str(authority).map_err(|e| ("error", e.to_string()))?,
            )
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = self.token.as_ref().and_then(|t| t()) {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ("error", "the token is not a valid header value".to_string()))?;
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ("error", e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ("error", e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| ("bad_answer", e.to_string()))?
            .to_bytes();
        self.conn = Some(sender);
        if status == StatusCode::UNAUTHORIZED {
            return Err((
                "unauthorized",
                "the peer refused our token (is the same --token-file given to every agent?)"
                    .into(),
            ));
        }
        if !status.is_success() {
            return Err(("status", format!("answered {status}")));
        }
        serde_json::from_slice(&body).map_err(|e| ("bad_answer", e.to_string()))
    }
}
