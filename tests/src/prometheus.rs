//! A real Prometheus server (Debian's `prometheus`) scraping the agent, queried over its HTTP
//! API; and `promtool check metrics`.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::send_signal;
use crate::tempdir::TempDir;
use crate::{free_port, http};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running Prometheus that scrapes one target every second. Stopped (SIGTERM, then SIGKILL)
/// on drop; its log is printed if the test is failing.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    reaped: bool,
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl Prometheus {
    /// Starts Prometheus on `127.0.0.1:<free port>` with its TSDB in a temp directory, scraping
    /// `target`'s `/metrics` every second, and waits until `/-/ready` answers 200.
    pub fn start(target: SocketAddr) -> Self {
        Self::start_with_jobs(&format!(
            "  - job_name: meshtap\n    scrape_interval: 1s\n    \
             scrape_timeout: 1s\n    static_configs:\n      - targets: ['{target}']\n"
        ))
    }

    /// [`Self::start`] with these `scrape_configs` entries (YAML, indented by two spaces).
    pub fn start_with_jobs(jobs: &str) -> Self {
        let dir = TempDir::new("prometheus");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n{jobs}"
        );
        let config_path = dir.file("prometheus.yml");
        fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = fs::File::create(dir.file("prometheus.log")).expect("create prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={config_path}"))
            .arg(format!("--storage.tsdb.path={}", dir.file("data")))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup prometheus.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn prometheus: {e} (apt-get install prometheus)"));
        let mut prometheus = Self {
            child,
            addr,
            dir,
            reaped: false,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = prometheus.child.try_wait().expect("waitpid prometheus") {
                prometheus.reaped = true;
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            if http::get(addr, "/-/ready", HTTP_TIMEOUT).is_ok_and(|r| r.status == 200) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {READY_TIMEOUT:?}:\n{}",
                prometheus.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.file("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the value of its first sample (`None` for an empty result). Panics on
    /// a transport error or an error answer.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let r = http::get(self.addr, &path, HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {path} from prometheus: {e}"));
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("bad JSON from prometheus ({e}): {}", r.text()));
        assert_eq!(v["status"], "success", "query {promql}: {v}");
        let first = v["data"]["result"].as_array()?.first()?;
        first["value"][1].as_str()?.parse().ok()
    }

    /// An instant query's result vector, or Prometheus' error (a query that does not parse,
    /// or fails to evaluate) as text. Panics on a transport error.
    pub fn query_result(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let r = http::get(self.addr, &path, HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {path} from prometheus: {e}"));
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("bad JSON from prometheus ({e}): {}", r.text()));
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Queries every 500 ms until `promql` returns `expected`; panics after `timeout` with the
    /// last result.
    pub fn wait_for(&self, promql: &str, expected: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.query(promql);
            if got == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus: {promql} = {got:?} after {timeout:?}, expected {expected}"
            );
            thread::sleep(Duration::from_millis(500));
        }
    }

    fn terminate(&mut self) {
        if self.reaped {
            return;
        }
        send_signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.child.try_wait().expect("waitpid prometheus").is_none() {
            if Instant::now() >= deadline {
                send_signal(self.child.id(), libc::SIGKILL);
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.reaped = true;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- prometheus log ---\n{}--- end ---", self.log());
        }
        self.terminate();
    }
}

/// `promtool check metrics` on an exposition: `Ok(())` when it exits 0 and reports nothing,
/// else its report.
pub fn promtool_check(exposition: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run promtool: {e} (apt-get install prometheus)"));
    let mut stdin = child.stdin.take().expect("stdin");
    let body = exposition.to_owned();
    let writer = thread::spawn(move || stdin.write_all(body.as_bytes()));
    let out = child.wait_with_output().expect("promtool output");
    writer
        .join()
        .expect("promtool writer")
        .expect("write to promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && report.trim().is_empty() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics ({}):\n{report}",
            out.status
        ))
    }
}
