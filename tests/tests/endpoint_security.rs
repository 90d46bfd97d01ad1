//! The endpoint's TLS and bearer token, end to end: the real agent with certificates made by
//! `openssl req -x509` and a token file, laid out like a Kubernetes Secret volume (files behind a
//! `..data` symlink that is swapped atomically on rotation), driven by `curl` and `openssl
//! s_client`:
//! - `curl --cacert` reads /metrics and the API with the token, while a silent client holds a
//!   connection open; plain HTTP to the port gets no HTTP answer and is counted as a failed
//!   handshake, like the silent client's; /healthz needs no token;
//! - a missing or wrong token gets 401 on every /api/ route, with nothing of the data, and
//!   `meshtap_endpoint_unauthorized_total` counts exactly those requests by route and reason;
//! - a new certificate swapped in is served to new connections without a restart (its subject
//!   and serial seen by `openssl s_client`, the old CA refused); a certificate that does not load
//!   keeps the previous one, counted; a rotated token: the old one refused, the new one accepted;
//! - `--metrics-require-token` (here from the config file) puts /metrics behind the token too;
//!   a real Prometheus scrapes it over TLS with the README's `credentials_file`, `ca_file` and
//!   `server_name`, and a job without the token gets nothing;
//! - files that do not load at start stop the agent with one line naming the option;
//! - the web page (headless Chromium through playwright-core, over HTTPS) asks for the token,
//!   again after a wrong one, and with the right one shows the map of real traffic; each of its
//!   refused API requests is counted.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use meshtap_tests::process::{port_of, run_command, scripts_dir};
use meshtap_tests::{Agent, Metrics, Prometheus, SETTLE, Script, TempDir};
use serde_json::Value;

const CURL_TIMEOUT: Duration = Duration::from_secs(20);
const TOKEN: &str = "first-token.0123456789abcdef";
const NEW_TOKEN: &str = "second-token.fedcba9876543210";

/// A directory laid out like a Kubernetes Secret volume: `name -> ..data/name`, `..data ->
/// <version>/`, and an update writes a new version and renames a new `..data` over the old one.
struct SecretVolume {
    dir: TempDir,
    versions: u32,
}

impl SecretVolume {
    fn new(what: &str) -> Self {
        SecretVolume {
            dir: TempDir::new(what),
            versions: 0,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.file(name)
    }

    /// A new version directory (not yet the current one).
    fn next_version(&mut self) -> PathBuf {
        self.versions += 1;
        let version = self.dir.path().join(format!("..v{}", self.versions));
        std::fs::create_dir_all(&version).expect("create a version directory");
        version
    }

    /// Makes `version` current, atomically, and links `names` to it (once).
    fn publish(&self, version: &Path, names: &[&str]) {
        let tmp = self.dir.path().join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(version.file_name().expect("a name"), &tmp)
            .expect("symlink ..data_tmp");
        std::fs::rename(&tmp, self.dir.path().join("..data")).expect("rename ..data");
        for name in names {
            let link = self.dir.path().join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).expect("symlink");
            }
        }
    }
}

/// A self-signed certificate for 127.0.0.1, localhost and meshtap.meshtap.svc with subject `CN=<cn>` (and a random
/// serial, openssl's default), written as `tls.crt` and `tls.key` in `dir`.
fn make_certificate(dir: &Path, cn: &str) {
    let out = run_command(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", &format!("/CN={cn}")])
            .args([
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:meshtap.meshtap.svc",
            ])
            .arg("-keyout")
            .arg(dir.join("tls.key"))
            .arg("-out")
            .arg(dir.join("tls.crt")),
        CURL_TIMEOUT,
    );
    assert!(out.status.success(), "openssl req: {}", out.stderr);
}

/// `subject=...` and `serial=...` of a PEM certificate file.
fn subject_and_serial(pem: &Path) -> String {
    let out = run_command(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-serial", "-in"])
            .arg(pem),
        CURL_TIMEOUT,
    );
    assert!(out.status.success(), "openssl x509: {}", out.stderr);
    out.stdout.trim().to_string()
}

