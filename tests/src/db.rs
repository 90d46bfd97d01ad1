//! Database servers from Debian's packages for the database tests (`tests/tests/db_*.rs`):
//! PostgreSQL 15 (`initdb`, `pg_ctl`, run as user `postgres`), `redis-server` and `memcached`,
//! each in a temporary directory on 127.0.0.1, stopped by an RAII guard.

use std::io;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::free_port;
use crate::process::run_command;
use crate::tempdir::TempDir;

/// Debian's PostgreSQL 15 programs.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long one setup command or client run may take.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `cmd` to completion, asserting success; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = run_command(cmd, TIMEOUT);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn as_postgres(args: &[&str]) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).args(args);
    cmd
}

/// A PostgreSQL server in a temporary directory, on 127.0.0.1:`port` (trust authentication,
/// no fsync); stopped on drop.
pub struct Postgres {
    dir: TempDir,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A server that also accepts TLS (`ssl=on`, a self-signed certificate for `localhost` made
    /// with `openssl` in its data directory): `sslmode=require` clients get TLS, others not.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        assert!(
            Path::new(PG_BIN).join("initdb").is_file(),
            "PostgreSQL 15 is not installed: apt-get install postgresql"
        );
        let dir = TempDir::new("postgres");
        let root = dir.path().to_string_lossy().into_owned();
        run(Command::new("chown").args(["-R", "postgres", &root]));
        let data = dir.file("data");
        run(&mut as_postgres(&[
            &format!("{PG_BIN}/initdb"),
            "-D",
            &data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ]));
        if tls {
            let (key, crt) = (format!("{data}/server.key"), format!("{data}/server.crt"));
            run(&mut as_postgres(&[
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-days",
                "1",
                "-keyout",
                &key,
                "-out",
                &crt,
            ]));
            run(&mut as_postgres(&["chmod", "600", &key]));
        }
        let port = free_port();
        let mut opts = format!("-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off");
        if tls {
            opts.push_str(" -c ssl=on");
        }
        let log = dir.file("log");
        run(&mut as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            &data,
            "-o",
            &opts,
            "-l",
            &log,
            "-w",
            "start",
        ]));
        Postgres { dir, port }
    }

    /// A client program of PostgreSQL 15 (`psql`, `pgbench`) set up for TCP to the server, as
    /// user `postgres` on database `postgres`.
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(format!("{PG_BIN}/{program}"));
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres");
        cmd
    }

    /// A path in the server's temporary directory (for scripts).
    pub fn file(&self, name: &str) -> String {
        self.dir.file(name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            &self.dir.file("data"),
            "-m",
            "immediate",
            "-w",
            "stop",
        ])
        .status();
    }
}

/// A server process in the foreground, killed and reaped on drop.
pub struct Server {
    child: Child,
    _dir: TempDir,
}

impl Server {
    /// Spawns `cmd` in `dir` and waits until 127.0.0.1:`port` accepts connections.
    pub fn start(what: &str, cmd: &mut Command, port: u16, dir: TempDir) -> Self {
        Self::try_start(what, cmd, port, dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start`], with an error instead of a panic (for `cargo xtask bench`).
    pub fn try_start(what: &str, cmd: &mut Command, port: u16, dir: TempDir) -> io::Result<Self> {
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawn {what}: {e}")))?;
        let server = Server { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                // `server` is dropped here: the process is killed and reaped.
                return Err(io::Error::other(format!(
                    "{what} does not listen on {port}"
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-server` on 127.0.0.1:`port`, without persistence.
pub fn redis_server(port: u16) -> Server {
    try_redis_server(port).unwrap_or_else(|e| panic!("{e}"))
}

/// [`redis_server`], with an error instead of a panic (for `cargo xtask bench`).
pub fn try_redis_server(port: u16) -> io::Result<Server> {
    let dir = TempDir::try_new("redis")?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--dir"])
        .arg(dir.path());
    Server::try_start("redis-server", &mut cmd, port, dir)
}

/// `memcached` on 127.0.0.1:`port` (TCP only).
pub fn memcached(port: u16) -> Server {
    let dir = TempDir::new("memcached");
    let mut cmd = Command::new("memcached");
    cmd.args([
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-l",
        "127.0.0.1",
        "-u",
        "root",
    ]);
    Server::start("memcached", &mut cmd, port, dir)
}
