//! HTTP/2 servers and clients nobody here wrote, for the HTTP/2 and gRPC tests and the bench:
//! Debian's `nghttpd` (nghttp2-server) serving a docroot, `nghttpx` (nghttp2-proxy) as an h2c
//! upgrading front of it, `h2load` (nghttp2-client) and `curl`; plus the exact-count checks those
//! tests share ([`Expect`], [`assert_settled`]).

use std::fs::{self, File};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::agent::{Agent, send_signal};
use crate::process::run_command;
use crate::prom::Metrics;
use crate::tempdir::TempDir;
use crate::try_free_port;

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one client run may take.
pub const RUN: Duration = Duration::from_secs(120);

/// The files of the docroot [`Nghttpd`] serves: (path, size in bytes).
pub const FILES: [(&str, usize); 3] = [
    ("/small.txt", 13),
    ("/page.html", 4096),
    ("/big.bin", 70_000),
];
/// A path that is not in the docroot: 404.
pub const MISSING: &str = "/missing.txt";

/// A server process of ours (its output in its temp directory), stopped by SIGTERM then SIGKILL
/// on drop; its output is printed if the test is failing.
pub struct Daemon {
    child: Child,
    what: String,
    pub addr: SocketAddr,
    dir: TempDir,
}

impl Daemon {
    /// Spawns `cmd` (output to `dir/out.log`) and waits until `addr` accepts a TCP connection.
    fn start(mut cmd: Command, what: &str, addr: SocketAddr, dir: TempDir) -> io::Result<Self> {
        let out = File::create(dir.file("out.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawn {what}: {e}")))?;
        let mut daemon = Self {
            child,
            what: what.to_owned(),
            addr,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{what} exited ({status}) at start:\n{}",
                    daemon.output()
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(daemon);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "{what} does not accept connections on {addr} after {START_TIMEOUT:?}:\n{}",
                    daemon.output()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything the process wrote so far.
    pub fn output(&self) -> String {
        fs::read_to_string(self.dir.file("out.log")).unwrap_or_default()
    }

    /// A file of the server's temp directory.
    pub fn file(&self, name: &str) -> String {
        self.dir.file(name)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            send_signal(self.child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if self.child.try_wait().ok().flatten().is_none() {
                send_signal(self.child.id(), libc::SIGKILL);
                let _ = self.child.wait();
            }
        }
        if thread::panicking() {
            eprintln!(
                "--- {} output ---\n{}--- end of {} output ---",
                self.what,
                self.output(),
                self.what
            );
        }
    }
}

fn require(program: &str, package: &str) -> io::Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        || Path::new("/usr/sbin").join(program).is_file();
    if found {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{program} not found: apt-get install {package} (cargo xtask setup)"),
        ))
    }
}

/// `nghttpd --no-tls` on 127.0.0.1 serving a docroot of [`FILES`] (deterministic contents).
pub fn nghttpd() -> Daemon {
    try_nghttpd().unwrap_or_else(|e| panic!("{e}"))
}

/// [`nghttpd`] with more of its options (`-b 64`: pad every frame).
pub fn nghttpd_with(extra: &[&str]) -> Daemon {
    try_nghttpd_with(extra).unwrap_or_else(|e| panic!("{e}"))
}

/// [`nghttpd`], with an error instead of a panic (for `cargo xtask bench`).
pub fn try_nghttpd() -> io::Result<Daemon> {
    try_nghttpd_with(&[])
}

/// `nghttpd` over TLS (its libssl.so.3; ALPN `h2`) with this key and certificate (PEM files),
/// serving the same docroot as [`nghttpd`].
pub fn nghttpd_tls(key: &str, cert: &str) -> Daemon {
    try_nghttpd_serving(&[], Some((key, cert))).unwrap_or_else(|e| panic!("{e}"))
}

fn try_nghttpd_with(extra: &[&str]) -> io::Result<Daemon> {
    try_nghttpd_serving(extra, None)
}

