//! Who may read the node endpoint: TLS (rustls, ring provider) with certificate files that are
//! reloaded when they change, and a bearer token, read from a file and reloaded too, that every
//! route under `/api/` requires (and `/metrics` when asked).
//!
//! - [`TlsListener`] accepts TCP connections and completes each TLS handshake on its own task
//!   (at most [`MAX_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]), so a slow or
//!   plain-HTTP client never holds up the others; a failed handshake is counted and closed,
//!   nothing is served on it.
//! - [`CertResolver`] hands every handshake the certificate loaded last.
//! - [`Reloader`] compares the files' contents every [`RELOAD_INTERVAL`] and swaps in what
//!   changed; a file that does not load keeps the previous certificate or token (logged and
//!   counted once per content). A Kubernetes Secret volume swaps its files atomically.
//! - [`protect`] is an axum layer over the whole router: routes added later under `/api/` are
//!   covered without an edit. The page and its assets carry no data and stay public, like
//!   `/healthz` and `/readyz`.
//! - [`Token`] is the current token, for whatever else needs it (a client calling other agents).

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use subtle::ConstantTimeEq;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// How often the certificate, key and token files are compared with what was loaded.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// A client has this long to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress (or completed and not yet taken by the server) at once; further
/// connections wait in the kernel's accept queue.
pub const MAX_HANDSHAKES: usize = 256;
/// The longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// The largest certificate or key file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Names of this module's metrics (without the `_total` prometheus-client appends).
pub mod name {
    pub const UNAUTHORIZED: &str = "meshtap_endpoint_unauthorized";
    pub const TLS_HANDSHAKE_FAILURES: &str = "meshtap_endpoint_tls_handshake_failures";
    pub const RELOADS: &str = "meshtap_endpoint_reloads";
}

/// The endpoint's security settings (validated in `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityConfig {
    /// None: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// None: no token required anywhere.
    pub token_file: Option<PathBuf>,
    /// `/metrics` requires the token too.
    pub metrics_require_token: bool,
}

/// PEM files: the certificate chain (leaf first) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read the {file} {path}: {source} (check {})", .file.flag())]
    Read {
        file: EndpointFile,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {file} {path} is larger than 1 MiB (check {})", .file.flag())]
    TooLarge { file: EndpointFile, path: PathBuf },
    #[error(
        "the TLS certificate {path} holds no PEM certificate: {source} (give --tls-cert a PEM file, leaf certificate first)"
    )]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "the TLS key {path} holds no PEM private key: {source} (give --tls-key the certificate's key, PKCS#8, PKCS#1 or SEC1, unencrypted)"
    )]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "the TLS key {key} does not go with the certificate {cert}: {source} (give --tls-key the private key of --tls-cert's first certificate)"
    )]
    KeyRejected {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the token file {path} {problem} (write the token on one line)")]
    Token {
        path: PathBuf,
        problem: TokenProblem,
    },
}

/// The files the endpoint reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointFile {
    Certificate,
    Key,
    Token,
}

impl EndpointFile {
    /// The option that names it.
    pub fn flag(self) -> &'static str {
        match self {
            EndpointFile::Certificate => "--tls-cert",
            EndpointFile::Key => "--tls-key",
            EndpointFile::Token => "--token-file",
        }
    }
}

impl fmt::Display for EndpointFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointFile::Certificate => "TLS certificate",
            EndpointFile::Key => "TLS key",
            EndpointFile::Token => "token file",
        })
    }
}

