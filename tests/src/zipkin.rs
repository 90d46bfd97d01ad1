//! The Zipkin side of the trace tests: a collector (`zipkin_collector.py --strict`, through
//! `trace_collector.py` for its process name) that validates every body it receives against the
//! official spec and keeps the spans it accepts, the validator for the agent's query API
//! answers, and that API itself.

use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::Agent;
use crate::process::{
    RUN, STARTUP, Script, ScriptChild, port_of, python, run_command, scripts_dir,
};
use crate::spans::{describe, service};
use crate::tempdir::TempDir;
use crate::{http, workspace_root};

/// How long spans may take to reach the collector: the 2 s link wait, batching, retries.
pub const EXPORT: Duration = Duration::from_secs(40);
/// After the expected spans arrived: long enough for a late or duplicate span to show up.
pub const QUIET: Duration = Duration::from_secs(3);
/// How often the collector's spans (and the agent's answers) are looked at while waiting.
pub const POLL: Duration = Duration::from_millis(100);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The Zipkin spec the collector and the validator check against: `$MESHTAP_ZIPKIN_SPEC`, else
/// `<workspace>/../shared/spec/zipkin2-api.yaml`.
pub fn spec_path() -> String {
    if let Ok(p) = std::env::var("MESHTAP_ZIPKIN_SPEC") {
        return p;
    }
    let path = workspace_root().join("../shared/spec/zipkin2-api.yaml");
    assert!(path.is_file(), "no Zipkin spec at {}", path.display());
    path.to_string_lossy().into_owned()
}

/// `zipkin_collector.py --strict --out FILE` (through `trace_collector.py`, for its comm).
pub struct Collector {
    _child: ScriptChild,
    port: u16,
    out: String,
    _dir: TempDir,
}

impl Collector {
    /// The collector, its process named `comm`; `extra`: more of its options
    /// (`--fail-first N`).
    pub fn start(comm: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new("collector");
        let out = dir.file("spans.jsonl");
        let mut script = Script::new("trace_collector.py", comm)
            .opt("--out", &out)
            .opt("--spec", spec_path())
            .arg("--strict");
        for a in extra {
            script = script.arg(a);
        }
        let mut child = script.spawn();
        let port = port_of(&child.expect_event("listening", STARTUP));
        Self {
            _child: child,
            port,
            out,
            _dir: dir,
        }
    }

    /// The URL the agent POSTs to (`--zipkin-endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/api/v2/spans", self.port)
    }

    /// `GET /stats`.
    pub fn stats(&self) -> Value {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let r = http::get(addr, "/stats", HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET /stats from the collector: {e}"));
        assert_eq!(r.status, 200, "collector /stats: {}", r.text());
        serde_json::from_slice(&r.body).expect("collector /stats JSON")
    }

    /// Every span accepted so far (a line still being written is left for the next call).
    pub fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("collector line {l}: {e}")))
            .collect()
    }

    /// The accepted spans whose local service is one of `services`.
    pub fn spans_of(&self, services: &[&str]) -> Vec<Value> {
        self.spans()
            .into_iter()
            .filter(|s| services.contains(&service(s)))
            .collect()
    }

    /// Waits until exactly `n` spans of `services` arrived (panics on more, or on a timeout),
    /// then waits [`QUIET`] and checks that nothing was added.
    pub fn wait_spans(&self, services: &[&str], n: usize) -> Vec<Value> {
        self.wait_spans_with(services, n, QUIET, || {
            format!("collector stats {}", self.stats())
        })
    }

    /// [`Self::wait_spans`], waiting `quiet` at the end; a timeout's message adds `diagnose()`.
    pub fn wait_spans_with(
        &self,
        services: &[&str],
        n: usize,
        quiet: Duration,
        diagnose: impl Fn() -> String,
    ) -> Vec<Value> {
        let deadline = Instant::now() + EXPORT;
        loop {
            let got = self.spans_of(services);
            assert!(
                got.len() <= n,
                "the collector got {} spans of {services:?}, expected {n}:\n{}",
                got.len(),
                describe(&got)
            );
            if got.len() == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the collector got {} spans of {services:?} within {EXPORT:?}, expected {n}; \
                 {}:\n{}",
                got.len(),
                diagnose(),
                describe(&got)
            );
            thread::sleep(POLL);
        }
        thread::sleep(quiet);
        let got = self.spans_of(services);
        assert_eq!(
            got.len(),
            n,
            "spans of {services:?} kept arriving:\n{}",
            describe(&got)
        );
        got
    }
}

/// `GET path` from the agent, asserting 200; the body as JSON.
pub fn api(agent: &Agent, path: &str) -> Value {
    let r = agent.get(path);
    assert_eq!(
        r.status,
        200,
        "GET {path}: {} (store: {} spans, {} evicted)",
        r.text(),
        agent.value("meshtap_trace_store_spans", &[]),
        agent.value("meshtap_trace_store_evicted_spans_total", &[])
    );
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("GET {path}: bad JSON {e}"))
}

/// Validates `doc` against `definition` of the spec with `zipkin_validate.py --strict`.
pub fn validate(doc: &Value, definition: &str, what: &str) {
    let dir = TempDir::new("validate");
    let file = dir.file("doc.json");
    std::fs::write(&file, serde_json::to_vec(doc).expect("serialise")).expect("write doc");
    let out = run_command(
        Command::new(python())
            .arg(scripts_dir().join("zipkin_validate.py"))
            .arg(&file)
            .arg(definition)
            .arg("--strict")
            .arg("--spec")
            .arg(spec_path()),
        RUN,
    );
    assert!(
        out.status.success(),
        "{what} is not a valid {definition}: {}{}\n{doc}",
        out.stdout,
        out.stderr
    );
}