fn try_nghttpd_serving(extra: &[&str], tls: Option<(&str, &str)>) -> io::Result<Daemon> {
    require("nghttpd", "nghttp2-server")?;
    let dir = TempDir::try_new("nghttpd")?;
    let root = dir.path().join("docroot");
    fs::create_dir_all(&root)?;
    for (path, size) in FILES {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        fs::write(root.join(path.trim_start_matches('/')), body)?;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], try_free_port()?));
    let mut cmd = Command::new("nghttpd");
    if tls.is_none() {
        cmd.arg("--no-tls");
    }
    cmd.args(["-a", "127.0.0.1"])
        .args(extra)
        .arg("-d")
        .arg(&root)
        .arg(addr.port().to_string());
    if let Some((key, cert)) = tls {
        cmd.args([key, cert]);
    }
    Daemon::start(cmd, "nghttpd", addr, dir)
}

/// `nghttpx` with a cleartext frontend on 127.0.0.1 (which accepts HTTP/1.1, HTTP/2 by prior
/// knowledge and the `Upgrade: h2c` handshake) proxying to `backend` over HTTP/2; one worker,
/// an access log ([`nghttpx_access_log`]).
pub fn nghttpx(backend: SocketAddr) -> Daemon {
    require("nghttpx", "nghttp2-proxy").unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("nghttpx");
    let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
    let mut cmd = Command::new("nghttpx");
    cmd.arg(format!("--frontend=127.0.0.1,{};no-tls", addr.port()))
        .arg(format!("--backend=127.0.0.1,{};;proto=h2", backend.port()))
        .args(["--workers=1", "--conf=/dev/null", "--no-ocsp"])
        .arg(format!("--accesslog-file={}", dir.file("access.log")))
        .arg(format!("--errorlog-file={}", dir.file("error.log")))
        .arg(format!("--pid-file={}", dir.file("nghttpx.pid")));
    Daemon::start(cmd, "nghttpx", addr, dir).unwrap_or_else(|e| panic!("{e}"))
}

/// nghttpx's access log: one `(request line's protocol, status)` per request it finished, e.g.
/// `("HTTP/1.1", 200)` for the request of an `Upgrade: h2c` handshake.
pub fn nghttpx_access_log(proxy: &Daemon) -> Vec<(String, u16)> {
    let text = fs::read_to_string(proxy.file("access.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            // 127.0.0.1 - - [date] "GET /path HTTP/2" 200 13 "-" "curl/7.88.1"
            let (_, rest) = l.split_once('"')?;
            let (request, rest) = rest.split_once('"')?;
            let proto = request.rsplit(' ').next()?.to_owned();
            let status = rest.split_whitespace().next()?.parse().ok()?;
            Some((proto, status))
        })
        .collect()
}

/// What `h2load` reported in its summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2load {
    pub total: u64,
    pub started: u64,
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    /// Responses by status class: 2xx, 3xx, 4xx, 5xx.
    pub classes: [u64; 4],
}

fn numbers_before(line: &str, words: &[&str]) -> Option<Vec<u64>> {
    // "requests: 600 total, 600 started, ..." -> the number before each word.
    let tokens: Vec<&str> = line.split([' ', ',']).filter(|t| !t.is_empty()).collect();
    words
        .iter()
        .map(|w| {
            let i = tokens.iter().position(|t| t == w)?;
            tokens.get(i.checked_sub(1)?)?.parse().ok()
        })
        .collect()
}