/// What is wrong with a token file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    Empty,
    TooLong,
    /// Bytes outside visible ASCII inside the token (it goes in an HTTP header).
    NotPrintable,
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenProblem::Empty => "is empty",
            TokenProblem::TooLong => "holds more than 4096 bytes",
            TokenProblem::NotPrintable => {
                "holds characters other than visible ASCII inside the token"
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnauthorizedLabels {
    /// The route's pattern as registered (`/api/v2/trace/{traceId}`), or `unmatched`: bounded
    /// by the routes the endpoint has.
    pub route: String,
    /// `missing` (no bearer token) or `invalid` (another token).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `certificate` (the certificate and key files together) or `token`.
    pub file: &'static str,
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// The endpoint's counters. Create one, [`register`](Self::register) it.
#[derive(Clone, Default)]
pub struct SecurityMetrics {
    pub unauthorized: Family<UnauthorizedLabels, Counter>,
    pub tls_handshake_failures: Counter,
    pub reloads: Family<ReloadLabels, Counter>,
}

impl SecurityMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            name::UNAUTHORIZED,
            "Endpoint requests refused with 401 because the bearer token was missing or wrong",
            self.unauthorized.clone(),
        );
        registry.register(
            name::TLS_HANDSHAKE_FAILURES,
            "Connections to the endpoint closed because their TLS handshake failed or timed out (plain HTTP included)",
            self.tls_handshake_failures.clone(),
        );
        registry.register(
            name::RELOADS,
            "Changed certificate/key or token files loaded (ok) or not loaded, the previous ones kept (failed)",
            self.reloads.clone(),
        );
    }

    fn reloaded(&self, file: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ReloadLabels { file, result })
            .inc();
    }
}

// ---------------------------------------------------------------------------------------------
// Files

fn read_limited(file: EndpointFile, path: &Path) -> Result<Vec<u8>, SecurityError> {
    let read = |source| SecurityError::Read {
        file,
        path: path.to_path_buf(),
        source,
    };
    if std::fs::metadata(path).map_err(read)?.len() > MAX_PEM_BYTES {
        return Err(SecurityError::TooLarge {
            file,
            path: path.to_path_buf(),
        });
    }
    std::fs::read(path).map_err(read)
}

/// The ring provider, explicitly: kube's rustls may enable another one in the same build.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key from PEM bytes; the key must match the leaf.
pub fn certified_key(
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, SecurityError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .and_then(|chain| {
            if chain.is_empty() {
                Err(rustls::pki_types::pem::Error::NoItemsFound)
            } else {
                Ok(chain)
            }
        })
        .map_err(|source| SecurityError::Certificate {
            path: files.cert.clone(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| SecurityError::Key {
        path: files.key.clone(),
        source,
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|source| SecurityError::KeyRejected {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

/// The token in a file's bytes: surrounding whitespace (a final newline) is not part of it.
pub fn parse_token(bytes: &[u8]) -> Result<Arc<str>, TokenProblem> {
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err(TokenProblem::Empty);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenProblem::TooLong);
    }
    if !token.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(TokenProblem::NotPrintable);
    }
    // Visible ASCII is UTF-8.
    Ok(Arc::from(String::from_utf8_lossy(token).as_ref()))
}

fn load_token(path: &Path, bytes: &[u8]) -> Result<Arc<str>, SecurityError> {
    parse_token(bytes).map_err(|problem| SecurityError::Token {
        path: path.to_path_buf(),
        problem,
    })
}

// ---------------------------------------------------------------------------------------------
// Token

/// The endpoint's current bearer token (None: none configured), shared with whatever needs it.
/// Cheap to clone; follows the token file's reloads.
#[derive(Clone, Default)]
pub struct Token {
    current: Arc<RwLock<Option<Arc<str>>>>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    pub fn new(token: Option<Arc<str>>) -> Self {
        Token {
            current: Arc::new(RwLock::new(token)),
        }
    }

    /// The token now: what a client sends as `Authorization: Bearer <token>`.
    pub fn current(&self) -> Option<Arc<str>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, token: Arc<str>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
    }

    /// Whether `presented` is the token, in time that depends on neither's content nor length
    /// (their SHA-256 digests are compared in constant time). False when no token is set.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let Some(expected) = self.current() else {
            return false;
        };
        let a = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
        let b = ring::digest::digest(&ring::digest::SHA256, presented);
        bool::from(a.as_ref().ct_eq(b.as_ref()))
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token other than the current one.
    Invalid,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Invalid => "invalid",
        }
    }
}

