//! The agent under test: spawned from its real binary, driven over its HTTP endpoints.

use std::fs::{self, File};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::prom::Metrics;
use crate::serial::{Serial, serial};
use crate::{free_port, http, try_free_port, workspace_root};

/// How long the agent may take to attach every program and answer `/readyz` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to exit after SIGTERM / SIGINT.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);

/// One entry of `GET /api/v1/connections`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Connection {
    pub id: u64,
    /// `client`, `server` or `unknown`.
    pub role: String,
    /// `ip:port` or `[ipv6]:port`.
    pub local: String,
    pub remote: String,
    pub pid: u32,
    pub comm: String,
    pub start_time_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// The path of the agent binary: `$MESHTAP_BIN`, else `<workspace>/target/release/meshtap`.
pub fn binary() -> PathBuf {
    std::env::var_os("MESHTAP_BIN").map_or_else(
        || workspace_root().join("target/release/meshtap"),
        PathBuf::from,
    )
}

fn check_binary(path: &Path) -> io::Result<()> {
    if path.is_file() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "agent binary {} does not exist: build it with `cargo build --release -p meshtap` or \
             point MESHTAP_BIN at it",
            path.display()
        ),
    ))
}

/// A file in the temp directory that receives a child's output; removed on drop.
struct LogFile {
    path: PathBuf,
}

impl LogFile {
    fn new(what: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "meshtap-test-{}-{what}-{n}.log",
            std::process::id()
        ));
        File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }

    fn stdio(&self) -> Stdio {
        let file = File::options()
            .append(true)
            .open(&self.path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path.display()));
        Stdio::from(file)
    }

    fn read(&self) -> String {
        fs::read(&self.path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.path.display()))
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// How an agent process ended.
#[derive(Debug)]
pub struct Exited {
    /// `None`: it had not exited within the timeout and was killed.
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout and stderr.
    pub stderr: String,
}

