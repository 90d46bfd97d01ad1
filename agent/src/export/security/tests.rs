use super::*;

use axum::{body::Body, http::Request as HttpRequest, routing::get};
use tower::ServiceExt as _;

/// Two self-signed P-256 certificates and their keys (made with `openssl req -x509`; for these
/// tests only).
const CERT_A: &[u8] = include_bytes!("testdata/a.crt");
const KEY_A: &[u8] = include_bytes!("testdata/a.key");
const CERT_B: &[u8] = include_bytes!("testdata/b.crt");
const KEY_B: &[u8] = include_bytes!("testdata/b.key");

struct Dir(PathBuf);

impl Dir {
    fn new(what: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("meshtap-security-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    /// Writes `name` whole, as a rename (what a Secret volume's update looks like to a reader).
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn reloads(metrics: &SecurityMetrics, file: &'static str, result: &'static str) -> u64 {
    metrics
        .reloads
        .get_or_create(&ReloadLabels { file, result })
        .get()
}

fn leaf(pem: &[u8]) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(pem).next().unwrap().unwrap()
}

#[test]
fn token_file_content() {
    assert_eq!(parse_token(b"s3cret\n").unwrap().as_ref(), "s3cret");
    assert_eq!(
        parse_token(b"  a.b-c_d~e+f/g=\r\n").unwrap().as_ref(),
        "a.b-c_d~e+f/g="
    );
    assert_eq!(parse_token(b""), Err(TokenProblem::Empty));
    assert_eq!(parse_token(b" \n\t"), Err(TokenProblem::Empty));
    assert_eq!(parse_token(b"two words"), Err(TokenProblem::NotPrintable));
    assert_eq!(
        parse_token("caf\u{e9}".as_bytes()),
        Err(TokenProblem::NotPrintable)
    );
    assert_eq!(parse_token(b"a\0b"), Err(TokenProblem::NotPrintable));
    assert!(parse_token(&[b'x'; MAX_TOKEN_BYTES]).is_ok());
    assert_eq!(
        parse_token(&[b'x'; MAX_TOKEN_BYTES + 1]),
        Err(TokenProblem::TooLong)
    );
}

#[test]
fn bearer_header_check() {
    let token = Token::new(Some(Arc::from("s3cret")));
    let with = |value: &[u8]| {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value).unwrap(),
        );
        check_bearer(&token, &headers)
    };
    assert_eq!(
        check_bearer(&token, &HeaderMap::new()),
        Err(Refusal::Missing)
    );
    assert_eq!(with(b"Bearer s3cret"), Ok(()));
    assert_eq!(
        with(b"bearer s3cret"),
        Ok(()),
        "the scheme is case-insensitive"
    );
    assert_eq!(with(b"BEARER   s3cret  "), Ok(()));
    assert_eq!(with(b"Bearer s3cre"), Err(Refusal::Invalid));
    assert_eq!(with(b"Bearer s3cret2"), Err(Refusal::Invalid));
    assert_eq!(with(b"Bearer S3CRET"), Err(Refusal::Invalid));
    assert_eq!(with(b"Bearer "), Err(Refusal::Invalid));
    assert_eq!(with(b"Basic czNjcmV0"), Err(Refusal::Missing));
    assert_eq!(with(b"s3cret"), Err(Refusal::Missing));
    assert_eq!(with(b"Bearer\xffs3cret"), Err(Refusal::Missing));
    // No token configured: nothing is accepted (the layer is not installed then).
    assert!(!Token::default().accepts(b""));
    assert!(!Token::default().accepts(b"s3cret"));
}

#[test]
fn which_paths_need_the_token() {
    let guard = |metrics_require_token| Guard {
        token: Token::default(),
        metrics_require_token,
        metrics: SecurityMetrics::default(),
    };
    for metrics in [false, true] {
        let g = guard(metrics);
        for path in [
            "/api",
            "/api/",
            "/api/v1/graph",
            "/api/v2/trace/abc",
            "/api/v1/peer/x",
        ] {
            assert!(g.requires_token(path), "{path}");
        }
        for path in [
            "/",
            "/ui/app.js",
            "/ui/style.css",
            "/healthz",
            "/readyz",
            "/apix",
        ] {
            assert!(!g.requires_token(path), "{path}");
        }
        assert_eq!(g.requires_token("/metrics"), metrics);
    }
}

