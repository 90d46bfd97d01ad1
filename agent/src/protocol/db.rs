//! What the database and cache protocols share (PostgreSQL, MySQL/MariaDB, Redis, Memcached):
//! their exchanges' attributes, the OpenTelemetry database metrics (one pair of families for all
//! of them), and the SQL helpers: the operation and table of a statement, query text with its
//! literals replaced by `?`, and a `traceparent` carried in a SQL comment (sqlcommenter).
//!
//! A database protocol's folder names these as its own: `pub type Attributes =
//! db::DbAttributes; pub type Red = db::DbRed;`.

use std::{borrow::Cow, sync::Arc};

use prometheus_client::{encoding::EncodeLabelSet, metrics::histogram::Histogram};

use super::{
    Exchange, Observation, ProtocolAttributes, RedMetrics, RedSettings, Side, SpanOptions,
    context::{self, Found},
};
use crate::{
    metadata::pod::{K8sLabels, PodMeta, same_pod},
    metrics::{
        Buckets, Histograms, OVERFLOW, Registry,
        series::{Admitted, SeriesGuard, SeriesKey, same_str},
    },
    semconv::{Attribute, Value, key},
};

/// Metric names.
pub mod name {
    pub const CLIENT_DURATION: &str = "db_client_operation_duration_seconds";
    pub const SERVER_DURATION: &str = "db_server_operation_duration_seconds";
}

/// Longest query text kept per exchange (the captured prefix is shorter anyway by default).
pub const MAX_QUERY_BYTES: usize = 2048;
/// Longest operation name accepted from the wire (a verb or a command).
pub const MAX_OPERATION_BYTES: usize = 32;
/// Longest collection (table) name kept.
pub const MAX_COLLECTION_BYTES: usize = 128;

/// `db.system.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum System {
    Postgresql,
    Mysql,
    Mariadb,
    Redis,
    Memcached,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Postgresql => "postgresql",
            System::Mysql => "mysql",
            System::Mariadb => "mariadb",
            System::Redis => "redis",
            System::Memcached => "memcached",
        }
    }
}

/// What a database exchange adds to the neutral fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbAttributes {
    pub system: System,
    /// `db.namespace`: the database (PostgreSQL's startup `database`, MySQL's schema, Redis's
    /// database index), when seen.
    pub namespace: Option<Arc<str>>,
    /// `db.operation.name`: the SQL verb (uppercase), the Redis command (uppercase), the
    /// Memcached command (as sent).
    pub operation: Cow<'static, str>,
    /// `db.collection.name`: the table of a simple statement.
    pub collection: Option<String>,
    /// The statement as captured (at most [`MAX_QUERY_BYTES`]), literals still in: spans carry
    /// it only as `--db-query-text` says (sanitized by default).
    pub query: Option<String>,
    /// `db.response.status_code`: SQLSTATE, MySQL error number, Redis error prefix; `None` on
    /// success.
    pub status_code: Option<Cow<'static, str>>,
}

/// How much of a statement spans carry (`--db-query-text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryText {
    /// No `db.query.text`.
    Off,
    /// Literals replaced by `?`: no value of a user's data leaves the node.
    #[default]
    Sanitized,
    /// As captured.
    Raw,
}

impl ProtocolAttributes for DbAttributes {
    fn span_name_into(&self, out: &mut String) {
        out.push_str(&self.operation);
        if let Some(c) = &self.collection {
            out.push(' ');
            out.push_str(c);
        }
    }

