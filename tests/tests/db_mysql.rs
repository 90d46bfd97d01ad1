//! MySQL/MariaDB, end to end: the real agent binary and kernel, a real MariaDB 10.11 server
//! (Debian's `mariadb-server`, in a temporary directory, on loopback) and real client libraries:
//! PyMySQL (text protocol) and mysql-connector-python (server-side prepared statements).
//!
//! Every number asserted is what the clients did, known independently of the agent. Both ends
//! of every connection are on this node, so each exchange is counted once on the client series
//! (named by the scripts' `OTEL_SERVICE_NAME`) and once on the server series (the server named
//! by `--service-port PORT=mt-mariadb`).

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use meshtap_tests::metrics::{EXCHANGES, PARSE_ERRORS, count};
use meshtap_tests::process::run_command;
use meshtap_tests::spans::{service, tag, text};
use meshtap_tests::zipkin::api;
use meshtap_tests::{Agent, Metrics, Script, TempDir, free_port, serial};
use serde_json::Value;

const CLIENT: &str = "db_client_operation_duration_seconds";
const SERVER: &str = "db_server_operation_duration_seconds";
const RUN: Duration = Duration::from_secs(120);
const STARTUP: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(20);

const TEXT_CLIENT: &str = "mt-mysql-text";
const PREPARED_CLIENT: &str = "mt-mysql-prep";
const SERVER_NAME: &str = "mt-mariadb";

