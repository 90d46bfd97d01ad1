//! PostgreSQL: a real PostgreSQL 15 (Debian's `postgresql`) in a temporary directory, driven by
//! its own clients (`pgbench` in the simple, extended and prepared modes, `psql` scripts with
//! errors), counted exactly on both the client series (the client program) and the server
//! series (the postgres backends, named by `--service-port`), and one span through the
//! agent's Zipkin API.
//!
//! One server and one agent for the whole binary: the scenarios run in order in one test, each
//! checking the cumulative counts.

use meshtap_tests::db::{Postgres, TIMEOUT, run};
use meshtap_tests::spans::{describe, kind, tag, text};
use meshtap_tests::zipkin::api;
use meshtap_tests::{Agent, Metrics, SETTLE, serial};
use serde_json::Value;

const SERVER: &str = "pgtest";
const CLIENT: &str = "db_client_operation_duration_seconds_count";
const SERVER_SERIES: &str = "db_server_operation_duration_seconds_count";
const EXCHANGES: &str = "meshtap_exchanges_total";

/// Expected counts of one side: `(operation, collection, error_type) -> count`.
type Counts = Vec<(&'static str, &'static str, &'static str, f64)>;

fn add(counts: &mut Counts, op: &'static str, table: &'static str, error: &'static str, n: f64) {
    match counts
        .iter_mut()
        .find(|(o, t, e, _)| (*o, *t, *e) == (op, table, error))
    {
        Some(c) => c.3 += n,
        None => counts.push((op, table, error, n)),
    }
}

/// The seven statements of pgbench's built-in TPC-B-like script, `n` times.
fn pgbench(counts: &mut Counts, n: f64) {
    for (op, table) in [
        ("BEGIN", ""),
        ("UPDATE", "pgbench_accounts"),
        ("SELECT", "pgbench_accounts"),
        ("UPDATE", "pgbench_tellers"),
        ("UPDATE", "pgbench_branches"),
        ("INSERT", "pgbench_history"),
        ("END", ""),
    ] {
        add(counts, op, table, "", n);
    }
}

/// What a `pgbench -n` run asks before its transactions, on its own connection: the scale
/// (`select count(*) from pgbench_branches`) and whether pgbench_accounts is partitioned
/// (`select ... from pg_catalog.pg_class as c join ...`: the table before the alias).
fn pgbench_setup(counts: &mut Counts) {
    add(counts, "SELECT", "pgbench_branches", "", 1.0);
    add(counts, "SELECT", "pg_catalog.pg_class", "", 1.0);
}

/// Every series of `family` for the server `port` (and `service`, if given) equals `want`, and
/// no other series exists.
fn matches(m: &Metrics, family: &str, service: &str, port: &str, want: &Counts) -> bool {
    let total: f64 = want.iter().map(|c| c.3).sum();
    let base = [
        ("service_name", service),
        ("server_port", port),
        ("db_system_name", "postgresql"),
    ];
    m.value(family, &base) == total
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

fn wait_counts(agent: &Agent, port: &str, clients: &[(&str, &Counts)], server: &Counts) {
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
        },
        |m| {
            format!(
                "expected clients {clients:?}\nserver {server:?}\nexchanges {exchanges}\n{}\n{}\n{}\n{}",
                m.describe(CLIENT),
                m.describe(SERVER_SERIES),
                m.describe(EXCHANGES),
                m.describe("meshtap_parse_errors_total"),
            )
        },
    );
}

#[test]
fn pgbench_and_psql_counted_exactly_on_both_sides() {
    let _serial = serial();
    let pg = Postgres::start();
    let port = pg.port.to_string();
    // The tables, before the agent watches.
    run(pg.client("pgbench").args(["-i", "-s", "1", "-q"]));
    let service_port = format!("{port}={SERVER}");
    let agent = Agent::start(&["--service-port", &service_port]);

    let mut bench = Counts::new();
    let mut server = Counts::new();

    // Simple query protocol.
    run(pg
        .client("pgbench")
        .args(["-n", "-t", "20", "-c", "1", "-M", "simple"]));
    pgbench_setup(&mut bench);
    pgbench(&mut bench, 20.0);
    pgbench_setup(&mut server);
    pgbench(&mut server, 20.0);
    wait_counts(&agent, &port, &[("pgbench", &bench)], &server);

    // Extended protocol: unnamed statements, then named prepared ones.
    for mode in ["extended", "prepared"] {
        run(pg
            .client("pgbench")
            .args(["-n", "-t", "10", "-c", "1", "-M", mode]));
        for c in [&mut bench, &mut server] {
            pgbench_setup(c);
            pgbench(c, 10.0);
        }
    }
    wait_counts(&agent, &port, &[("pgbench", &bench)], &server);

    // psql: a script with errors (each statement its own Q), then several statements in one
    // Q that stops at its error.
    let script = pg.file("errors.sql");
    std::fs::write(
        &script,
        "SELECT count(*) FROM pgbench_branches;\n\
         SELECT * FROM nope;\n\
         SELECT 1/0;\n\
         INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 5);\n",
    )
    .expect("write the psql script");
    run(pg.client("psql").args(["-X", "-q", "-f", &script]));
    // psql exits 1 when a statement of `-c` fails: that failure is the point here.
    let out = meshtap_tests::process::run_command(
        pg.client("psql")
            .args(["-X", "-q", "-c", "SELECT 1; SELECT * FROM nope; SELECT 2"])
            .env("PGAPPNAME", "multi"),
        TIMEOUT,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "psql -c with a failing statement: {}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("relation \"nope\" does not exist"),
        "{}",
        out.stderr
    );
    let mut psql = Counts::new();
    for c in [&mut psql, &mut server] {
        add(c, "SELECT", "pgbench_branches", "", 1.0);
        add(c, "SELECT", "nope", "42P01", 2.0);
        add(c, "SELECT", "", "22012", 1.0);
        add(c, "INSERT", "pgbench_history", "", 1.0);
        add(c, "SELECT", "", "", 1.0);
    }
    wait_counts(
        &agent,
        &port,
        &[("pgbench", &bench), ("psql", &psql)],
        &server,
    );

    // A span: pgbench's SELECT on pgbench_accounts, its literal replaced.
    let traces = api(&agent, "/api/v2/traces?serviceName=pgbench&limit=1000");
    let spans: Vec<Value> = traces
        .as_array()
        .expect("traces")
        .iter()
        .flat_map(|t| t.as_array().expect("trace").clone())
        .collect();
    let selects: Vec<&Value> = spans
        .iter()
        .filter(|s| kind(s) == "CLIENT" && text(s, "name") == "select pgbench_accounts")
        .chain(
            spans
                .iter()
                .filter(|s| kind(s) == "CLIENT" && text(s, "name") == "SELECT pgbench_accounts"),
        )
        .collect();
    assert_eq!(selects.len(), 40, "{}", describe(&spans));
    for s in selects {
        assert_eq!(tag(s, "db.system.name"), Some("postgresql"));
        assert_eq!(tag(s, "db.namespace"), Some("postgres"));
        assert_eq!(tag(s, "db.collection.name"), Some("pgbench_accounts"));
        // Simple mode: one statement of the `Q` split at its `;`; extended: the Parse's text.
        let q = tag(s, "db.query.text").unwrap_or_default();
        assert!(
            q == "SELECT abalance FROM pgbench_accounts WHERE aid = ?"
                || q == "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "query text {q:?}"
        );
    }
}
