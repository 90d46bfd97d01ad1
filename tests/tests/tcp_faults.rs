//! TCP faults and start-up failures, end to end: connects that time out or find no route,
//! non-blocking connects, `sendfile`, retransmits on an established connection, and the agent
//! started without privileges, without BTF or without tracefs.
//!
//! The truth for every number comes from the programs themselves (the scripts report errnos
//! and the sums of their syscall return values) or from the kernel (`/proc/net/snmp` and
//! `/proc/net/netstat` of the namespace the connection lives in, and `TCP_INFO`). Faults are
//! made without netem or a firewall: a listener whose accept queue is full drops SYNs silently,
//! a namespace with only `lo` has no route, a blackhole route keeps a namespace's ACKs in, and
//! a veth end set down drops everything.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use meshtap_tests::agent::{READY_TIMEOUT, SHUTDOWN_TIMEOUT, binary, send_signal};
use meshtap_tests::metrics::{
    ACTIVE, CLOSED, CONNECT_DURATION_BUCKET, CONNECT_DURATION_COUNT, FAILED, OPENED, RECEIVED,
    RETRANSMITS, SENT,
};
use meshtap_tests::{Agent, NetNs, SETTLE, Script, ScriptChild, VethPair, free_port, http, serial};
use serde_json::{Value, json};

/// How long one test program may run.
const RUN: Duration = Duration::from_secs(60);
/// How long a test program may take to start and report it is listening / connected.
const STARTUP: Duration = Duration::from_secs(10);

fn faults(comm: &str) -> Script {
    Script::new("tcp_faults.py", comm).named()
}

fn listening_port(server: &mut ScriptChild) -> u16 {
    let v = server.expect_event("listening", STARTUP);
    u16::try_from(num(&v, "port")).expect("port fits u16")
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("script result has no number {key:?}: {v}"))
}

/// Labels of one L4 edge as seen by `role`.
fn edge<'a>(
    client: &'a str,
    server: &'a str,
    port: &'a str,
    role: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("client", client),
        ("server", server),
        ("server_port", port),
        ("role", role),
    ]
}