    fn span_attributes(&self, options: &SpanOptions, out: &mut Vec<Attribute>) {
        out.push((key::DB_SYSTEM_NAME, Value::Str(self.system.name().into())));
        if let Some(ns) = &self.namespace {
            out.push((key::DB_NAMESPACE, Value::Str(ns.to_string().into())));
        }
        out.push((key::DB_OPERATION_NAME, Value::Str(self.operation.clone())));
        if let Some(c) = &self.collection {
            out.push((key::DB_COLLECTION_NAME, Value::Str(c.clone().into())));
        }
        if let Some(q) = &self.query {
            let text = match options.db_query_text {
                QueryText::Off => None,
                QueryText::Sanitized => Some(sanitize(q, dialect(self.system))),
                QueryText::Raw => Some(q.clone()),
            };
            if let Some(text) = text {
                out.push((key::DB_QUERY_TEXT, Value::Str(text.into())));
            }
        }
        if let Some(code) = &self.status_code {
            out.push((key::DB_RESPONSE_STATUS_CODE, Value::Str(code.clone())));
        }
    }

    fn error_type(&self) -> Cow<'static, str> {
        self.status_code.clone().unwrap_or(Cow::Borrowed("error"))
    }
}

/// `db_*_operation_duration_seconds` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabels {
    pub service_name: Arc<str>,
    pub db_system_name: &'static str,
    pub db_operation_name: Cow<'static, str>,
    pub db_collection_name: String,
    pub server_address: Arc<str>,
    pub server_port: u16,
    pub error_type: Cow<'static, str>,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

/// `DbLabels` borrowed, for looking a series up.
#[derive(Hash)]
pub struct DbView<'a> {
    service_name: &'a str,
    system: &'a str,
    operation: &'a str,
    collection: &'a str,
    server_address: &'a str,
    server_port: u16,
    error_type: &'a str,
    pod: Option<&'a PodMeta>,
}

impl SeriesKey for DbLabels {
    type View<'a> = DbView<'a>;

    fn view(&self) -> DbView<'_> {
        DbView {
            service_name: &self.service_name,
            system: self.db_system_name,
            operation: &self.db_operation_name,
            collection: &self.db_collection_name,
            server_address: &self.server_address,
            server_port: self.server_port,
            error_type: &self.error_type,
            pod: self.k8s.0.as_deref(),
        }
    }

    fn matches(&self, v: &DbView<'_>) -> bool {
        self.server_port == v.server_port
            && same_str(&self.service_name, v.service_name)
            && same_str(self.db_system_name, v.system)
            && same_str(&self.db_operation_name, v.operation)
            && same_str(&self.db_collection_name, v.collection)
            && same_str(&self.server_address, v.server_address)
            && same_str(&self.error_type, v.error_type)
            && same_pod(self.k8s.0.as_deref(), v.pod)
    }
}

/// One database protocol's request metrics: its own bounded label sets in the two families
/// every database protocol shares.
pub struct DbRed {
    client: Histograms<DbLabels>,
    server: Histograms<DbLabels>,
    client_series: SeriesGuard<DbLabels, Option<Histogram>>,
    server_series: SeriesGuard<DbLabels, Option<Histogram>>,
}

impl RedMetrics for DbRed {
    type Attributes = DbAttributes;

    fn new(registry: &Registry, settings: &RedSettings) -> Self {
        let durations = Buckets::new(&settings.duration_buckets);
        let client = registry.family(
            name::CLIENT_DURATION,
            "Duration of database and cache operations a client on this node made, first request byte written to last response byte read",
            || Histograms::new_with_constructor(durations.clone()),
        );
        let server = registry.family(
            name::SERVER_DURATION,
            "Duration of database and cache operations a server on this node served, first request byte read to last response byte written",
            || Histograms::new_with_constructor(durations.clone()),
        );
        DbRed {
            client,
            server,
            client_series: SeriesGuard::new(
                settings.max_series,
                registry.overflow_counter(name::CLIENT_DURATION),
            ),
            server_series: SeriesGuard::new(
                settings.max_series,
                registry.overflow_counter(name::SERVER_DURATION),
            ),
        }
    }