/// Checks a request's `Authorization` header (RFC 6750 section 2.1: the scheme is
/// case-insensitive).
pub fn check_bearer(token: &Token, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Refusal::Missing);
    };
    let value = value.as_bytes();
    let Some((scheme, rest)) = value.split_at_checked(7) else {
        return Err(Refusal::Missing);
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return Err(Refusal::Missing);
    }
    if token.accepts(rest.trim_ascii()) {
        Ok(())
    } else {
        Err(Refusal::Invalid)
    }
}

/// What the token layer needs.
#[derive(Clone)]
pub struct Guard {
    pub token: Token,
    pub metrics_require_token: bool,
    pub metrics: SecurityMetrics,
}

impl Guard {
    /// Every route under `/api/`, and `/metrics` when asked. Decided on the request's own path,
    /// the one the router matches routes on.
    pub fn requires_token(&self, path: &str) -> bool {
        path == "/api"
            || path.starts_with("/api/")
            || (self.metrics_require_token && path == "/metrics")
    }
}

/// The router with the token required where [`Guard::requires_token`] says: call it on the
/// composed router, after every route is added (axum applies a layer to the routes it has).
pub fn protect(router: Router, guard: Guard) -> Router {
    router.layer(middleware::from_fn_with_state(guard, require_token))
}

async fn require_token(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if !guard.requires_token(request.uri().path()) {
        return next.run(request).await;
    }
    let refusal = match check_bearer(&guard.token, request.headers()) {
        Ok(()) => return next.run(request).await,
        Err(refusal) => refusal,
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str());
    guard
        .metrics
        .unauthorized
        .get_or_create(&UnauthorizedLabels {
            route: route.to_string(),
            reason: refusal.as_str(),
        })
        .inc();
    let challenge = match refusal {
        Refusal::Missing => "Bearer realm=\"meshtap\"",
        Refusal::Invalid => "Bearer realm=\"meshtap\", error=\"invalid_token\"",
    };
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        )],
        "a bearer token is required: send Authorization: Bearer <token>\n",
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// Gives every handshake the certificate loaded last.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Self {
        CertResolver {
            current: RwLock::new(Arc::new(key)),
        }
    }

    fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A TLS acceptor serving `resolver`'s certificate, HTTP/1.1 only (as the endpoint is).
pub fn acceptor(resolver: Arc<CertResolver>) -> Result<TlsAcceptor, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

// ---------------------------------------------------------------------------------------------
// Reloading

/// A watched file set: the bytes last seen (loaded or not), so that each content is tried once.
struct Watched {
    seen: Option<Vec<Vec<u8>>>,
}

impl Watched {
    /// The files' bytes when they differ from the last look (or after an unreadable one); None
    /// when unchanged.
    fn changed(&mut self, now: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
        if self.seen.as_ref() == Some(&now) {
            return None;
        }
        self.seen = Some(now.clone());
        Some(now)
    }
}

/// Loads the endpoint's files at start and swaps in their new contents when they change.
pub struct Reloader {
    tls: Option<(TlsFiles, Arc<CertResolver>, Watched)>,
    token: Option<(PathBuf, Token, Watched)>,
    metrics: SecurityMetrics,
}

impl Reloader {
    /// Reads every configured file: an error here is the agent's start-up error.
    pub fn load(config: &SecurityConfig, metrics: SecurityMetrics) -> Result<Self, SecurityError> {
        let tls = match &config.tls {
            Some(files) => {
                let contents = vec![
                    read_limited(EndpointFile::Certificate, &files.cert)?,
                    read_limited(EndpointFile::Key, &files.key)?,
                ];
                let key = certified_key(files, &contents[0], &contents[1])?;
                Some((
                    files.clone(),
                    Arc::new(CertResolver::new(key)),
                    Watched {
                        seen: Some(contents),
                    },
                ))
            }
            None => None,
        };
        let token = match &config.token_file {
            Some(path) => {
                let bytes = read_limited(EndpointFile::Token, path)?;
                let token = Token::new(Some(load_token(path, &bytes)?));
                Some((
                    path.clone(),
                    token,
                    Watched {
                        seen: Some(vec![bytes]),
                    },
                ))
            }
            None => None,
        };
        Ok(Reloader {
            tls,
            token,
            metrics,
        })
    }

