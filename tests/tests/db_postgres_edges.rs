//! PostgreSQL at the edges of what the wire shows: a connection the agent finds mid-stream
//! (open before it started) and connections upgraded to TLS. One real PostgreSQL 15 server
//! with `ssl=on` (a self-signed certificate), one agent, the scenarios in order in one test,
//! each checking the cumulative counts.
//!
//! What the parser does mid-stream (`agent/src/protocol/postgres/mod.rs`): detection accepts a
//! connection whose first client bytes are a typed `Q` or `P` message (sane length, text after
//! it) instead of a startup packet. The server's direction then starts "lost": nothing is paired
//! until a server syscall starts with a chain of plausible messages (known type, sane length),
//! and an answer with no request queued is dropped, never invented. On an idle connection found
//! by the agent, the client's next `Q` is its first byte seen and the server's whole answer
//! (`RowDescription`, `DataRow`s, `CommandComplete`, `ReadyForQuery`, one write) resynchronises
//! at once: every simple query sent after the agent is ready is one exchange per side, with its
//! verb and table, as on a connection seen from its start. Only `db.namespace` is unknown (the
//! startup packet went by before the agent), and the connection counts no
//! `meshtap_tcp_connections_opened_total` (it was opened before).
//!
//! TLS: a client with `sslmode=require` sends an `SSLRequest`, the server answers `S`, and the
//! rest is TLS. The parser of each side stops at the `S` with one parse error `tls`: exactly one
//! per side per connection, so two per connection here (client and server both on this node),
//! and no exchange. The L4 layer still counts those connections and their bytes: compared with
//! the kernel's own counts (`ss -ti`) on a TLS connection held open. A TLS connection found
//! mid-stream (pg8000's default: TLS when the server offers it) shows only TLS records, which no
//! protocol detects and nothing marks as PostgreSQL: no exchange and no parse error either.
//!
//! Scenarios, in order: pg8000 sessions opened before the agent (plain and TLS), one after it,
//! psql with `sslmode=require` (two runs, then one held open) and `sslmode=disable`, then one
//! psycopg 3 pipeline of server-side prepared statements with a failure in its middle. Every
//! series of every client and of the server (`--service-port`) is checked exactly, as are
//! `meshtap_exchanges_total` and `meshtap_parse_errors_total` for `postgresql`.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use meshtap_tests::db::{PG_BIN, Postgres, TIMEOUT, run};
use meshtap_tests::process::{Script, ScriptChild};
use meshtap_tests::{Agent, Metrics, SETTLE, serial};

const SERVER: &str = "pgedge";
const CLIENT: &str = "db_client_operation_duration_seconds_count";
const SERVER_SERIES: &str = "db_server_operation_duration_seconds_count";
const EXCHANGES: &str = "meshtap_exchanges_total";
const PARSE_ERRORS: &str = "meshtap_parse_errors_total";
const OPENED: &str = "meshtap_tcp_connections_opened_total";
const CLOSED: &str = "meshtap_tcp_connections_closed_total";
const SENT: &str = "meshtap_tcp_sent_bytes_total";
const RECEIVED: &str = "meshtap_tcp_received_bytes_total";

/// The statements each pg8000 session runs after the agent is ready, one `Q` each:
/// `(text, operation, table)`.
const SESSION: [(&str, &str, &str); 5] = [
    ("SELECT count(*) FROM edges", "SELECT", "edges"),
    ("INSERT INTO edges VALUES (1)", "INSERT", "edges"),
    ("SELECT count(*) FROM edges", "SELECT", "edges"),
    ("UPDATE edges SET id = 2", "UPDATE", "edges"),
    ("SELECT count(*) FROM edges", "SELECT", "edges"),
];

/// The statements of each psql run (one `-c` each, one `Q` each); the last says whether the
/// connection is TLS.
const PSQL: [&str; 3] = [
    "SELECT count(*) FROM edges",
    "SELECT count(*) FROM edges",
    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
];