    fn observe(&mut self, ex: &Exchange, a: &DbAttributes, at: &Observation) {
        let seconds = ex.end_ns.saturating_sub(ex.start_ns) as f64 / 1e9;
        let error_type: Cow<'static, str> = if ex.failed(at.side) {
            ex.error_type()
        } else {
            Cow::Borrowed("")
        };
        let formatted;
        let server_address: &str = match at.server_address {
            Some(ip) => ip,
            None => {
                formatted = at.server.ip().to_string();
                &formatted
            }
        };
        let collection = a.collection.as_deref().unwrap_or("");
        let view = DbView {
            service_name: at.service,
            system: a.system.name(),
            operation: &a.operation,
            collection,
            server_address,
            server_port: at.server.port(),
            error_type: &error_type,
            pod: at.pod.map(|p| &**p),
        };
        let (family, series) = match at.side {
            Side::Client => (&self.client, &mut self.client_series),
            Side::Server => (&self.server, &mut self.server_series),
        };
        let admitted = series.admit(
            view,
            at.now_ns,
            || DbLabels {
                service_name: at.service.clone(),
                db_system_name: a.system.name(),
                db_operation_name: a.operation.clone(),
                db_collection_name: collection.to_string(),
                server_address: at
                    .server_address
                    .cloned()
                    .unwrap_or_else(|| server_address.into()),
                server_port: at.server.port(),
                error_type: error_type.clone(),
                k8s: K8sLabels(at.pod.cloned()),
            },
            |l| DbLabels {
                db_collection_name: OVERFLOW.to_string(),
                ..l
            },
        );
        match admitted {
            Admitted::Series(labels, handle) => handle
                .get_or_insert_with(|| family.get_or_create(labels).clone())
                .observe(seconds),
            Admitted::Overflow(labels) => family.get_or_create(&labels).observe(seconds),
        }
    }

    fn expire(&mut self, now_ns: u64, ttl_ns: u64, registry: &Registry) {
        for (family, series, metric) in [
            (&self.client, &mut self.client_series, name::CLIENT_DURATION),
            (&self.server, &mut self.server_series, name::SERVER_DURATION),
        ] {
            let stale = series.expire(now_ns, ttl_ns);
            for l in &stale {
                family.remove(l);
            }
            registry.count_expired(metric, stale.len() as u64);
        }
    }
}

/// How a dialect quotes: PostgreSQL's double quotes are identifiers; MySQL's (without
/// ANSI_QUOTES) are strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
    /// Not SQL (Redis, Memcached): every argument after the command is a value.
    Command,
}

fn dialect(system: System) -> Dialect {
    match system {
        System::Postgresql => Dialect::Postgres,
        System::Mysql | System::Mariadb => Dialect::Mysql,
        System::Redis | System::Memcached => Dialect::Command,
    }
}

/// SQL verbs returned as static strings (anything else is copied, bounded).
const VERBS: [&str; 32] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "WITH",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "CREATE",
    "DROP",
    "ALTER",
    "TRUNCATE",
    "COPY",
    "SET",
    "SHOW",
    "EXPLAIN",
    "ANALYZE",
    "VACUUM",
    "GRANT",
    "REVOKE",
    "LOCK",
    "CALL",
    "DO",
    "LISTEN",
    "NOTIFY",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "REPLACE",
];

/// Skips whitespace and comments (`-- ...`, `/* ... */`).
fn skip_blank(s: &str) -> &str {
    let mut s = s;
    loop {
        let t = s.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = t.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return t;
        }
    }
}

/// The next word (letters, digits, `_`) and what follows it.
fn word(s: &str) -> (&str, &str) {
    let s = skip_blank(s);
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    s.split_at(end)
}

/// A table name at the start of `s`: an identifier, possibly quoted (`"x"`, `` `x` ``) and
/// schema-qualified; `None` for anything else (a subquery, a function call).
fn table_name(s: &str) -> Option<(String, &str)> {
    let mut s = skip_blank(s);
    let mut name = String::new();
    loop {
        let (part, rest) = match s.chars().next()? {
            q @ ('"' | '`') => {
                let body = &s[1..];
                let end = body.find(q)?;
                (&body[..end], &body[end + 1..])
            }
            c if c.is_ascii_alphabetic() || c == '_' => word(s),
            _ => return None,
        };
        if part.is_empty() {
            return None;
        }
        name.push_str(part);
        if let Some(rest) = rest.strip_prefix('.') {
            name.push('.');
            s = rest;
            continue;
        }
        if name.len() > MAX_COLLECTION_BYTES {
            return None;
        }
        return Some((name, rest));
    }
}