    /// The certificate resolver, when TLS is on.
    pub fn resolver(&self) -> Option<Arc<CertResolver>> {
        self.tls.as_ref().map(|(_, r, _)| r.clone())
    }

    /// The token handle (None inside when no token file is configured).
    pub fn token(&self) -> Token {
        self.token
            .as_ref()
            .map_or_else(Token::default, |(_, t, _)| t.clone())
    }

    /// Looks at the files once; swaps in what changed and loads.
    pub fn check(&mut self) {
        if let Some((files, resolver, watched)) = &mut self.tls {
            let read = read_limited(EndpointFile::Certificate, &files.cert)
                .and_then(|c| Ok(vec![c, read_limited(EndpointFile::Key, &files.key)?]));
            let outcome = match read {
                Ok(contents) => watched
                    .changed(contents)
                    .map(|c| certified_key(files, &c[0], &c[1])),
                Err(e) => Self::unreadable(watched, e),
            };
            match outcome {
                None => {}
                Some(Ok(key)) => {
                    resolver.set(key);
                    self.metrics.reloaded("certificate", true);
                    log::info!(
                        "endpoint: TLS certificate {} reloaded",
                        files.cert.display()
                    );
                }
                Some(Err(e)) => {
                    self.metrics.reloaded("certificate", false);
                    log::warn!("endpoint: {e}; the previous certificate stays in use");
                }
            }
        }
        if let Some((path, token, watched)) = &mut self.token {
            let outcome = match read_limited(EndpointFile::Token, path) {
                Ok(bytes) => watched
                    .changed(vec![bytes])
                    .map(|b| load_token(path, &b[0])),
                Err(e) => Self::unreadable(watched, e),
            };
            match outcome {
                None => {}
                Some(Ok(new)) => {
                    token.set(new);
                    self.metrics.reloaded("token", true);
                    log::info!("endpoint: token file {} reloaded", path.display());
                }
                Some(Err(e)) => {
                    self.metrics.reloaded("token", false);
                    log::warn!("endpoint: {e}; the previous token stays in use");
                }
            }
        }
    }

    /// A file that cannot be read: reported once until it is readable again.
    fn unreadable<T>(watched: &mut Watched, e: SecurityError) -> Option<Result<T, SecurityError>> {
        if watched.seen.take().is_some() {
            Some(Err(e))
        } else {
            None
        }
    }

    /// Checks every [`RELOAD_INTERVAL`] until the task is dropped.
    pub fn spawn(mut self) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                // A few small files: read on the runtime thread.
                self.check();
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Listener

/// Accepts TLS connections for `axum::serve`: handshakes run on their own tasks and only
/// completed ones reach the server.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        metrics: SecurityMetrics,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(listener, acceptor, tx, metrics));
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    metrics: SecurityMetrics,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: as axum's own listener does, wait.
                log::debug!("endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        let failures = metrics.tls_handshake_failures.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            match handshake {
                Ok(Ok(tls)) => {
                    // Still holding the permit: connections waiting for the server count too.
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    failures.inc();
                    log::debug!("endpoint: TLS handshake with {peer} failed: {e}");
                }
                Err(_) => {
                    failures.inc();
                    log::debug!("endpoint: TLS handshake with {peer} timed out");
                }
            }
            drop(permit);
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task holds a sender until it ends, and it ends only when this
            // listener is dropped: never reached while the server runs.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests;