/// The layer over a router like the endpoint's: every `/api/` route (also one merged in after
/// the others, and paths no route has) answers 401 without the token and counts it by route
/// pattern and reason; public routes answer without one.
#[tokio::test]
async fn layer_refuses_and_counts() {
    let metrics = SecurityMetrics::default();
    let token = Token::new(Some(Arc::from("s3cret")));
    let routes = Router::new()
        .route("/metrics", get(|| async { "m" }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(|| async { "page" }))
        .route("/api/v1/graph", get(|| async { "graph" }))
        .merge(Router::new().route("/api/v2/trace/{id}", get(|| async { "trace" })));
    let app = protect(
        routes,
        Guard {
            token: token.clone(),
            metrics_require_token: false,
            metrics: metrics.clone(),
        },
    );
    let call = |path: &str, auth: Option<&str>| {
        let mut request = HttpRequest::get(path);
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let app = app.clone();
        let request = request.body(Body::empty()).unwrap();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_string());
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            (
                status,
                challenge,
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
    };
    assert_eq!(call("/metrics", None).await.0, 200);
    assert_eq!(call("/healthz", None).await.0, 200);
    assert_eq!(call("/", None).await.2, "page");
    let (status, challenge, body) = call("/api/v1/graph", None).await;
    assert_eq!(status, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"meshtap\""));
    assert!(!body.contains("graph"), "{body}");
    let (status, challenge, _) = call("/api/v2/trace/1", Some("Bearer wrong")).await;
    assert_eq!(status, 401);
    assert!(challenge.unwrap().contains("invalid_token"));
    assert_eq!(call("/api/v2/trace/1", Some("Bearer wrong")).await.0, 401);
    assert_eq!(call("/api/nothing/here", None).await.0, 401);
    assert_eq!(
        call("/api/v1/graph", Some("Bearer s3cret")).await,
        (200, None, "graph".to_string())
    );
    assert_eq!(
        call("/api/v2/trace/7", Some("bearer s3cret")).await.2,
        "trace"
    );
    assert_eq!(
        call("/api/nothing/here", Some("Bearer s3cret")).await.0,
        404
    );

    let count = |route: &str, reason| {
        metrics
            .unauthorized
            .get_or_create(&UnauthorizedLabels {
                route: route.to_string(),
                reason,
            })
            .get()
    };
    assert_eq!(count("/api/v1/graph", "missing"), 1);
    assert_eq!(count("/api/v2/trace/{id}", "invalid"), 2);
    assert_eq!(count("unmatched", "missing"), 1);

    // A rotated token: the old one is refused, the new one accepted.
    token.set(Arc::from("n3w"));
    assert_eq!(call("/api/v1/graph", Some("Bearer s3cret")).await.0, 401);
    assert_eq!(call("/api/v1/graph", Some("Bearer n3w")).await.0, 200);
    assert_eq!(count("/api/v1/graph", "invalid"), 1);
}

#[tokio::test]
async fn metrics_can_require_the_token() {
    let metrics = SecurityMetrics::default();
    let app = protect(
        Router::new().route("/metrics", get(|| async { "m" })),
        Guard {
            token: Token::new(Some(Arc::from("t"))),
            metrics_require_token: true,
            metrics: metrics.clone(),
        },
    );
    let get_metrics = |auth: Option<&'static str>| {
        let mut request = HttpRequest::get("/metrics");
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        app.clone().oneshot(request.body(Body::empty()).unwrap())
    };
    assert_eq!(get_metrics(None).await.unwrap().status(), 401);
    assert_eq!(get_metrics(Some("Bearer t")).await.unwrap().status(), 200);
    let refused = metrics
        .unauthorized
        .get_or_create(&UnauthorizedLabels {
            route: "/metrics".into(),
            reason: "missing",
        })
        .get();
    assert_eq!(refused, 1);
}