/// The operation (`db.operation.name`) and, for a statement on one table, its table
/// (`db.collection.name`).
pub fn sql_summary(query: &str) -> (Cow<'static, str>, Option<String>) {
    let (verb, rest) = word(query);
    if verb.is_empty() || verb.len() > MAX_OPERATION_BYTES {
        return (Cow::Borrowed("UNKNOWN"), None);
    }
    let upper = verb.to_ascii_uppercase();
    let op: Cow<'static, str> = match VERBS.iter().find(|v| **v == upper) {
        Some(v) => Cow::Borrowed(v),
        None => Cow::Owned(upper.clone()),
    };
    let after = |rest: &str, kw: &[&str]| -> Option<String> {
        // The first table after the keywords, unless another table or a join follows.
        let mut rest = rest;
        for k in kw {
            let (w, r) = word(rest);
            if !w.eq_ignore_ascii_case(k) {
                return None;
            }
            rest = r;
        }
        let (name, tail) = table_name(rest)?;
        let tail = skip_blank(tail);
        if tail.starts_with(',') {
            return None;
        }
        let (next, _) = word(tail);
        let joins = ["JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "NATURAL"];
        if joins.iter().any(|j| next.eq_ignore_ascii_case(j)) {
            return None;
        }
        Some(name)
    };
    let table = match upper.as_str() {
        "SELECT" => from_clause(rest).and_then(|r| after(r, &[])),
        "DELETE" => after(rest, &["FROM"]),
        "INSERT" | "REPLACE" => after(rest, &["INTO"]),
        "UPDATE" | "COPY" => after(rest, &[]),
        "TRUNCATE" => after(rest, &["TABLE"]).or_else(|| after(rest, &[])),
        "CREATE" | "DROP" | "ALTER" => after(rest, &["TABLE", "IF", "NOT", "EXISTS"])
            .or_else(|| after(rest, &["TABLE", "IF", "EXISTS"]))
            .or_else(|| after(rest, &["TABLE"])),
        _ => None,
    };
    (op, table)
}