/// Runs `program args...` inside `ns` and returns its stdout; panics if it fails.
fn ns_output(ns: &NetNs, program: &str, args: &[&str]) -> String {
    let out = ns
        .command(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} in netns {}: {e}", ns.name()));
    assert!(
        out.status.success(),
        "{program} {args:?} in netns {} failed ({}): {}",
        ns.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sysctl -w key=value` inside `ns` (the `net.*` keys are per network namespace).
fn sysctl(ns: &NetNs, setting: &str) {
    ns_output(ns, "sysctl", &["-q", "-w", setting]);
}

/// The kernel's TCP counters of `ns`: `/proc/net/snmp` and `/proc/net/netstat` as
/// `"Tcp:RetransSegs"`, `"TcpExt:TCPSynRetrans"`, ... (what `nstat` shows as `TcpRetransSegs`,
/// `TcpExtTCPSynRetrans`).
fn kernel_counters(ns: &NetNs) -> BTreeMap<String, u64> {
    let text = ns_output(ns, "cat", &["/proc/net/snmp", "/proc/net/netstat"]);
    let mut counters = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else {
            panic!("odd number of lines in /proc/net/snmp + netstat:\n{text}")
        };
        let mut names = names.split_whitespace();
        let mut values = values.split_whitespace();
        let (Some(prefix), Some(same)) = (names.next(), values.next()) else {
            continue;
        };
        assert_eq!(prefix, same, "unpaired lines in /proc/net/snmp + netstat");
        for (name, value) in names.zip(values) {
            // Tcp:MaxConn is -1; every counter used here is non-negative.
            if let Ok(value) = value.parse::<u64>() {
                counters.insert(format!("{prefix}{name}"), value);
            }
        }
    }
    counters
}

fn counter(counters: &BTreeMap<String, u64>, key: &str) -> u64 {
    *counters
        .get(key)
        .unwrap_or_else(|| panic!("no kernel counter {key}"))
}

/// The change of `key` between two readings of [`kernel_counters`].
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, key: &str) -> u64 {
    counter(after, key) - counter(before, key)
}

/// Polls `check` every 50 ms until it holds, or panics with `what` after `timeout`.
fn poll(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn timed_out_connects_are_counted_with_their_syn_retransmits() {
    const N: u64 = 3;
    let _serial = serial();
    // Server in `a`, clients in `b`. One SYN retry in `b`: a connect gives up after ~3 s.
    // No SYN cookies in `a`: a listener whose accept queue is full drops SYNs silently.
    let pair = VethPair::new();
    sysctl(&pair.b.ns, "net.ipv4.tcp_syn_retries=1");
    sysctl(&pair.a.ns, "net.ipv4.tcp_syncookies=0");
    let agent = Agent::start(&[]);
    let (cli, srv, fill) = ("mt-cli-tmo", "mt-srv-tmo", "mt-fill-tmo");
    let server_ip = pair.a.v4.to_string();

    // listen(0): the one connection that completes its handshake (and is never accepted)
    // fills the accept queue.
    let mut server = faults(srv)
        .in_netns(&pair.a.ns)
        .opt("--mode", "backlog0")
        .opt("--bind", &server_ip)
        .spawn();
    let port = listening_port(&mut server);
    let mut filler = Script::client(fill)
        .named()
        .in_netns(&pair.b.ns)
        .opt("--host", &server_ip)
        .opt("--port", port)
        .opt("--mode", "hold")
        .spawn();
    filler.expect_event("connected", STARTUP);
    let sport = format!("sport = :{port}");
    poll("the filler in the listener's accept queue", STARTUP, || {
        // `ss -l`: Recv-Q of a listener is its accept queue.
        let line = ns_output(&pair.a.ns, "ss", &["-Hltn", &sport]);
        line.split_whitespace().nth(1) == Some("1")
    });

    let before = kernel_counters(&pair.b.ns);
    let result = Script::client(cli)
        .named()
        .in_netns(&pair.b.ns)
        .opt("--host", &server_ip)
        .opt("--port", port)
        .opt("--mode", "refused")
        .opt("--count", N)
        .run(RUN);
    let after = kernel_counters(&pair.b.ns);
    assert_eq!(result["errnos"], json!({ "ETIMEDOUT": N }), "{result}");
    assert_eq!(num(&result, "opened"), 0);
    let syn_retrans = delta(&before, &after, "TcpExt:TCPSynRetrans");
    let retrans_segs = delta(&before, &after, "Tcp:RetransSegs");
    eprintln!("kernel in the client namespace: {syn_retrans} SYN retransmits");
    assert!(
        syn_retrans >= N,
        "the kernel retransmitted {syn_retrans} SYNs for {N} timed-out connects"
    );
    assert_eq!(
        retrans_segs, syn_retrans,
        "segments other than SYNs were retransmitted in the client namespace"
    );

    let port = port.to_string();
    let by_client = [("client", cli)];
    // A local process listens on the server's end: it names the server.
    let timed_out = [
        ("client", cli),
        ("server", srv),
        ("server_port", port.as_str()),
        ("role", "client"),
        ("reason", "timed_out"),
    ];
    let retransmits = edge(cli, srv, &port, "client");
    agent.wait_for(FAILED, &timed_out, N as f64, SETTLE);
    agent.wait_for(RETRANSMITS, &retransmits, syn_retrans as f64, SETTLE);
    // Settled: still exact a moment later.
    thread::sleep(Duration::from_secs(1));
    let m = agent.metrics();
    eprintln!("{}\n{}", m.describe(FAILED), m.describe(RETRANSMITS));
    m.assert_values(&[
        (FAILED, &timed_out, N as f64),
        (FAILED, &by_client, N as f64),
        (OPENED, &by_client, 0.0),
        (CLOSED, &by_client, 0.0),
        (ACTIVE, &by_client, 0.0),
        (CONNECT_DURATION_COUNT, &by_client, 0.0),
        (RETRANSMITS, &retransmits, syn_retrans as f64),
        (RETRANSMITS, &by_client, syn_retrans as f64),
        // The filler connected once, with no retransmit, and is not a failure.
        (OPENED, &[("client", fill), ("role", "client")], 1.0),
        (FAILED, &[("client", fill)], 0.0),
        (RETRANSMITS, &[("client", fill)], 0.0),
    ]);
    filler.send_line("close");
    filler.finish(RUN);
    server.send_line("stop");
    server.finish(RUN);
}

#[test]
fn unreachable_and_non_blocking_connects() {
    const UNREACHABLE: u64 = 5;
    const REFUSED: u64 = 4;
    const OPENS: u64 = 6;
    let _serial = serial();
    // Only `lo` is up: there is no route to 10.1.2.3, and no packet can leave.
    let ns = NetNs::create(&format!("mt-faults-lo-{}", std::process::id()));
    let agent = Agent::start(&[]);

    // Blocking connects without a route: ENETUNREACH, synchronously.
    let cli = "mt-cli-unreach";
    let result = Script::client(cli)
        .named()
        .in_netns(&ns)
        .opt("--host", "10.1.2.3")
        .opt("--port", 80)
        .opt("--mode", "refused")
        .opt("--count", UNREACHABLE)
        .run(RUN);
    assert_eq!(
        result["errnos"],
        json!({ "ENETUNREACH": UNREACHABLE }),
        "{result}"
    );
    let unreachable = [
        ("client", cli),
        ("server", "10.1.2.3"),
        ("server_port", "80"),
        ("role", "client"),
        ("reason", "unreachable"),
    ];
    let by_client = [("client", cli)];
    agent.wait_for(FAILED, &unreachable, UNREACHABLE as f64, SETTLE);
    agent.metrics().assert_values(&[
        (FAILED, &unreachable, UNREACHABLE as f64),
        (FAILED, &by_client, UNREACHABLE as f64),
        (OPENED, &by_client, 0.0),
        (CLOSED, &by_client, 0.0),
        (ACTIVE, &by_client, 0.0),
        (RETRANSMITS, &by_client, 0.0),
    ]);

    // Non-blocking connects to a closed port on loopback: EINPROGRESS, then SO_ERROR says
    // ECONNREFUSED. Nothing listens in the fresh namespace.
    let cli = "mt-cli-nb-refus";
    let port = 5098;
    let result = faults(cli)
        .in_netns(&ns)
        .opt("--mode", "nb-connect")
        .opt("--host", "127.0.0.1")
        .opt("--port", port)
        .opt("--count", REFUSED)
        .run(RUN);
    assert_eq!(
        result["errnos"],
        json!({ "ECONNREFUSED": REFUSED }),
        "{result}"
    );
    eprintln!(
        "{} of {REFUSED} refused non-blocking connects returned EINPROGRESS",
        num(&result, "in_progress")
    );
    let port = port.to_string();
    let refused = [
        ("client", cli),
        ("server", "127.0.0.1"),
        ("server_port", port.as_str()),
        ("role", "client"),
        ("reason", "refused"),
    ];
    let by_client = [("client", cli)];
    agent.wait_for(FAILED, &refused, REFUSED as f64, SETTLE);
    agent.metrics().assert_values(&[
        (FAILED, &refused, REFUSED as f64),
        (FAILED, &by_client, REFUSED as f64),
        (OPENED, &by_client, 0.0),
        (CLOSED, &by_client, 0.0),
        (CONNECT_DURATION_COUNT, &by_client, 0.0),
    ]);

    // Non-blocking connects that succeed: each opened once, each with one connect duration.
    let (cli, srv) = ("mt-cli-nb-ok", "mt-srv-nb-ok");
    let mut server = Script::server(srv)
        .named()
        .in_netns(&ns)
        .opt("--bind", "127.0.0.1")
        .opt("--mode", "close")
        .opt("--count", OPENS)
        .spawn();
    let port = listening_port(&mut server);
    let result = faults(cli)
        .in_netns(&ns)
        .opt("--mode", "nb-connect")
        .opt("--host", "127.0.0.1")
        .opt("--port", port)
        .opt("--count", OPENS)
        .run(RUN);
    server.finish(RUN);
    assert_eq!(result["errnos"], json!({ "OK": OPENS }), "{result}");
    assert_eq!(
        num(&result, "in_progress"),
        OPENS,
        "every non-blocking connect returns EINPROGRESS first"
    );
    let port = port.to_string();
    let as_client = edge(cli, srv, &port, "client");
    let as_server = edge(cli, srv, &port, "server");
    let inf = [("client", cli), ("role", "client"), ("le", "+Inf")];
    let by_client = [("client", cli)];
    let n = OPENS as f64;
    for labels in [&as_client, &as_server] {
        agent.wait_for(CLOSED, labels, n, SETTLE);
    }
    agent.wait_for(CONNECT_DURATION_COUNT, &as_client, n, SETTLE);
    agent.metrics().assert_values(&[
        (OPENED, &as_client, n),
        (OPENED, &as_server, n),
        (OPENED, &by_client, 2.0 * n),
        (CLOSED, &as_client, n),
        (CLOSED, &as_server, n),
        (ACTIVE, &by_client, 0.0),
        (FAILED, &by_client, 0.0),
        (CONNECT_DURATION_COUNT, &as_client, n),
        (CONNECT_DURATION_COUNT, &by_client, n),
        (CONNECT_DURATION_BUCKET, &inf, n),
    ]);
}

#[test]
fn sendfile_bytes_are_counted() {
    const SIZE: u64 = 3 * 1024 * 1024;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (cli, srv) = ("mt-cli-sendfile", "mt-srv-sendfile");
    let mut server = Script::server(srv)
        .named()
        .opt("--bind", "127.0.0.1")
        .opt("--mode", "drain")
        .spawn();
    let port = listening_port(&mut server);
    let client = faults(cli)
        .opt("--mode", "sendfile")
        .opt("--host", "127.0.0.1")
        .opt("--port", port)
        .opt("--size", SIZE)
        .run(RUN);
    let server = server.finish(RUN);
    assert_eq!(
        (num(&client, "sent"), num(&client, "received")),
        (SIZE, 0),
        "{client}"
    );
    assert_eq!(
        (num(&server, "sent"), num(&server, "received")),
        (0, SIZE),
        "{server}"
    );
    let port = port.to_string();
    let as_client = edge(cli, srv, &port, "client");
    let as_server = edge(cli, srv, &port, "server");
    let by_client = [("client", cli)];
    let size = SIZE as f64;
    agent.wait_for(CLOSED, &as_client, 1.0, SETTLE);
    agent.wait_for(CLOSED, &as_server, 1.0, SETTLE);
    agent.wait_for(SENT, &as_client, size, SETTLE);
    agent.wait_for(RECEIVED, &as_server, size, SETTLE);
    agent.metrics().assert_values(&[
        (SENT, &as_client, size),
        (RECEIVED, &as_client, 0.0),
        (SENT, &as_server, 0.0),
        (RECEIVED, &as_server, size),
        (SENT, &by_client, size),
        (RECEIVED, &by_client, size),
        (OPENED, &as_client, 1.0),
        (OPENED, &as_server, 1.0),
    ]);
}

/// How segments are lost for a while on an established connection.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// A blackhole route in the server's namespace keeps its ACKs in: the client's segments
    /// arrive, and the client really retransmits them.
    ServerAcksBlackholed,
    /// The server's veth end is set down: the client's end loses its carrier, its neighbour
    /// entry is flushed and the segment waits in the neighbour queue. While it is queued the
    /// kernel skips every retransmit (`tcp:tcp_retransmit_skb` fires with err -EBUSY and
    /// `TcpExtTCPSpuriousRtxHostQueues` counts it, `TcpRetransSegs` does not).
    ServerLinkDown,
}

/// Undoes a [`Loss`] on drop.
struct LossGuard<'a> {
    ns: &'a NetNs,
    undo: Vec<String>,
}

impl Drop for LossGuard<'_> {
    fn drop(&mut self) {
        let args: Vec<&str> = self.undo.iter().map(String::as_str).collect();
        self.ns.ip(&args);
    }
}

impl Loss {
    fn start(self, pair: &VethPair) -> LossGuard<'_> {
        let (doit, undo) = match self {
            Loss::ServerAcksBlackholed => {
                let dst = format!("{}/32", pair.b.v4);
                (
                    vec![
                        "route".to_owned(),
                        "add".into(),
                        "blackhole".into(),
                        dst.clone(),
                    ],
                    vec!["route".to_owned(), "del".into(), "blackhole".into(), dst],
                )
            }
            Loss::ServerLinkDown => {
                let ifname = format!("mtv{}a", pair.subnet);
                (
                    vec![
                        "link".to_owned(),
                        "set".into(),
                        ifname.clone(),
                        "down".into(),
                    ],
                    vec!["link".to_owned(), "set".into(), ifname, "up".into()],
                )
            }
        };
        let args: Vec<&str> = doit.iter().map(String::as_str).collect();
        pair.a.ns.ip(&args);
        LossGuard {
            ns: &pair.a.ns,
            undo,
        }
    }
}

/// An established connection across veth (server in `a`, client in `b`); the client writes
/// 1 KiB while `loss` lasts 1.5 s, then waits until it is acknowledged. The agent's
/// retransmits of each role must equal the kernel's `TcpRetransSegs` delta of that role's
/// namespace (and the client's `TCP_INFO` total_retrans).
fn retransmits_match_the_kernel(loss: Loss, cli: &str, srv: &str) {
    const SIZE: u64 = 1024;
    let _serial = serial();
    let pair = VethPair::new();
    let agent = Agent::start(&[]);
    let server_ip = pair.a.v4.to_string();
    let mut server = Script::server(srv)
        .named()
        .in_netns(&pair.a.ns)
        .opt("--bind", &server_ip)
        .opt("--mode", "drain")
        .spawn();
    let port = listening_port(&mut server);
    let mut client = faults(cli)
        .in_netns(&pair.b.ns)
        .opt("--mode", "cue-write")
        .opt("--host", &server_ip)
        .opt("--port", port)
        .opt("--size", SIZE)
        .opt("--timeout", 20)
        .spawn();
    let connected = client.expect_event("connected", STARTUP);
    assert_eq!(num(&connected, "total_retrans"), 0, "{connected}");
    let port_label = port.to_string();
    let as_client = edge(cli, srv, &port_label, "client");
    let as_server = edge(cli, srv, &port_label, "server");
    agent.wait_for(OPENED, &as_client, 1.0, SETTLE);
    agent.wait_for(OPENED, &as_server, 1.0, SETTLE);

    let before_b = kernel_counters(&pair.b.ns);
    let before_a = kernel_counters(&pair.a.ns);
    {
        let _loss = loss.start(&pair);
        client.send_line("write");
        let wrote = client.expect_event("wrote", STARTUP);
        assert_eq!(num(&wrote, "sent"), SIZE, "{wrote}");
        // RTO >= 200 ms: several retransmit attempts (and a tail loss probe) in 1.5 s.
        thread::sleep(Duration::from_millis(1500));
    }
    client.send_line("wait-acked");
    let acked = client.expect_event("acked", Duration::from_secs(30));
    let after_b = kernel_counters(&pair.b.ns);
    client.send_line("close");
    client.finish(RUN);
    let server = server.finish(RUN);
    assert_eq!(num(&server, "received"), SIZE, "{server}");
    let after_a = kernel_counters(&pair.a.ns);

    let client_retrans = delta(&before_b, &after_b, "Tcp:RetransSegs");
    let server_retrans = delta(&before_a, &after_a, "Tcp:RetransSegs");
    let skipped = delta(&before_b, &after_b, "TcpExt:TCPSpuriousRtxHostQueues");
    eprintln!(
        "{loss:?}: kernel: {client_retrans} retransmits in the client namespace ({skipped} \
         skipped while queued in the host), {server_retrans} in the server namespace; \
         TCP_INFO total_retrans {}",
        num(&acked, "total_retrans")
    );
    assert_eq!(
        num(&acked, "total_retrans"),
        client_retrans,
        "the client's socket is the only one retransmitting in its namespace"
    );
    match loss {
        Loss::ServerAcksBlackholed => assert!(
            client_retrans >= 1,
            "no retransmit while the server's ACKs were dropped for 1.5 s"
        ),
        Loss::ServerLinkDown => assert!(
            skipped >= 1,
            "no retransmit was skipped while the link was down for 1.5 s"
        ),
    }

    agent.wait_for(CLOSED, &as_client, 1.0, SETTLE);
    agent.wait_for(CLOSED, &as_server, 1.0, SETTLE);
    agent.wait_for(RETRANSMITS, &as_client, client_retrans as f64, SETTLE);
    thread::sleep(Duration::from_secs(1));
    let by_client = [("client", cli)];
    agent.metrics().assert_values(&[
        (RETRANSMITS, &as_client, client_retrans as f64),
        (RETRANSMITS, &as_server, server_retrans as f64),
        (
            RETRANSMITS,
            &by_client,
            (client_retrans + server_retrans) as f64,
        ),
        (SENT, &as_client, SIZE as f64),
        (RECEIVED, &as_server, SIZE as f64),
        (FAILED, &by_client, 0.0),
    ]);
}

#[test]
fn retransmits_on_an_established_connection_match_the_kernel() {
    retransmits_match_the_kernel(
        Loss::ServerAcksBlackholed,
        "mt-cli-retrans",
        "mt-srv-retrans",
    );
}

#[test]
fn retransmits_skipped_by_the_kernel_are_not_counted() {
    retransmits_match_the_kernel(Loss::ServerLinkDown, "mt-cli-rtx-skip", "mt-srv-rtx-skip");
}

/// A child process with its output in a file; killed (SIGKILL) and reaped on drop.
struct Spawned {
    child: Child,
    log: PathBuf,
    reaped: bool,
}

impl Spawned {
    fn spawn(mut cmd: Command, what: &str) -> Self {
        let log =
            std::env::temp_dir().join(format!("meshtap-test-{}-{what}.log", std::process::id()));
        let file = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = file.try_clone().expect("clone log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Self {
            child,
            log,
            reaped: false,
        }
    }

    fn output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().expect("waitpid");
        self.reaped |= status.is_some();
        status
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.reaped {
            send_signal(self.child.id(), libc::SIGKILL);
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- output of pid {} ---\n{}",
                self.child.id(),
                self.output()
            );
        }
        let _ = fs::remove_file(&self.log);
    }
}

/// A copy of the agent binary that any user may run (the original may sit in a directory
/// that user 65534 cannot enter); removed on drop.
struct PublicCopy(PathBuf);

impl Drop for PublicCopy {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn public_copy() -> PublicCopy {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("meshtap-test-{}-bin", std::process::id()));
    fs::copy(binary(), &path).unwrap_or_else(|e| panic!("copy {}: {e}", binary().display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod the copy");
    PublicCopy(path)
}

#[test]
fn without_privileges_the_agent_says_what_it_needs() {
    let _serial = serial();
    let bin = public_copy();
    let port = free_port();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(&bin.0)
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .current_dir("/");
    let out = {
        let mut child = Spawned::spawn(cmd, "nopriv");
        let status = child.wait_timeout(Duration::from_secs(30));
        (status, child.output())
    };
    let (status, output) = out;
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    let lower = output.to_lowercase();
    assert!(
        status.is_some_and(|s| !s.success())
            && lines.len() == 1
            && lower.contains("privileges")
            && (output.contains("root") || output.contains("CAP_BPF")),
        "as user 65534 without capabilities: want a non-zero exit and one line about missing \
         privileges naming root or CAP_BPF; got {} and:\n{output}",
        status.map_or_else(|| "still running after 30 s".to_owned(), |s| s.to_string())
    );
}

#[test]
fn missing_btf_is_named() {
    let path = "/nonexistent/vmlinux";
    let exited = Agent::run_to_exit(&["--btf", path], Duration::from_secs(30));
    let lines = exited.stderr_lines();
    assert!(
        exited.status.is_some_and(|s| !s.success())
            && lines.len() == 1
            && lines[0].contains(path)
            && lines[0].contains("--btf"),
        "--btf {path}: want a non-zero exit and one line naming the file and --btf; got {:?} \
         and:\n{}",
        exited.status,
        exited.stderr
    );
}

fn has_tracefs(mounts: &str) -> bool {
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("tracefs"))
}

#[test]
fn the_agent_mounts_tracefs_itself() {
    let _serial = serial();
    let host_mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // A private mount namespace without tracefs (unshare and sh exec: the child's pid is the
    // agent's). The shell refuses to start the agent if tracefs is still mounted anywhere.
    let script = r#"
        umount /sys/kernel/tracing 2>/dev/null
        umount /sys/kernel/debug/tracing 2>/dev/null
        if grep -q ' tracefs ' /proc/self/mounts || mountpoint -q /sys/kernel/tracing; then
            echo "tracefs is still mounted in the private mount namespace" >&2
            exit 97
        fi
        exec "$0" --listen "$1"
    "#;
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", script])
        .arg(binary())
        .arg(addr.to_string());
    let mut agent = Spawned::spawn(cmd, "no-tracefs");
    let pid = agent.child.id();

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = agent.try_wait() {
            panic!(
                "the agent without tracefs exited ({status}) before /readyz answered 200:\n{}",
                agent.output()
            );
        }
        if http::get(addr, "/readyz", Duration::from_secs(5)).is_ok_and(|r| r.status == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent without tracefs is not ready after {READY_TIMEOUT:?}:\n{}",
            agent.output()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let agent_mounts =
        fs::read_to_string(format!("/proc/{pid}/mounts")).expect("read the agent's mounts");
    assert!(
        has_tracefs(&agent_mounts),
        "the ready agent has no tracefs mounted in its mount namespace:\n{agent_mounts}"
    );
    // The mount stayed in the agent's namespace.
    let now = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    assert_eq!(has_tracefs(&now), has_tracefs(&host_mounts));

    send_signal(pid, libc::SIGTERM);
    let status = agent.wait_timeout(SHUTDOWN_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent ended with {status:?} after SIGTERM:\n{}",
        agent.output()
    );
}