/// Expected counts of one side: `(operation, collection, error_type) -> count`.
type Counts = Vec<(&'static str, &'static str, &'static str, f64)>;

fn add(counts: &mut Counts, op: &'static str, table: &'static str, n: f64) {
    match counts
        .iter_mut()
        .find(|(o, t, e, _)| (*o, *t, *e) == (op, table, ""))
    {
        Some(c) => c.3 += n,
        None => counts.push((op, table, "", n)),
    }
}

fn session_counts(counts: &mut Counts) {
    for (_, op, table) in SESSION {
        add(counts, op, table, 1.0);
    }
}

fn psql_counts(counts: &mut Counts) {
    add(counts, "SELECT", "edges", 2.0);
    add(counts, "SELECT", "pg_stat_ssl", 1.0);
}

/// Every series of `family` for the server `port` and `service` equals `want`, and no other
/// series exists (an empty `want`: no series at all).
fn matches(m: &Metrics, family: &str, service: &str, port: &str, want: &Counts) -> bool {
    let total: f64 = want.iter().map(|c| c.3).sum();
    let base = [
        ("service_name", service),
        ("server_port", port),
        ("db_system_name", "postgresql"),
    ];
    m.value(family, &base) == total
        && m.value(family, &[("service_name", service)]) == total
        && want.iter().all(|(op, table, error, n)| {
            let mut labels = base.to_vec();
            labels.extend([
                ("db_operation_name", *op),
                ("db_collection_name", *table),
                ("error_type", *error),
            ]);
            m.value(family, &labels) == *n
        })
}

/// Waits until the client series of each `(service, counts)` and the server series equal
/// their expectations exactly, `meshtap_exchanges_total` is their sum, and the PostgreSQL
/// parse errors are exactly `tls` of reason `tls`.
fn wait_counts(agent: &Agent, port: &str, clients: &[(&str, &Counts)], server: &Counts, tls: f64) {
    let exchanges: f64 = clients
        .iter()
        .flat_map(|(_, c)| c.iter())
        .chain(server.iter())
        .map(|c| c.3)
        .sum();
    agent.wait_until(
        SETTLE,
        |m| {
            clients
                .iter()
                .all(|(svc, c)| matches(m, CLIENT, svc, port, c))
                && matches(m, SERVER_SERIES, SERVER, port, server)
                && m.value(EXCHANGES, &[("protocol", "postgresql")]) == exchanges
                && m.value(PARSE_ERRORS, &[("protocol", "postgresql")]) == tls
                && m.value(PARSE_ERRORS, &[("protocol", "postgresql"), ("reason", "tls")]) == tls
        },
        |m| {
            format!(
                "expected clients {clients:?}\nserver {server:?}\nexchanges {exchanges}\ntls {tls}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
                m.describe(CLIENT),
                m.describe(SERVER_SERIES),
                m.describe(EXCHANGES),
                m.describe(PARSE_ERRORS),
                m.describe("meshtap_protocol_detected_total"),
                m.describe(SENT),
                m.describe(RECEIVED),
                m.describe(OPENED),
            )
        },
    );
}

/// A pg8000 session named `name` (its `OTEL_SERVICE_NAME`), connected in plain text or TLS
/// (its `SELECT ... FROM pg_stat_ssl` says which).
fn session(name: &str, port: u16, tls: bool) -> ScriptChild {
    let mut script = Script::new("pg_session.py", name)
        .named()
        .opt("--port", port);
    if tls {
        script = script.arg("--tls");
    }
    let mut s = script.spawn();
    let connected = s.expect_event("connected", TIMEOUT);
    assert_eq!(connected["tls"], tls, "{name}: {connected}");
    s
}

/// Runs [`SESSION`] on `s`, one statement at a time, then closes it.
fn run_session(mut s: ScriptChild) {
    for (sql, _, _) in SESSION {
        s.send_line(sql);
        s.expect_event("ran", TIMEOUT);
    }
    s.send_line("");
    let done = s.finish(TIMEOUT);
    assert_eq!(done["queries"], SESSION.len(), "{done}");
}

/// One psql run of [`PSQL`] named `name`, with `sslmode`; asserts that the connection was TLS
/// or not as asked.
fn psql(pg: &Postgres, name: &str, sslmode: &str) {
    let conninfo = format!(
        "sslmode={sslmode} gssencmode=disable host=127.0.0.1 port={} user=postgres dbname=postgres",
        pg.port
    );
    let mut cmd = psql_named(pg, name);
    cmd.args(["-X", "-q", "-t", "-A", "-d", &conninfo]);
    for q in PSQL {
        cmd.args(["-c", q]);
    }
    let out = run(&mut cmd);
    let ssl = out.lines().last().unwrap_or_default();
    let want = if sslmode == "disable" { "f" } else { "t" };
    assert_eq!(ssl, want, "psql {sslmode}: pg_stat_ssl.ssl; output:\n{out}");
}

/// psql run as `name`: its executable's name (a symbolic link, so that the process's `comm` is
/// `name`: a process that exits at once may be gone before the agent reads its environment,
/// and with it `OTEL_SERVICE_NAME`) and its `OTEL_SERVICE_NAME`.
fn psql_named(pg: &Postgres, name: &str) -> Command {
    let link = pg.file(name);
    if !std::path::Path::new(&link).exists() {
        std::os::unix::fs::symlink(format!("{PG_BIN}/psql"), &link).expect("link psql");
    }
    let mut cmd = Command::new(&link);
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", pg.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "postgres")
        .env("OTEL_SERVICE_NAME", name);
    cmd
}

/// An L4 series of the psql edge `client` → the server, on one side.
fn edge(m: &Metrics, family: &str, client: &str, port: &str, role: &str) -> f64 {
    m.value(
        family,
        &[("client", client), ("server_port", port), ("role", role)],
    )
}

#[test]
fn midstream_and_tls_connections_invent_nothing() {
    let _serial = serial();
    let pg = Postgres::start_tls();
    let port = pg.port.to_string();
    run(pg
        .client("psql")
        .args(["-X", "-q", "-c", "CREATE TABLE edges (id int)"]));
    run(pg
        .client("psql")
        .args(["-X", "-q", "-c", "CREATE TABLE pipe (v int)"]));

    // Open and idle before the agent starts: one in plain text, one in TLS.
    let early = session("pge-early", pg.port, false);
    let early_tls = session("pge-early-tls", pg.port, true);
    let service_port = format!("{port}={SERVER}");
    // TLS plaintext off: this is the agent on a node where the TLS libraries are not probed
    // (tests/tests/tls.rs has the same TLS connections parsed from their plaintext).
    let agent = Agent::start(&["--service-port", &service_port, "--tls-plaintext", "false"]);

    let mut early_counts = Counts::new();
    let mut server = Counts::new();
    let empty = Counts::new();

    // Mid-stream: every query sent after the agent is ready, and nothing else.
    run_session(early);
    session_counts(&mut early_counts);
    session_counts(&mut server);
    wait_counts(&agent, &port, &[("pge-early", &early_counts)], &server, 0.0);

    // Mid-stream in TLS: its first bytes seen are TLS records, which no protocol detects (and
    // nothing in them says PostgreSQL): no operation, no parse error, only L4 counts. The client
    // sends its Terminate and closes without a TLS close_notify; the server answers the
    // Terminate with its close_notify (a TLS 1.3 alert record: 24 bytes), which the client never
    // reads.
    run_session(early_tls);
    wait_counts(
        &agent,
        &port,
        &[("pge-early", &early_counts), ("pge-early-tls", &empty)],
        &server,
        0.0,
    );
    let m = agent.wait_until(
        SETTLE,
        |m| {
            ["client", "server"]
                .iter()
                .all(|role| edge(m, CLOSED, "pge-early-tls", &port, role) == 1.0)
        },
        |m| m.describe(CLOSED),
    );
    let client_sent = edge(&m, SENT, "pge-early-tls", &port, "client");
    let server_sent = edge(&m, SENT, "pge-early-tls", &port, "server");
    assert!(
        client_sent > 0.0
            && edge(&m, RECEIVED, "pge-early-tls", &port, "server") == client_sent
            && edge(&m, RECEIVED, "pge-early-tls", &port, "client") == server_sent - 24.0,
        "{}\n{}",
        m.describe(SENT),
        m.describe(RECEIVED)
    );

    // A session started after the agent, on the same server: the same counts.
    let mut late_counts = Counts::new();
    run_session(session("pge-late", pg.port, false));
    session_counts(&mut late_counts);
    // Its question whether the connection is TLS, after the agent started too.
    add(&mut late_counts, "SELECT", "pg_stat_ssl", 1.0);
    add(&mut server, "SELECT", "pg_stat_ssl", 1.0);
    session_counts(&mut server);
    wait_counts(
        &agent,
        &port,
        &[
            ("pge-early", &early_counts),
            ("pge-early-tls", &empty),
            ("pge-late", &late_counts),
        ],
        &server,
        0.0,
    );

    // At L4, the early connection was opened before the agent: only its close is counted.
    agent.wait_until(
        SETTLE,
        |m| {
            ["client", "server"].iter().all(|role| {
                edge(m, OPENED, "pge-early", &port, role) == 0.0
                    && edge(m, CLOSED, "pge-early", &port, role) == 1.0
                    && edge(m, OPENED, "pge-late", &port, role) == 1.0
                    && edge(m, CLOSED, "pge-late", &port, role) == 1.0
            })
        },
        |m| format!("{}\n{}", m.describe(OPENED), m.describe(CLOSED)),
    );

    // TLS: two psql runs, each one connection: no operation, one `tls` parse error per side.
    const TLS_RUNS: f64 = 2.0;
    psql(&pg, "pge-tls", "require");
    psql(&pg, "pge-tls", "require");
    // Plain text on the same server, counted as usual.
    let mut plain = Counts::new();
    psql(&pg, "pge-plain", "disable");
    psql_counts(&mut plain);
    psql_counts(&mut server);
    wait_counts(
        &agent,
        &port,
        &[
            ("pge-early", &early_counts),
            ("pge-early-tls", &empty),
            ("pge-late", &late_counts),
            ("pge-tls", &empty),
            ("pge-plain", &plain),
        ],
        &server,
        2.0 * TLS_RUNS,
    );

    // The TLS connections at L4: each opened and closed once on both sides.
    agent.wait_until(
        SETTLE,
        |m| {
            ["client", "server"].iter().all(|role| {
                edge(m, OPENED, "pge-tls", &port, role) == TLS_RUNS
                    && edge(m, CLOSED, "pge-tls", &port, role) == TLS_RUNS
            })
        },
        |m| format!("{}\n{}", m.describe(OPENED), m.describe(CLOSED)),
    );

    // One more TLS connection, held open (psql reading its script from a pipe): once idle,
    // the bytes the agent counted on each socket equal the kernel's (`ss -ti`: `bytes_sent`,
    // `bytes_received` of the client's and of the server's socket).
    let conninfo = format!(
        "sslmode=require gssencmode=disable host=127.0.0.1 port={port} user=postgres dbname=postgres"
    );
    let mut held = psql_named(&pg, "pge-tlsheld")
        .args(["-X", "-q", "-t", "-A", "-d", &conninfo])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    {
        let stdin = held.stdin.as_mut().expect("psql stdin");
        for q in PSQL {
            writeln!(stdin, "{q};").expect("write to psql");
        }
        writeln!(stdin, "\\echo done").expect("write to psql");
        stdin.flush().expect("flush psql stdin");
    }
    // Its answers printed: the connection is idle from here on.
    let mut lines = BufReader::new(held.stdout.take().expect("psql stdout")).lines();
    let answers: Vec<String> = lines
        .by_ref()
        .map(|l| l.expect("read psql output"))
        .take_while(|l| l != "done")
        .collect();
    assert_eq!(answers.last().map(String::as_str), Some("t"), "{answers:?}");
    let kernel = RefCell::new((Vec::new(), Vec::new()));
    let m = agent.wait_until(
        SETTLE,
        |m| {
            let k = (sockets("dport", &port), sockets("sport", &port));
            *kernel.borrow_mut() = k.clone();
            let [(client_sent, client_received)] = k.0[..] else {
                return false;
            };
            let [(server_sent, server_received)] = k.1[..] else {
                return false;
            };
            client_sent > 0.0
                && server_sent > 0.0
                && edge(m, SENT, "pge-tlsheld", &port, "client") == client_sent
                && edge(m, RECEIVED, "pge-tlsheld", &port, "client") == client_received
                && edge(m, SENT, "pge-tlsheld", &port, "server") == server_sent
                && edge(m, RECEIVED, "pge-tlsheld", &port, "server") == server_received
        },
        |m| {
            let k = kernel.borrow();
            format!(
                "kernel (sent, received): client {:?} server {:?}\n{}\n{}",
                k.0,
                k.1,
                m.describe(SENT),
                m.describe(RECEIVED)
            )
        },
    );
    eprintln!(
        "held TLS connection, kernel (sent, received): client {:?} server {:?}",
        kernel.borrow().0,
        kernel.borrow().1
    );
    assert_eq!(edge(&m, OPENED, "pge-tlsheld", &port, "client"), 1.0);
    drop(held.stdin.take());
    let status = held.wait().expect("wait for psql");
    assert!(status.success(), "psql (held TLS connection): {status}");
    wait_counts(
        &agent,
        &port,
        &[
            ("pge-early", &early_counts),
            ("pge-early-tls", &empty),
            ("pge-late", &late_counts),
            ("pge-tls", &empty),
            ("pge-tlsheld", &empty),
            ("pge-plain", &plain),
        ],
        &server,
        2.0 * (TLS_RUNS + 1.0),
    );

    // Server-side prepared statements in one psycopg 3 pipeline with a failure in its middle
    // (`tests/scripts/pg_pipeline.py`, what it sends is described there): every `Execute` is
    // one exchange, named after its `Bind`'s prepared statement. Those after the failing one
    // were sent but skipped by the server until the `Sync`: no answer, so `no response` on the
    // client, and not a failure of the server.
    // K small enough that every read and write of the pipeline fits the default 1024-byte
    // capture (with 10, the client's one read of all the answers is 1037 bytes: its last
    // `ReadyForQuery` header goes uncaptured, a `header_not_captured` parse error).
    const K: usize = 5;
    let done = Script::new("pg_pipeline.py", "pge-pipeline")
        .named()
        .opt("--port", pg.port)
        .opt("--count", K)
        .run(TIMEOUT);
    // The error rolled the pipeline's implicit transaction back: no row.
    assert_eq!(done["error"], "42P01", "{done}");
    assert_eq!(done["rows"], 0, "{done}");
    let k = K as f64;
    let pipeline_counts = |skipped: &'static str| -> Counts {
        vec![
            ("INSERT", "pipe", "", k),
            // K in the pipeline, then the `count(*)` after it.
            ("SELECT", "pipe", "", k + 1.0),
            // `SELECT pg_sleep(1)`: no table.
            ("SELECT", "", "", 1.0),
            ("SELECT", "missing_pipe", "42P01", 1.0),
            ("INSERT", "pipe", skipped, k),
        ]
    };
    for c in pipeline_counts("") {
        match server
            .iter_mut()
            .find(|(o, t, e, _)| (*o, *t, *e) == (c.0, c.1, c.2))
        {
            Some(s) => s.3 += c.3,
            None => server.push(c),
        }
    }
    wait_counts(
        &agent,
        &port,
        &[
            ("pge-early", &early_counts),
            ("pge-early-tls", &empty),
            ("pge-late", &late_counts),
            ("pge-tls", &empty),
            ("pge-tlsheld", &empty),
            ("pge-plain", &plain),
            ("pge-pipeline", &pipeline_counts("no response")),
        ],
        &server,
        2.0 * (TLS_RUNS + 1.0),
    );
}

/// `(bytes_sent, bytes_received)` of each established TCP socket on 127.0.0.1 whose `key`
/// (`sport` or `dport`) is `port`, as the kernel counts them (`ss -ti`).
fn sockets(key: &str, port: &str) -> Vec<(f64, f64)> {
    let filter = format!("( {key} = :{port} )");
    let out = run(Command::new("ss").args(["-tinH", "state", "established", &filter]));
    let field = |text: &str, name: &str| -> f64 {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    // One socket per two lines: the addresses, then the `-i` details.
    out.lines()
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|c| {
            let details = c.get(1).copied().unwrap_or_default();
            (
                field(details, "bytes_sent:"),
                field(details, "bytes_received:"),
            )
        })
        .collect()
}