/// Parses h2load's `requests:` and `status codes:` summary lines.
pub fn parse_h2load(stdout: &str) -> Option<H2load> {
    let requests = stdout.lines().find(|l| l.starts_with("requests:"))?;
    let codes = stdout.lines().find(|l| l.starts_with("status codes:"))?;
    let r = numbers_before(
        requests,
        &[
            "total",
            "started",
            "done",
            "succeeded",
            "failed",
            "errored",
            "timeout",
        ],
    )?;
    let c = numbers_before(codes, &["2xx", "3xx", "4xx", "5xx"])?;
    Some(H2load {
        total: r[0],
        started: r[1],
        done: r[2],
        succeeded: r[3],
        failed: r[4],
        errored: r[5],
        timeout: r[6],
        classes: [c[0], c[1], c[2], c[3]],
    })
}

/// The `h2load` command line: `-n requests -c clients -m streams` over the `urls` (each client
/// takes them in turn, round robin).
pub fn h2load_command(requests: u64, clients: u32, streams: u32, urls: &[String]) -> Command {
    let mut cmd = Command::new("h2load");
    cmd.args([
        "-n",
        &requests.to_string(),
        "-c",
        &clients.to_string(),
        "-m",
        &streams.to_string(),
    ])
    .args(urls);
    cmd
}

/// Runs h2load (see [`h2load_command`]) and returns its summary; panics if it failed.
pub fn h2load(requests: u64, clients: u32, streams: u32, urls: &[String]) -> H2load {
    require("h2load", "nghttp2-client").unwrap_or_else(|e| panic!("{e}"));
    let out = run_command(&mut h2load_command(requests, clients, streams, urls), RUN);
    assert!(
        out.status.success(),
        "h2load failed ({}): {}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    eprintln!("h2load summary:\n{}", out.stdout);
    parse_h2load(&out.stdout)
        .unwrap_or_else(|| panic!("no summary in h2load's output:\n{}", out.stdout))
}

/// What curl reported for one URL: `%{http_code} %{http_version} %{num_connects}
/// %{size_download}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurlResult {
    pub status: u16,
    pub version: String,
    pub connects: u64,
    pub size: u64,
}

/// One curl process fetching every URL in turn with `extra` options (`--http2`): one
/// connection, reused for every URL. Not with `--http2-prior-knowledge`: Debian 12's curl
/// 7.88.1 sends nothing for the second URL on a prior-knowledge connection and exits 16 (checked
/// against nginx and nghttpd); give it one URL per process there.
pub fn curl(urls: &[String], extra: &[&str]) -> Vec<CurlResult> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "60",
        "-w",
        "%{http_code} %{http_version} %{num_connects} %{size_download}\\n",
    ])
    .args(extra);
    for url in urls {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = run_command(&mut cmd, RUN);
    assert!(
        out.status.success(),
        "curl failed ({}): {}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let results: Vec<CurlResult> = out
        .stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 4, "curl -w line {l:?}");
            CurlResult {
                status: f[0].parse().expect("http_code"),
                version: f[1].to_owned(),
                connects: f[2].parse().expect("num_connects"),
                size: f[3].parse().expect("size_download"),
            }
        })
        .collect();
    assert_eq!(results.len(), urls.len(), "curl output:\n{}", out.stdout);
    results
}

/// One `nghttp -ns` process (nghttp2-client) fetching every URL over ONE connection, all
/// streams at once: HTTP/2 by prior knowledge, or with `upgrade` the HTTP/1.1 `Upgrade: h2c`
/// handshake first (`-u`). Before its requests, nghttp opens idle streams with PRIORITY frames
/// (its dependency tree). It fetches a URL once however often it is listed: make them distinct
/// (a query string). Returns (status, path) per URL as its statistics table lists them.
pub fn nghttp(urls: &[String], upgrade: bool) -> Vec<(u16, String)> {
    nghttp_with(urls, upgrade, &[])
}