/// A MariaDB server in a temporary directory, on 127.0.0.1:`port`, without grant tables (any
/// user, no password). Stopped (SIGTERM, then SIGKILL) on drop.
struct MariaDb {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl MariaDb {
    fn start() -> Self {
        let dir = TempDir::new("mariadb");
        let data = dir.file("data");
        let out = run_command(
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={data}"))
                .arg("--user=root")
                .arg("--auth-root-authentication-method=normal"),
            STARTUP,
        );
        assert!(
            out.status.success(),
            "mariadb-install-db (package mariadb-server): {}{}",
            out.stdout,
            out.stderr
        );
        let port = free_port();
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={data}"))
            .arg(format!("--socket={}", dir.file("sock")))
            .arg(format!("--pid-file={}", dir.file("pid")))
            .arg(format!("--log-error={}", dir.file("error.log")))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--user=root")
            .arg("--skip-grant-tables")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn mariadbd: {e}"));
        let server = MariaDb { child, port, dir };
        let deadline = Instant::now() + STARTUP;
        while !server.sql("SELECT 1").status.success() {
            assert!(
                Instant::now() < deadline,
                "mariadbd not ready within {STARTUP:?}: {}",
                std::fs::read_to_string(server.dir.path().join("error.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(200));
        }
        server
    }

    /// Runs `sql` with the `mariadb` CLI over the Unix socket (not TCP: the agent sees none of
    /// it).
    fn sql(&self, sql: &str) -> meshtap_tests::process::CommandOutput {
        run_command(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.dir.file("sock")))
                .arg("-uroot")
                .arg("-e")
                .arg(sql),
            Duration::from_secs(30),
        )
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        meshtap_tests::agent::send_signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn series(service: &str, op: &str, table: &str, error: &str) -> Vec<(String, String)> {
    [
        ("service_name", service),
        ("db_system_name", "mariadb"),
        ("db_operation_name", op),
        ("db_collection_name", table),
        ("error_type", error),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

fn value(m: &Metrics, name: &str, labels: &[(String, String)]) -> f64 {
    let borrowed: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    m.value(name, &borrowed)
}

type Check = (String, Vec<(String, String)>, f64);

fn mismatches(m: &Metrics, checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|(name, labels, want)| value(m, name, labels) != *want)
        .map(|(name, labels, want)| {
            format!(
                "{name}{labels:?} = {}, expected {want}",
                value(m, name, labels)
            )
        })
        .collect()
}

fn report(m: &Metrics, checks: &[Check]) -> String {
    format!(
        "{}\nclient series:\n{}\nserver series:\n{}\nexchanges:\n{}\nparse errors:\n{}\nlost:\n{}",
        mismatches(m, checks).join("\n"),
        m.describe(&count(CLIENT)),
        m.describe(&count(SERVER)),
        m.describe(EXCHANGES),
        m.describe(PARSE_ERRORS),
        m.describe("meshtap_events_lost_total"),
    )
}

#[test]
fn mariadb_text_and_prepared_statements_exact() {
    let _serial = serial();
    let db = MariaDb::start();
    let setup = db.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.orders \
         (id INT PRIMARY KEY AUTO_INCREMENT, item VARCHAR(64), qty INT)",
    );
    assert!(setup.status.success(), "setup: {}", setup.stderr);
    let port = db.port;
    let agent = Agent::start(&[
        "--service-port",
        &format!("{port}={SERVER_NAME}"),
        "--trace-store-spans",
        "200000",
        "--trace-store-rate",
        "0",
    ]);

    const INSERTS: u64 = 7;
    const SELECTS: u64 = 5;
    const ERRORS: u64 = 3;
    const EXECUTES: u64 = 4;
    let done = Script::new("mysql_client.py", TEXT_CLIENT)
        .named()
        .opt("--port", port)
        .opt("--mode", "text")
        .opt("--inserts", INSERTS)
        .opt("--selects", SELECTS)
        .opt("--errors", ERRORS)
        .run(RUN);
    assert_eq!(done["errors"].as_u64(), Some(ERRORS), "{done}");
    let done = Script::new("mysql_client.py", PREPARED_CLIENT)
        .named()
        .opt("--port", port)
        .opt("--mode", "prepared")
        .opt("--executes", EXECUTES)
        .run(RUN);
    assert_eq!(done["rows"].as_u64(), Some(EXECUTES), "{done}");

    let c = CLIENT.to_owned() + "_count";
    let s = SERVER.to_owned() + "_count";
    let mut checks: Vec<Check> = Vec::new();
    // (operation, table, error type, text client, prepared client)
    let expected: [(&str, &str, &str, u64, u64); 7] = [
        ("INSERT", "orders", "", INSERTS, 0),
        ("SELECT", "orders", "", SELECTS, EXECUTES),
        ("SELECT", "nope", "1146", ERRORS, 0),
        ("SET", "", "", 1, 2),
        ("PING", "", "", 0, 1),
        ("PREPARE", "orders", "", 0, 1),
        ("STMT_RESET", "", "", 0, EXECUTES),
    ];
    let mut total = 0;
    for (op, table, error, text_n, prep_n) in expected {
        checks.push((
            c.clone(),
            series(TEXT_CLIENT, op, table, error),
            text_n as f64,
        ));
        checks.push((
            c.clone(),
            series(PREPARED_CLIENT, op, table, error),
            prep_n as f64,
        ));
        checks.push((
            s.clone(),
            series(SERVER_NAME, op, table, error),
            (text_n + prep_n) as f64,
        ));
        total += text_n + prep_n;
    }
    // Nothing else: no other operation, no failure besides the missing table.
    for (name, service) in [(&c, TEXT_CLIENT), (&c, PREPARED_CLIENT), (&s, SERVER_NAME)] {
        let all = vec![("service_name".to_owned(), service.to_owned())];
        let want = expected
            .iter()
            .map(|e| match service {
                TEXT_CLIENT => e.3,
                PREPARED_CLIENT => e.4,
                _ => e.3 + e.4,
            })
            .sum::<u64>();
        checks.push((name.clone(), all, want as f64));
    }
    // Each exchange is seen from both ends (both on this node).
    checks.push((
        EXCHANGES.to_owned(),
        vec![("protocol".to_owned(), "mysql".to_owned())],
        (2 * total) as f64,
    ));
    agent.wait_until(
        SETTLE,
        |m| mismatches(m, &checks).is_empty(),
        |m| report(m, &checks),
    );
    thread::sleep(Duration::from_millis(1500));
    let m = agent.metrics();
    assert!(
        mismatches(&m, &checks).is_empty(),
        "changed: {}",
        report(&m, &checks)
    );
    assert_eq!(
        m.value(PARSE_ERRORS, &[("protocol", "mysql")]),
        0.0,
        "{}",
        report(&m, &checks)
    );

    // Spans: the client's SELECT, named by operation and table, its text without literals.
    let spans = |service: &str| -> Vec<Value> {
        api(
            &agent,
            &format!("/api/v2/traces?serviceName={service}&limit=1000"),
        )
        .as_array()
        .expect("traces")
        .iter()
        .flat_map(|t| t.as_array().expect("trace").clone())
        .collect()
    };
    let text_spans = spans(TEXT_CLIENT);
    let select = text_spans
        .iter()
        .find(|s| {
            text(s, "name").eq_ignore_ascii_case("SELECT orders")
                && text(s, "kind") == "CLIENT"
                && service(s) == TEXT_CLIENT
        })
        .unwrap_or_else(|| panic!("no SELECT orders CLIENT span in {text_spans:?}"));
    assert_eq!(tag(select, "db.system.name"), Some("mariadb"), "{select}");
    assert_eq!(tag(select, "db.namespace"), Some("shop"), "{select}");
    assert_eq!(
        tag(select, "db.query.text"),
        Some("SELECT id, item FROM orders WHERE qty > ?"),
        "{select}"
    );
    let inserts: Vec<&Value> = text_spans
        .iter()
        .filter(|s| {
            text(s, "name").eq_ignore_ascii_case("INSERT orders")
                && text(s, "kind") == "CLIENT"
                && service(s) == TEXT_CLIENT
        })
        .collect();
    assert_eq!(inserts.len() as u64, INSERTS, "{text_spans:?}");
    for s in &inserts {
        assert_eq!(
            tag(s, "db.query.text"),
            Some("INSERT INTO orders (item, qty) VALUES (?, ?)"),
            "{s}"
        );
    }
    let error = text_spans
        .iter()
        .find(|s| text(s, "name").eq_ignore_ascii_case("SELECT nope"))
        .unwrap_or_else(|| panic!("no SELECT nope span in {text_spans:?}"));
    assert_eq!(
        tag(error, "db.response.status_code"),
        Some("1146"),
        "{error}"
    );
    // The prepared statement's executions carry its text.
    let prepared = spans(PREPARED_CLIENT);
    let executes = prepared
        .iter()
        .filter(|s| {
            text(s, "name").eq_ignore_ascii_case("SELECT orders")
                && text(s, "kind") == "CLIENT"
                && service(s) == PREPARED_CLIENT
                && tag(s, "db.query.text") == Some("SELECT item, qty FROM orders WHERE id = ?")
        })
        .count();
    assert_eq!(executes as u64, EXECUTES, "{prepared:?}");
}