impl Exited {
    /// The non-empty lines of the agent's output.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is positive (a child's pid), so
    // it never addresses a process group.
    let rc = unsafe { libc::kill(pid, signal) };
    assert!(
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH),
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// Waits for `child` to exit, up to `timeout`; `None` if it is still running.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A running agent. Dropping it sends SIGTERM and waits; if the test is failing (or the agent
/// does not exit 0) its output is printed.
pub struct Agent {
    child: Child,
    addr: SocketAddr,
    /// Started with `--tls-cert`: its endpoint speaks HTTPS only.
    tls: bool,
    log: LogFile,
    /// Set once the process has been reaped.
    exited: Option<Option<ExitStatus>>,
    /// Its output was handed on already (in an error): not printed again on drop.
    reported: bool,
    _serial: Serial,
}

fn listen_arg(args: &[&str]) -> Option<SocketAddr> {
    let i = args.iter().position(|a| *a == "--listen")?;
    let addr = args.get(i + 1).expect("--listen needs a value");
    Some(addr.parse().expect("--listen value is ip:port"))
}

/// The status `curl --insecure` gets for `https://addr/path` (0 when none): the readiness probe
/// of an agent serving TLS, whose certificate the tests check themselves.
fn https_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--insecure",
            "--max-time",
            "5",
            "--output",
            "/dev/null",
        ])
        .args(["--write-out", "%{http_code}"])
        .arg(format!("https://{addr}{path}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("spawn curl: {e}")))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0))
}

/// `GET https://addr/path` with `curl --insecure`: status and body.
fn https_get(addr: SocketAddr, path: &str) -> io::Result<http::Response> {
    let out = Command::new("curl")
        .args(["--silent", "--insecure", "--max-time", "10"])
        .args(["--write-out", "\n%{http_code}"])
        .arg(format!("https://{addr}{path}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("spawn curl: {e}")))?;
    let mut body = out.stdout;
    let split = body.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&body[split..])
        .trim()
        .parse()
        .unwrap_or(0);
    if status == 0 {
        return Err(io::Error::other(format!(
            "curl: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    body.truncate(split);
    Ok(http::Response {
        status,
        headers: Vec::new(),
        body,
    })
}

fn command(bin: &Path, args: &[&str], addr: SocketAddr, log: &LogFile) -> io::Result<Command> {
    check_binary(bin)?;
    let mut cmd = Command::new(bin);
    cmd.args(args);
    if listen_arg(args).is_none() {
        cmd.arg("--listen").arg(addr.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(log.stdio())
        .stderr(log.stdio());
    Ok(cmd)
}

impl Agent {
    /// Starts the agent with `args` (plus `--listen 127.0.0.1:<free port>` unless `args` has a
    /// `--listen`) and waits until `/readyz` answers 200 (over HTTPS, certificate unchecked, when
    /// `args` has `--tls-cert`).
    pub fn start(args: &[&str]) -> Self {
        Self::start_binary(&binary(), args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start`] with the agent binary `bin`, and an error instead of a panic when it
    /// cannot start or does not become ready (its output is in the error): `cargo xtask bench`
    /// measures a binary of its choosing and goes on with its other scenarios.
    pub fn start_binary(bin: &Path, args: &[&str]) -> io::Result<Self> {
        let serial = serial();
        let addr = match listen_arg(args) {
            Some(addr) => addr,
            None => SocketAddr::from(([127, 0, 0, 1], try_free_port()?)),
        };
        let log = LogFile::new("agent");
        let child = command(bin, args, addr, &log)?
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawn {}: {e}", bin.display())))?;
        let mut agent = Self {
            child,
            addr,
            tls: args.contains(&"--tls-cert"),
            log,
            exited: None,
            reported: false,
            _serial: serial,
        };
        if let Err(e) = agent.wait_ready() {
            let status = agent.terminate(libc::SIGTERM);
            agent.reported = true;
            return Err(io::Error::other(format!("{e}\n{}", agent.ended(status))));
        }
        Ok(agent)
    }

    /// Runs the agent with `args` and waits for it to exit by itself (for invalid
    /// configurations). If it is still running after `timeout` it is killed (`status: None`).
    pub fn run_to_exit(args: &[&str], timeout: Duration) -> Exited {
        let _serial = serial();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = LogFile::new("agent-exit");
        let bin = binary();
        let mut child = command(&bin, args, addr, &log)
            .and_then(|mut cmd| cmd.spawn())
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let status = wait_timeout(&mut child, timeout);
        if status.is_none() {
            send_signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
        Exited {
            status,
            stderr: log.read(),
        }
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(Some(status));
                return Err(io::Error::other(format!(
                    "agent exited ({status}) before /readyz answered 200"
                )));
            }
            let last = if self.tls {
                match https_status(self.addr, "/readyz")? {
                    200 => return Ok(()),
                    status => format!("HTTPS status {status}"),
                }
            } else {
                match http::get(self.addr, "/readyz", HTTP_TIMEOUT) {
                    Ok(r) if r.status == 200 => return Ok(()),
                    Ok(r) => format!("HTTP {}: {}", r.status, r.text().trim()),
                    Err(e) => e.to_string(),
                }
            };
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "agent not ready after {READY_TIMEOUT:?}; last /readyz: {last}"
                )));
            }
            thread::sleep(POLL);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the agent wrote so far.
    pub fn log(&self) -> String {
        self.log.read()
    }

    /// Sends a signal (SIGSTOP, SIGCONT, ...) to the agent process.
    pub fn signal(&self, signal: libc::c_int) {
        send_signal(self.pid(), signal);
    }

    /// `GET path` (over HTTPS, certificate unchecked, for an agent serving TLS: the tests that
    /// check its certificate do so themselves); panics on a transport error.
    pub fn get(&self, path: &str) -> http::Response {
        if self.tls {
            return https_get(self.addr, path)
                .unwrap_or_else(|e| panic!("GET {path} from the agent at {}: {e}", self.addr));
        }
        http::get(self.addr, path, HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {path} from the agent at {}: {e}", self.addr))
    }

    /// The raw `/metrics` body (asserting HTTP 200).
    pub fn metrics_text(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// One scrape of `/metrics`, parsed.
    pub fn metrics(&self) -> Metrics {
        let text = self.metrics_text();
        Metrics::parse(&text).unwrap_or_else(|e| panic!("bad /metrics exposition: {e}\n{text}"))
    }

    /// The sum of the series of `name` carrying every one of `labels` (0 if none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics().value(name, labels)
    }

    /// Scrapes until `check` accepts a scrape (returned), or panics after `timeout` with the
    /// `describe` text of the last scrape.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Metrics) -> bool,
        describe: impl Fn(&Metrics) -> String,
    ) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            if check(&m) {
                return m;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?}: {}", describe(&m));
            }
            thread::sleep(POLL);
        }
    }

    /// Scrapes until the sum of the matching series equals `expected`, or panics after `timeout`
    /// showing the actual value and every series of `name`. Returns the last scrape.
    pub fn wait_for(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        expected: f64,
        timeout: Duration,
    ) -> Metrics {
        self.wait_until(
            timeout,
            |m| m.value(name, labels) == expected,
            |m| {
                format!(
                    "{name}{labels:?} = {}, expected {expected}\nseries of {name}:\n{}",
                    m.value(name, labels),
                    m.describe(name)
                )
            },
        )
    }

    /// `GET /api/v1/connections`, parsed.
    pub fn connections(&self) -> Vec<Connection> {
        let r = self.get("/api/v1/connections");
        assert_eq!(r.status, 200, "GET /api/v1/connections: {}", r.text());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("bad /api/v1/connections JSON: {e}\n{}", r.text()))
    }

    /// Polls `/api/v1/connections` until `check` accepts the table (returned), or panics after
    /// `timeout` showing `what` and the last table.
    pub fn wait_for_connections(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[Connection]) -> bool,
    ) -> Vec<Connection> {
        let deadline = Instant::now() + timeout;
        loop {
            let table = self.connections();
            if check(&table) {
                return table;
            }
            if Instant::now() >= deadline {
                let rows: Vec<String> = table.iter().map(|c| format!("  {c:?}")).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; /api/v1/connections:\n{}",
                    rows.join("\n")
                );
            }
            thread::sleep(POLL);
        }
    }

    fn terminate(&mut self, signal: libc::c_int) -> Option<ExitStatus> {
        if let Some(status) = self.exited {
            return status;
        }
        // A stopped agent (SIGSTOP in a test) would not act on SIGTERM until continued.
        self.signal(libc::SIGCONT);
        self.signal(signal);
        let status = wait_timeout(&mut self.child, SHUTDOWN_TIMEOUT);
        if status.is_none() {
            send_signal(self.pid(), libc::SIGKILL);
            let _ = self.child.wait();
        }
        self.exited = Some(status);
        status
    }

    /// How the agent ended, and all it wrote.
    fn ended(&self, status: Option<ExitStatus>) -> String {
        format!(
            "--- meshtap agent pid {} on {} ended: {} ---\n{}--- end of agent output ---",
            self.pid(),
            self.addr,
            status.map_or_else(
                || "killed after SIGTERM timeout".to_owned(),
                |s| s.to_string()
            ),
            self.log.read()
        )
    }

    /// Sends `signal` (SIGTERM or SIGINT) and waits for the agent to exit. The caller checks
    /// the returned status; dropping the agent afterwards does not.
    pub fn stop_with(mut self, signal: libc::c_int) -> Exited {
        let status = self.terminate(signal);
        Exited {
            status,
            stderr: self.log.read(),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let already_checked = self.exited.is_some();
        let status = self.terminate(libc::SIGTERM);
        let clean = status.is_some_and(|s| s.success());
        let failing = thread::panicking();
        if (failing || !clean) && !self.reported {
            eprintln!("{}", self.ended(status));
        }
        if !failing && !clean && !already_checked {
            panic!("the agent did not exit 0 within {SHUTDOWN_TIMEOUT:?} of SIGTERM");
        }
    }
}