#[test]
fn bad_files_at_start_say_what_to_do() {
    let dir = Dir::new("start");
    let cert = dir.write("cert.pem", CERT_A);
    let key = dir.write("key.pem", KEY_A);
    let other_key = dir.write("other.pem", KEY_B);
    let garbage = dir.write("garbage.pem", b"not a certificate\n");
    let empty = dir.write("empty", b"\n");
    let tls = |cert: &Path, key: &Path| SecurityConfig {
        tls: Some(TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
        ..SecurityConfig::default()
    };
    let err = |config: SecurityConfig| {
        let e = Reloader::load(&config, SecurityMetrics::default())
            .err()
            .expect("an error")
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    };
    assert!(Reloader::load(&tls(&cert, &key), SecurityMetrics::default()).is_ok());
    let e = err(tls(&dir.0.join("missing.pem"), &key));
    assert!(
        e.contains("cannot read the TLS certificate") && e.contains("missing.pem"),
        "{e}"
    );
    let e = err(tls(&garbage, &key));
    assert!(
        e.contains("holds no PEM certificate") && e.contains("--tls-cert"),
        "{e}"
    );
    let e = err(tls(&cert, &garbage));
    assert!(
        e.contains("holds no PEM private key") && e.contains("--tls-key"),
        "{e}"
    );
    let e = err(tls(&cert, &other_key));
    assert!(e.contains("does not go with the certificate"), "{e}");
    let e = err(SecurityConfig {
        token_file: Some(empty.clone()),
        ..SecurityConfig::default()
    });
    assert!(e.contains("token file") && e.contains("is empty"), "{e}");
}

/// The reloader swaps in changed files, keeps the previous certificate or token when the new
/// files do not load (counting each failing content once), and counts nothing while nothing
/// changes.
#[test]
fn reloader_follows_the_files() {
    let dir = Dir::new("reload");
    let files = TlsFiles {
        cert: dir.write("cert.pem", CERT_A),
        key: dir.write("key.pem", KEY_A),
    };
    let token_file = dir.write("token", b"first\n");
    let metrics = SecurityMetrics::default();
    let mut reloader = Reloader::load(
        &SecurityConfig {
            tls: Some(files.clone()),
            token_file: Some(token_file.clone()),
            metrics_require_token: false,
        },
        metrics.clone(),
    )
    .unwrap();
    let resolver = reloader.resolver().unwrap();
    let token = reloader.token();
    let served = || resolver.current().cert[0].clone();
    assert_eq!(served(), leaf(CERT_A));
    assert_eq!(token.current().as_deref(), Some("first"));

    reloader.check();
    reloader.check();
    for (file, result) in [
        ("certificate", "ok"),
        ("certificate", "failed"),
        ("token", "ok"),
        ("token", "failed"),
    ] {
        assert_eq!(reloads(&metrics, file, result), 0, "{file} {result}");
    }

    // Rotation: a new certificate and key, a new token.
    dir.write("cert.pem", CERT_B);
    dir.write("key.pem", KEY_B);
    dir.write("token", b"second");
    reloader.check();
    assert_eq!(served(), leaf(CERT_B));
    assert_eq!(token.current().as_deref(), Some("second"));
    assert!(token.accepts(b"second") && !token.accepts(b"first"));
    assert_eq!(reloads(&metrics, "certificate", "ok"), 1);
    assert_eq!(reloads(&metrics, "token", "ok"), 1);

    // Half a rotation (a certificate without its key) fails and keeps B; the key arriving
    // completes it.
    dir.write("cert.pem", CERT_A);
    reloader.check();
    reloader.check();
    assert_eq!(served(), leaf(CERT_B));
    assert_eq!(reloads(&metrics, "certificate", "failed"), 1);
    dir.write("key.pem", KEY_A);
    reloader.check();
    assert_eq!(served(), leaf(CERT_A));
    assert_eq!(reloads(&metrics, "certificate", "ok"), 2);

    // Garbage, an empty token, then deleted files: the previous ones stay, each failure once.
    dir.write(
        "cert.pem",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    dir.write("token", b"\n");
    reloader.check();
    reloader.check();
    assert_eq!(served(), leaf(CERT_A));
    assert_eq!(token.current().as_deref(), Some("second"));
    assert_eq!(reloads(&metrics, "certificate", "failed"), 2);
    assert_eq!(reloads(&metrics, "token", "failed"), 1);
    std::fs::remove_file(&files.cert).unwrap();
    std::fs::remove_file(&token_file).unwrap();
    reloader.check();
    reloader.check();
    assert_eq!(reloads(&metrics, "certificate", "failed"), 3);
    assert_eq!(reloads(&metrics, "token", "failed"), 2);
    assert_eq!(token.current().as_deref(), Some("second"));

    // Back: loaded again.
    dir.write("cert.pem", CERT_B);
    dir.write("key.pem", KEY_B);
    dir.write("token", b"third\n");
    reloader.check();
    assert_eq!(served(), leaf(CERT_B));
    assert_eq!(token.current().as_deref(), Some("third"));
    assert_eq!(reloads(&metrics, "certificate", "ok"), 3);
    assert_eq!(reloads(&metrics, "token", "ok"), 2);
}