/// What follows the first `FROM` outside parentheses and literals of a SELECT.
fn from_clause(s: &str) -> Option<&str> {
    let bytes = s.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'\'' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'\'' {
                    i += 1;
                }
            }
            b'f' | b'F'
                if depth == 0
                    && s.get(i..i + 4)
                        .is_some_and(|w| w.eq_ignore_ascii_case("from"))
                    && (i == 0 || !is_word_byte(bytes[i - 1]))
                    && bytes.get(i + 4).is_none_or(|b| !is_word_byte(*b)) =>
            {
                return s.get(i + 4..);
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

/// The statement with every literal replaced by `?`: quoted strings (and PostgreSQL's
/// dollar-quoted ones), numbers, and for [`Dialect::Command`] every argument after the command.
/// Comments go, whitespace runs become one space, and the result is at most
/// [`MAX_QUERY_BYTES`].
pub fn sanitize(query: &str, dialect: Dialect) -> String {
    let mut out = String::with_capacity(query.len().min(MAX_QUERY_BYTES));
    if dialect == Dialect::Command {
        let mut words = query.split_ascii_whitespace();
        if let Some(cmd) = words.next() {
            out.push_str(cmd);
        }
        for _ in words {
            out.push_str(" ?");
            if out.len() >= MAX_QUERY_BYTES {
                break;
            }
        }
        return out;
    }
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    let mut space = false;
    let push = |out: &mut String, s: &str, space: &mut bool| {
        if *space && !out.is_empty() {
            out.push(' ');
        }
        *space = false;
        out.push_str(s);
    };
    while i < chars.len() && out.len() < MAX_QUERY_BYTES {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            c if c.is_whitespace() => {
                space = true;
                i += 1;
            }
            '-' if next == Some('-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                space = true;
            }
            '/' if next == Some('*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
                space = true;
            }
            '\'' => {
                i = skip_quoted(&chars, i, '\'');
                push(&mut out, "?", &mut space);
            }
            '"' if dialect == Dialect::Mysql => {
                i = skip_quoted(&chars, i, '"');
                push(&mut out, "?", &mut space);
            }
            '$' if dialect == Dialect::Postgres && dollar_tag(&chars, i).is_some() => {
                let tag = dollar_tag(&chars, i).unwrap_or_default();
                i += tag.len();
                loop {
                    if i >= chars.len() {
                        break;
                    }
                    if chars[i..].starts_with(&tag) {
                        i += tag.len();
                        break;
                    }
                    i += 1;
                }
                push(&mut out, "?", &mut space);
            }
            c if c.is_ascii_digit()
                && !out
                    .chars()
                    .last()
                    .is_some_and(|p| !space && (p.is_alphanumeric() || p == '_' || p == '$')) =>
            {
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
                {
                    i += 1;
                }
                push(&mut out, "?", &mut space);
            }
            c => {
                let mut buf = [0u8; 4];
                push(&mut out, c.encode_utf8(&mut buf), &mut space);
                i += 1;
            }
        }
    }
    if out.len() > MAX_QUERY_BYTES {
        let mut cut = MAX_QUERY_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// Past a string quoted with `q` starting at `i` (a doubled quote and a backslash escape stay
/// inside).
fn skip_quoted(chars: &[char], i: usize, q: char) -> usize {
    let mut i = i + 1;
    while i < chars.len() {
        if chars[i] == '\\' {
            i += 2;
            continue;
        }
        if chars[i] == q {
            if chars.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    i
}

/// A PostgreSQL dollar-quote tag at `i` (`$$`, `$tag$`).
fn dollar_tag(chars: &[char], i: usize) -> Option<Vec<char>> {
    let mut j = i + 1;
    while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
        if j == i + 1 && chars[j].is_ascii_digit() {
            return None; // `$1`: a parameter, not a quote
        }
        j += 1;
    }
    (chars.get(j) == Some(&'$')).then(|| chars[i..=j].to_vec())
}

/// A trace context in a SQL comment (sqlcommenter: `/*traceparent='00-...-01'*/`, values
/// URL-encoded), honoured like a header.
pub fn comment_context(query: &str) -> Found {
    let Some(start) = query.rfind("/*") else {
        return Found::None;
    };
    let body = &query[start + 2..];
    let Some(end) = body.find("*/") else {
        return Found::None;
    };
    for pair in body[..end].split(',') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        if k.trim() != "traceparent" {
            continue;
        }
        let v = v.trim().trim_matches('\'');
        let decoded = url_decode(v);
        return match context::parse_traceparent(&decoded) {
            Some(ctx) => Found::Valid(ctx),
            None => Found::Invalid,
        };
    }
    Found::None
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_and_tables_of_simple_statements() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "SELECT * FROM orders WHERE id = 1",
                "SELECT",
                Some("orders"),
            ),
            (
                "  select a, b from public.\"Orders\" o",
                "SELECT",
                Some("public.Orders"),
            ),
            ("SELECT a FROM x JOIN y ON x.id = y.id", "SELECT", None),
            ("SELECT a FROM x, y", "SELECT", None),
            ("SELECT (SELECT 1 FROM z) FROM t", "SELECT", Some("t")),
            ("SELECT 'from x' FROM t", "SELECT", Some("t")),
            ("SELECT 1", "SELECT", None),
            (
                "/* c */ -- d\nINSERT INTO pgbench_history (tid) VALUES (1)",
                "INSERT",
                Some("pgbench_history"),
            ),
            (
                "UPDATE pgbench_accounts SET abalance = 1",
                "UPDATE",
                Some("pgbench_accounts"),
            ),
            (
                "delete from `shop`.`cart` where 1",
                "DELETE",
                Some("shop.cart"),
            ),
            ("CREATE TABLE IF NOT EXISTS t (a int)", "CREATE", Some("t")),
            ("DROP TABLE IF EXISTS t", "DROP", Some("t")),
            ("TRUNCATE TABLE t", "TRUNCATE", Some("t")),
            ("BEGIN", "BEGIN", None),
            ("vacuum", "VACUUM", None),
            ("frobnicate things", "FROBNICATE", None),
            ("", "UNKNOWN", None),
            ("\u{0}\u{1}", "UNKNOWN", None),
        ];
        for (q, op, table) in cases {
            let (o, t) = sql_summary(q);
            assert_eq!((o.as_ref(), t.as_deref()), (*op, *table), "{q:?}");
        }
    }

    #[test]
    fn sanitizing_removes_every_literal() {
        let cases: &[(&str, Dialect, &str)] = &[
            (
                "SELECT * FROM users WHERE name = 'O''Brien' AND age > 42",
                Dialect::Postgres,
                "SELECT * FROM users WHERE name = ? AND age > ?",
            ),
            (
                "select \"Col\" from t where x = $1 and y = $$a secret$$ /* hi */",
                Dialect::Postgres,
                "select \"Col\" from t where x = $1 and y = ?",
            ),
            (
                "INSERT INTO t VALUES (\"pw\", 'x\\'y', 3.14, -7)",
                Dialect::Mysql,
                "INSERT INTO t VALUES (?, ?, ?, -?)",
            ),
            (
                "SELECT t1.c2 FROM t1",
                Dialect::Postgres,
                "SELECT t1.c2 FROM t1",
            ),
            (
                "SET user:42 secret-value EX 10",
                Dialect::Command,
                "SET ? ? ? ?",
            ),
            ("unterminated 'abc", Dialect::Mysql, "unterminated ?"),
        ];
        for (q, d, want) in cases {
            assert_eq!(sanitize(q, *d), *want, "{q:?}");
        }
        let long = format!("SELECT '{}'", "x".repeat(10_000)) + &" , 1".repeat(5000);
        assert!(sanitize(&long, Dialect::Postgres).len() <= MAX_QUERY_BYTES);
    }

    #[test]
    fn sqlcommenter_traceparent_is_a_context() {
        let q = "SELECT 1 /*controller='c',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/";
        let Found::Valid(ctx) = comment_context(q) else {
            panic!("no context in {q}");
        };
        assert_eq!(ctx.span_id, "00f067aa0ba902b7");
        let encoded = "SELECT 1 /*traceparent='00%2D4bf92f3577b34da6a3ce929d0e0e4736%2D00f067aa0ba902b7%2D01'*/";
        assert!(matches!(comment_context(encoded), Found::Valid(_)));
        assert_eq!(
            comment_context("SELECT 1 /*traceparent='zz'*/"),
            Found::Invalid
        );
        assert_eq!(comment_context("SELECT 1 /* plain */"), Found::None);
        assert_eq!(comment_context("SELECT 1 /*"), Found::None);
    }

    #[test]
    fn spans_carry_sanitized_text_by_default() {
        let a = DbAttributes {
            system: System::Postgresql,
            namespace: Some("shop".into()),
            operation: "SELECT".into(),
            collection: Some("orders".into()),
            query: Some("SELECT * FROM orders WHERE card = '4111'".into()),
            status_code: None,
        };
        assert_eq!(a.span_name(), "SELECT orders");
        let text = |mode| {
            let mut out = Vec::new();
            a.span_attributes(
                &SpanOptions {
                    db_query_text: mode,
                },
                &mut out,
            );
            out.into_iter()
                .find(|(k, _)| *k == key::DB_QUERY_TEXT)
                .map(|(_, v)| v.to_text().into_owned())
        };
        assert_eq!(
            text(QueryText::Sanitized).as_deref(),
            Some("SELECT * FROM orders WHERE card = ?")
        );
        assert_eq!(text(QueryText::Off), None);
        assert!(text(QueryText::Raw).unwrap().contains("4111"));
    }
}