/// [`nghttp`] with `extra` options (`-H "name: value"` for a header on every request).
pub fn nghttp_with(urls: &[String], upgrade: bool, extra: &[&str]) -> Vec<(u16, String)> {
    require("nghttp", "nghttp2-client").unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new("nghttp");
    cmd.arg(if upgrade { "-nsu" } else { "-ns" })
        .args(extra)
        .args(urls);
    let out = run_command(&mut cmd, RUN);
    assert!(
        out.status.success(),
        "nghttp failed ({}): {}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    // id  responseEnd requestStart  process code size request path
    //  13      +278us       +100us    178us  200    3 /ok?1
    let results: Vec<(u16, String)> = out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("id  responseEnd"))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(4)?.parse().ok()?, (*f.get(6)?).to_owned()))
        })
        .collect();
    assert_eq!(results.len(), urls.len(), "nghttp output:\n{}", out.stdout);
    results
}

// ---------------------------------------------------------------------------------------------
// Exact counts

/// One expected value: the sum of the series of `name` carrying all of `labels`.
#[derive(Clone, Debug)]
pub struct Expect {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

pub fn expect(name: impl Into<String>, labels: &[(&str, &str)], value: impl Into<f64>) -> Expect {
    Expect {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        value: value.into(),
    }
}

impl Expect {
    pub fn actual(&self, m: &Metrics) -> f64 {
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        m.value(&self.name, &labels)
    }
}

pub fn mismatches(m: &Metrics, checks: &[Expect]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| c.actual(m) != c.value)
        .map(|c| {
            format!(
                "{}{:?} = {}, expected {}",
                c.name,
                c.labels,
                c.actual(m),
                c.value
            )
        })
        .collect()
}

/// The mismatches, every series of the families involved and of `more`, and the agent's loss
/// and parse-error counters.
pub fn report(m: &Metrics, checks: &[Expect], more: &[&str]) -> String {
    let mut names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    names.extend(more);
    names.extend([
        "meshtap_events_lost_total",
        "meshtap_parse_errors_total",
        "meshtap_exchanges_total",
        "meshtap_protocol_detected_total",
    ]);
    names.sort_unstable();
    names.dedup();
    let problems = mismatches(m, checks);
    let series: Vec<String> = names.iter().map(|n| m.describe(n)).collect();
    format!(
        "{} of {} checks fail:\n  {}\nseries:\n{}",
        problems.len(),
        checks.len(),
        problems.join("\n  "),
        series.join("\n")
    )
}

/// Waits until every check holds in one scrape, then checks again 1.5 s later (nothing counted
/// late or twice). Returns the last scrape.
pub fn assert_settled(
    agent: &Agent,
    checks: &[Expect],
    timeout: Duration,
    more: &[&str],
) -> Metrics {
    agent.wait_until(
        timeout,
        |m| mismatches(m, checks).is_empty(),
        |m| report(m, checks, more),
    );
    thread::sleep(Duration::from_millis(1500));
    let m = agent.metrics();
    assert!(
        mismatches(&m, checks).is_empty(),
        "the values held, then changed: {}",
        report(&m, checks, more)
    );
    m
}

/// The spans of every trace in the agent's built-in store that has a span of `service` (Zipkin's
/// query API: services are lower case there).
pub fn stored_spans(agent: &Agent, service: &str) -> Vec<serde_json::Value> {
    crate::zipkin::api(
        agent,
        &format!(
            "/api/v2/traces?serviceName={}&limit=10000",
            service.to_lowercase()
        ),
    )
    .as_array()
    .expect("traces")
    .iter()
    .flat_map(|t| t.as_array().expect("trace").clone())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_summary_is_parsed() {
        let out = "finished in 2.89ms, 34638.03 req/s, 20.01MB/s\n\
                   requests: 100 total, 100 started, 100 done, 50 succeeded, 50 failed, 0 errored, 0 timeout\n\
                   status codes: 50 2xx, 0 3xx, 50 4xx, 0 5xx\n";
        assert_eq!(
            parse_h2load(out),
            Some(H2load {
                total: 100,
                started: 100,
                done: 100,
                succeeded: 50,
                failed: 50,
                errored: 0,
                timeout: 0,
                classes: [50, 0, 50, 0],
            })
        );
    }
}