/// The certificate the agent serves to a new connection, through `openssl s_client`.
fn served_certificate(addr: SocketAddr, scratch: &Path) -> String {
    let out = run_command(
        Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string()])
            .args(["-servername", "localhost"]),
        CURL_TIMEOUT,
    );
    let pem = scratch.join("served.pem");
    std::fs::write(&pem, out.stdout.as_bytes()).expect("write the served certificate");
    subject_and_serial(&pem)
}

/// What curl got: its exit code, the HTTP status (0 without one) and the body.
#[derive(Debug)]
struct Got {
    exit: i32,
    status: u16,
    body: String,
}

/// `curl` with `args` then `url`.
fn curl(args: &[&str], url: &str) -> Got {
    let out = run_command(
        Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(["--write-out", "\n%{http_code}"])
            .args(args)
            .arg(url),
        CURL_TIMEOUT,
    );
    let (body, status) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
    Got {
        exit: out.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// The agent's endpoint reached with one CA file and one token.
struct Client {
    base: String,
    ca: Option<String>,
    token: String,
}

impl Client {
    fn get(&self, path: &str, auth: Auth<'_>) -> Got {
        let mut args: Vec<String> = Vec::new();
        if let Some(ca) = &self.ca {
            args.extend(["--cacert".to_string(), ca.clone()]);
        }
        match auth {
            Auth::Token => args.extend(["-H".to_string(), bearer(&self.token)]),
            Auth::Other(token) => args.extend(["-H".to_string(), bearer(token)]),
            Auth::None => {}
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args, &format!("{}{path}", self.base))
    }

    /// `GET path` answered 200; its body.
    fn ok(&self, path: &str) -> String {
        let got = self.get(path, Auth::Token);
        assert_eq!((got.exit, got.status), (0, 200), "GET {path}: {got:?}");
        got.body
    }

    fn metrics(&self) -> Metrics {
        let text = self.ok("/metrics");
        Metrics::parse(&text).unwrap_or_else(|e| panic!("bad /metrics: {e}\n{text}"))
    }

    /// Scrapes until `name{labels}` sums to `expected`, or panics after [`SETTLE`].
    fn wait_for(&self, name: &str, labels: &[(&str, &str)], expected: f64) -> Metrics {
        let deadline = Instant::now() + SETTLE;
        loop {
            let m = self.metrics();
            if m.value(name, labels) == expected {
                return m;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{name}{labels:?} = {}, expected {expected}\n{}",
                    m.value(name, labels),
                    m.describe(name)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Token,
    Other(&'a str),
    None,
}

const UNAUTHORIZED: &str = "meshtap_endpoint_unauthorized_total";
const HANDSHAKE_FAILURES: &str = "meshtap_endpoint_tls_handshake_failures_total";
const RELOADS: &str = "meshtap_endpoint_reloads_total";

#[test]
fn tls_and_token_with_rotation() {
    let scratch = TempDir::new("endpoint-scratch");
    let mut tls = SecretVolume::new("endpoint-tls");
    let v1 = tls.next_version();
    make_certificate(&v1, "meshtap-first");
    tls.publish(&v1, &["tls.crt", "tls.key"]);
    let mut secret = SecretVolume::new("endpoint-token");
    let t1 = secret.next_version();
    std::fs::write(t1.join("token"), format!("{TOKEN}\n")).expect("write the token");
    secret.publish(&t1, &["token"]);

    let cert = tls.path("tls.crt");
    let key = tls.path("tls.key");
    let token_file = secret.path("token");
    let agent = Agent::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--token-file",
        &token_file,
    ]);
    let addr = agent.addr();
    let first_ca = v1.join("tls.crt").to_string_lossy().into_owned();
    let mut client = Client {
        base: format!("https://{addr}"),
        ca: Some(first_ca.clone()),
        token: TOKEN.to_string(),
    };

    // A client that connects and says nothing holds up no one (its handshake waits on its own).
    let idle = TcpStream::connect(addr).expect("connect");

    // With the CA and the token: the metrics and the API.
    let text = client.ok("/metrics");
    assert!(text.contains(HANDSHAKE_FAILURES), "{text}");
    let graph: serde_json::Value =
        serde_json::from_str(&client.ok("/api/v1/graph")).expect("/api/v1/graph is JSON");
    assert!(graph["nodes"].is_array(), "{graph}");
    assert!(client.ok("/api/v2/services").starts_with('['));
    // /metrics (by default), /healthz, /readyz and the page: no token needed.
    for path in ["/metrics", "/healthz", "/readyz", "/", "/ui/app.js"] {
        let got = client.get(path, Auth::None);
        assert_eq!((got.exit, got.status), (0, 200), "GET {path}: {got:?}");
    }
    assert_eq!(
        served_certificate(addr, scratch.path()),
        subject_and_serial(&v1.join("tls.crt"))
    );

    // The silent client hangs up: a failed handshake. Plain HTTP: no HTTP answer, nothing
    // served, counted as failed handshakes.
    drop(idle);
    let mut raw = TcpStream::connect(addr).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(
        &mut raw,
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("send a plain request");
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.contains("HTTP/") && !answer.contains("meshtap_"),
        "plain HTTP got an answer: {answer:?}"
    );
    let plain = curl(&[], &format!("http://{addr}/metrics"));
    assert!(
        plain.exit != 0 && !plain.body.contains("meshtap_"),
        "curl over plain HTTP: {plain:?}"
    );
    client.wait_for(HANDSHAKE_FAILURES, &[], 3.0);

    // Missing and wrong tokens: 401 without the data, each counted by route and reason.
    let refusals: &[(&str, Auth<'_>)] = &[
        ("/api/v1/graph", Auth::None),
        ("/api/v1/graph", Auth::None),
        ("/api/v1/graph", Auth::Other("wrong")),
        ("/api/v1/graph", Auth::Other(&TOKEN[..TOKEN.len() - 1])),
        ("/api/v1/graph", Auth::Other("first-token.0123456789abcdeF")),
        ("/api/v1/connections", Auth::None),
        ("/api/v2/trace/0123456789abcdef", Auth::Other("wrong")),
        ("/api/v1/no-such-route", Auth::None),
    ];
    for (path, auth) in refusals {
        let got = client.get(path, *auth);
        assert_eq!((got.exit, got.status), (0, 401), "GET {path}: {got:?}");
        assert!(
            !got.body.contains("nodes") && !got.body.contains('['),
            "a refusal served data: {got:?}"
        );
    }
    let m = client.wait_for(UNAUTHORIZED, &[], refusals.len() as f64);
    m.assert_values(&[
        (
            UNAUTHORIZED,
            &[("route", "/api/v1/graph"), ("reason", "missing")],
            2.0,
        ),
        (
            UNAUTHORIZED,
            &[("route", "/api/v1/graph"), ("reason", "invalid")],
            3.0,
        ),
        (
            UNAUTHORIZED,
            &[("route", "/api/v1/connections"), ("reason", "missing")],
            1.0,
        ),
        (
            UNAUTHORIZED,
            &[("route", "/api/v2/trace/{traceId}"), ("reason", "invalid")],
            1.0,
        ),
        (
            UNAUTHORIZED,
            &[("route", "unmatched"), ("reason", "missing")],
            1.0,
        ),
        (RELOADS, &[], 0.0),
    ]);

    // A new certificate (another subject, another serial), swapped in like a Secret update: new
    // connections get it, with no restart.
    let v2 = tls.next_version();
    make_certificate(&v2, "meshtap-rotated");
    let both = scratch.path().join("both.pem");
    let mut bundle = std::fs::read(v1.join("tls.crt")).unwrap();
    bundle.extend(std::fs::read(v2.join("tls.crt")).unwrap());
    std::fs::write(&both, bundle).unwrap();
    client.ca = Some(both.to_string_lossy().into_owned());
    tls.publish(&v2, &[]);
    client.wait_for(RELOADS, &[("file", "certificate"), ("result", "ok")], 1.0);
    let rotated = subject_and_serial(&v2.join("tls.crt"));
    assert!(rotated.contains("CN = meshtap-rotated"), "{rotated}");
    assert_ne!(rotated, subject_and_serial(&v1.join("tls.crt")));
    assert_eq!(served_certificate(addr, scratch.path()), rotated);
    let old_ca = curl(
        &["--cacert", &first_ca, "-H", &bearer(TOKEN)],
        &format!("https://{addr}/metrics"),
    );
    assert_eq!(
        old_ca.exit, 60,
        "the old CA must not verify the new certificate: {old_ca:?}"
    );
    client.ca = Some(v2.join("tls.crt").to_string_lossy().into_owned());
    client.ok("/api/v1/graph");

    // A certificate that does not load: counted, the previous one stays.
    let v3 = tls.next_version();
    std::fs::write(
        v3.join("tls.crt"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::copy(v2.join("tls.key"), v3.join("tls.key")).unwrap();
    tls.publish(&v3, &[]);
    client.wait_for(
        RELOADS,
        &[("file", "certificate"), ("result", "failed")],
        1.0,
    );
    assert_eq!(served_certificate(addr, scratch.path()), rotated);

    // The token rotated: the old one refused, the new one accepted.
    let t2 = secret.next_version();
    std::fs::write(t2.join("token"), NEW_TOKEN).unwrap();
    secret.publish(&t2, &[]);
    client.wait_for(RELOADS, &[("file", "token"), ("result", "ok")], 1.0);
    let old = client.get("/api/v1/graph", Auth::Token);
    assert_eq!((old.exit, old.status), (0, 401), "the old token: {old:?}");
    client.token = NEW_TOKEN.to_string();
    client.ok("/api/v1/graph");
    let m = client.wait_for(UNAUTHORIZED, &[], refusals.len() as f64 + 1.0);
    m.assert_values(&[
        (
            UNAUTHORIZED,
            &[("route", "/api/v1/graph"), ("reason", "invalid")],
            4.0,
        ),
        // The s_client connections end after the handshake; the old CA's curl aborted its own.
        (HANDSHAKE_FAILURES, &[], 4.0),
        (RELOADS, &[("result", "failed")], 1.0),
        (RELOADS, &[("result", "ok")], 2.0),
    ]);
    // The page's health tab lists them.
    let health: Value =
        serde_json::from_str(&client.ok("/api/v1/health")).expect("/api/v1/health is JSON");
    let families: Vec<&str> = health["families"]
        .as_array()
        .expect("families")
        .iter()
        .filter(|f| f["samples"].as_array().is_some_and(|s| !s.is_empty()))
        .map(|f| f["name"].as_str().expect("name"))
        .collect();
    for family in [UNAUTHORIZED, HANDSHAKE_FAILURES, RELOADS] {
        assert!(families.contains(&family), "{family} in {families:?}");
    }
}

/// `--metrics-require-token` (from the config file, with the token file): /metrics answers 401
/// without the token, over plain HTTP as well; /healthz stays open.
#[test]
fn metrics_can_require_the_token() {
    let dir = TempDir::new("endpoint-config");
    let token_file = dir.file("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = dir.file("meshtap.toml");
    std::fs::write(
        &config,
        format!("token_file = \"{token_file}\"\nmetrics_require_token = true\n"),
    )
    .unwrap();
    let agent = Agent::start(&["--config", &config]);
    let client = Client {
        base: format!("http://{}", agent.addr()),
        ca: None,
        token: TOKEN.to_string(),
    };
    let refused = client.get("/metrics", Auth::None);
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(!refused.body.contains("meshtap_"), "{refused:?}");
    assert_eq!(client.get("/metrics", Auth::Other("wrong")).status, 401);
    assert_eq!(client.get("/healthz", Auth::None).status, 200);
    assert_eq!(client.get("/readyz", Auth::None).status, 200);
    let m = client.metrics();
    m.assert_values(&[
        (
            UNAUTHORIZED,
            &[("route", "/metrics"), ("reason", "missing")],
            1.0,
        ),
        (
            UNAUTHORIZED,
            &[("route", "/metrics"), ("reason", "invalid")],
            1.0,
        ),
        (UNAUTHORIZED, &[], 2.0),
        (HANDSHAKE_FAILURES, &[], 0.0),
    ]);
}

/// Files that do not load stop the agent at start with one line that names the option.
#[test]
fn bad_files_stop_the_agent_with_one_line() {
    let dir = TempDir::new("endpoint-bad");
    make_certificate(dir.path(), "meshtap-bad");
    let cert = dir.file("tls.crt");
    let key = dir.file("tls.key");
    let garbage = dir.file("garbage");
    std::fs::write(&garbage, "not PEM\n").unwrap();
    let empty = dir.file("empty");
    std::fs::write(&empty, "\n").unwrap();
    let missing = dir.file("missing");
    let cases: &[(&[&str], &str)] = &[
        (&["--tls-cert", &missing, "--tls-key", &key], "--tls-cert"),
        (&["--tls-cert", &garbage, "--tls-key", &key], "--tls-cert"),
        (&["--tls-cert", &cert, "--tls-key", &garbage], "--tls-key"),
        (&["--tls-cert", &cert, "--tls-key", &cert], "--tls-key"),
        (&["--tls-cert", &cert], "--tls-key"),
        (&["--token-file", &missing], "--token-file"),
        (&["--token-file", &empty], "is empty"),
        (&["--metrics-require-token"], "--token-file"),
    ];
    for (args, says) in cases {
        let exited = Agent::run_to_exit(args, Duration::from_secs(30));
        let lines = exited.stderr_lines();
        assert!(
            exited.status.is_some_and(|s| !s.success()),
            "{args:?} must fail: {exited:?}"
        );
        assert_eq!(lines.len(), 1, "{args:?}: one line: {lines:?}");
        assert!(lines[0].contains(says), "{args:?}: {lines:?}");
    }
}

/// Where `cargo xtask setup` installs playwright-core (as for tests/web.rs).
const BROWSER_MODULES: &str = "/usr/local/lib/meshtap/node/node_modules";

/// The page, with TLS and a token on: it asks for the token (the API answers 401), asks again
/// after a wrong one, and with the right one shows the map with the edge of real traffic. Every
/// API request it made without the right token was refused, and counted, and only those.
#[test]
fn the_page_asks_for_the_token_then_shows_the_map() {
    const REQUESTS: u64 = 5;
    let dir = TempDir::new("endpoint-page");
    make_certificate(dir.path(), "meshtap-page");
    let token_file = dir.file("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let (cert, key) = (dir.file("tls.crt"), dir.file("tls.key"));
    let agent = Agent::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--token-file",
        &token_file,
    ]);
    let client = Client {
        base: format!("https://{}", agent.addr()),
        ca: Some(cert.clone()),
        token: TOKEN.to_string(),
    };

    let service = "mt-sec-backend";
    let mut backend = Script::new("http_backend.py", service)
        .env("OTEL_SERVICE_NAME", service)
        .opt("--bind", "127.0.0.1")
        .spawn();
    let port = port_of(&backend.expect_event("listening", Duration::from_secs(10)));
    for i in 0..REQUESTS {
        let got = curl(&[], &format!("http://127.0.0.1:{port}/api/users/{i}"));
        assert_eq!(got.status, 200, "{got:?}");
    }
    backend.send_line("quit");
    backend.finish(Duration::from_secs(30));

    let wrong = "not-the-token";
    let edge = format!("curl,{service},{REQUESTS}");
    let out = run_command(
        Command::new("node")
            .env("NODE_PATH", BROWSER_MODULES)
            .arg(scripts_dir().join("web_token.js"))
            .arg(&client.base)
            .args([wrong, TOKEN, &edge]),
        Duration::from_secs(180),
    );
    assert!(
        out.status.success(),
        "web_token.js failed ({}):\n{}\n{}",
        out.status,
        out.stderr,
        out.stdout
    );
    let seen: Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(seen["asked"], "token:", "{seen}");
    assert!(
        seen["asked_again"]
            .as_str()
            .is_some_and(|t| t.starts_with("wrong")),
        "{seen}"
    );
    assert_eq!(seen["form_hidden"], true, "{seen}");
    assert_eq!(seen["stored"], TOKEN, "kept in sessionStorage: {seen}");
    let edges = seen["edges"].as_array().expect("edges");
    assert!(
        edges
            .iter()
            .any(|e| e["client"] == "curl" && e["server"] == service && e["requests"] == REQUESTS),
        "the map shows curl -> {service} with {REQUESTS} requests: {edges:?}"
    );

    // Which requests carried which token: the page and its assets none; the API's first ones
    // none, then the wrong one, then the right one.
    let requests = seen["requests"].as_array().expect("requests");
    let mut refused = 0;
    let mut accepted = 0;
    for r in requests {
        let url = r["url"].as_str().expect("url");
        let path = url.strip_prefix(&client.base).unwrap_or(url);
        let auth = r["authorization"].as_str();
        if path.starts_with("/api/") {
            if auth == Some(bearer(TOKEN).strip_prefix("Authorization: ").unwrap()) {
                accepted += 1;
            } else {
                assert!(
                    auth.is_none() || auth == Some(&format!("Bearer {wrong}")),
                    "{url}: {auth:?}"
                );
                refused += 1;
            }
        } else {
            assert_eq!(auth, None, "{url} carries no token");
        }
    }
    assert!(refused >= 2 && accepted >= 1, "{requests:?}");
    // The only console errors are the browser's notes of the refused requests.
    for e in seen["console_errors"].as_array().expect("console_errors") {
        assert!(
            e.as_str().is_some_and(|e| e.contains("401")),
            "console error: {e}"
        );
    }
    let m = client.metrics();
    assert_eq!(
        m.value(UNAUTHORIZED, &[]),
        f64::from(refused),
        "every refused request of the page counted, and only those\n{}",
        m.describe(UNAUTHORIZED)
    );
}

/// The README's Prometheus configuration, for real: `authorization.credentials_file`,
/// `tls_config.ca_file` and `server_name` (the certificate's DNS name, the target an address)
/// scrape an agent that requires the token on /metrics; a job without the token is down, each of
/// its scrapes refused and counted.
#[test]
fn prometheus_scrapes_with_the_token_file_and_the_ca() {
    let dir = TempDir::new("endpoint-prometheus");
    make_certificate(dir.path(), "meshtap-prometheus");
    let token_file = dir.file("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (cert, key) = (dir.file("tls.crt"), dir.file("tls.key"));
    let agent = Agent::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--token-file",
        &token_file,
        "--metrics-require-token",
    ]);
    let target = agent.addr();
    let job = |name: &str, auth: &str| {
        format!(
            "  - job_name: {name}\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
             scheme: https\n{auth}    tls_config:\n      ca_file: {cert}\n      \
             server_name: meshtap.meshtap.svc\n    static_configs:\n      - targets: ['{target}']\n"
        )
    };
    let prometheus = Prometheus::start_with_jobs(&format!(
        "{}{}",
        job(
            "meshtap",
            &format!("    authorization:\n      credentials_file: {token_file}\n")
        ),
        job("meshtap-no-token", "")
    ));
    let timeout = Duration::from_secs(30);
    prometheus.wait_for("up{job=\"meshtap\"}", 1.0, timeout);
    prometheus.wait_for(
        "meshtap_programs_attached{job=\"meshtap\"} > bool 0",
        1.0,
        timeout,
    );
    prometheus.wait_for("up{job=\"meshtap-no-token\"}", 0.0, timeout);
    // The tokenless job's scrapes are refused and counted (as seen through the job with the
    // token; how many exactly depends on when each job scraped); both jobs' handshakes succeed.
    prometheus.wait_for(
        "sum(meshtap_endpoint_unauthorized_total{job=\"meshtap\",route=\"/metrics\",reason=\"missing\"}) > bool 0",
        1.0,
        timeout,
    );
    prometheus.wait_for(
        "meshtap_endpoint_tls_handshake_failures_total{job=\"meshtap\"}",
        0.0,
        timeout,
    );
}
