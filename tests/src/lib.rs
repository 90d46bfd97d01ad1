//! Integration-test harness for the meshtap agent: the real binary, the real kernel, real sockets.
//!
//! Every resource a test creates is held by an RAII guard that releases it on drop, also while a
//! failing test unwinds: [`Agent`] (SIGTERM, then wait; its stderr is printed when the test
//! fails), [`NetNs`] / [`VethPair`] (namespaces deleted), [`ScriptChild`] (killed and reaped),
//! [`Nginx`] and [`Prometheus`] (stopped, their temp directories removed), [`TempDir`].
//!
//! The helpers panic with a message instead of returning errors: they run inside `#[test]`
//! functions, where a panic with context *is* the error report. `cargo xtask bench` uses the
//! temp directories, free ports, nginx and the agent's runner too, through the variants that
//! return the same message as an error ([`TempDir::try_new`], [`try_free_port`],
//! [`Nginx::try_start`], [`Agent::start_binary`]): a failed scenario must not end the run.
//!
//! Needs: root (BPF, namespaces, `/proc/sys/kernel/ns_last_pid`), `ip` (iproute2), Debian's
//! `/usr/bin/python3` (or `$MESHTAP_PYTHON`), `bpftool`, `promtool` (package prometheus), and
//! the agent binary (`$MESHTAP_BIN`, else `target/release/meshtap`); for `tests/web.rs`, Debian's
//! `chromium` and `playwright-core` under `/usr/local/lib/meshtap/node` (`cargo xtask setup`).
//!
//! What several test files of one suite share lives here too: [`kube`] (the Kubernetes tests'
//! cluster, node and fake API server), [`traces`], [`zipkin`] and [`spans`] (the trace tests'
//! programs, collector and span accessors), [`db`] (the database tests' servers), [`h2`] (the
//! HTTP/2 and gRPC tests' servers, clients and exact-count checks), [`golang`] (the Go programs
//! the TLS tests build with `golang-go`).
//!
//! Tests take [`serial()`] first: one agent at a time in the whole process, so `cargo test`'s
//! thread pool cannot make two agents see (and count) each other's traffic.

pub mod agent;
pub mod bpf;
pub mod db;
pub mod golang;
pub mod h2;
pub mod http;
pub mod kube;
pub mod metrics;
pub mod netns;
pub mod nginx;
pub mod process;
pub mod prom;
pub mod prometheus;
pub mod scrape;
pub mod serial;
pub mod spans;
pub mod tempdir;
pub mod tls;
pub mod traces;
pub mod zipkin;

pub use agent::{Agent, Connection, Exited};
pub use netns::{Host, NetNs, VethPair};
pub use nginx::{Nginx, NginxConfig};
pub use process::{Script, ScriptChild};
pub use prom::{Check, Metrics, Sample};
pub use prometheus::Prometheus;
pub use scrape::Scraper;
pub use serial::{Serial, serial};
pub use tempdir::TempDir;

use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

/// How long an event may take to reach the agent's metrics: the agent polls its ring buffer every
/// poll interval, and a test machine under load can be slow.
pub const SETTLE: Duration = Duration::from_secs(10);

/// The workspace root (`tests/..`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// A TCP port on 127.0.0.1 that nothing listens on right now (bound, then released). Tests run
/// one at a time ([`serial()`]), so nothing of ours takes it in between.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("a free port on 127.0.0.1: {e}"))
}

/// Ports [`try_free_port`] picks from: below Linux's ephemeral range (32768-60999 by default),
/// so that a client's connection, which takes its local port from that range, cannot take the
/// port between the pick and the bind of the server it is for (an agent failed once with
/// `Address already in use` while a test's HTTPS clients were connecting).
const PICKED_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// [`free_port()`], with an error instead of a panic (for `cargo xtask bench`).
pub fn try_free_port() -> io::Result<u16> {
    use std::hash::{BuildHasher, RandomState};
    let span = u64::from(PICKED_PORTS.end - PICKED_PORTS.start);
    let random = RandomState::new();
    for attempt in 0u64..64 {
        let port = PICKED_PORTS.start + (random.hash_one(attempt) % span) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok(listener.local_addr()?.port());
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
