//! A real nginx (Debian's `nginx`): one master, one worker, configured in a temp directory.
//! `cargo xtask bench` runs it too, as one process tuned for saturation load.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::agent::send_signal;
use crate::netns::NetNs;
use crate::tempdir::TempDir;

/// How long nginx may take to write its pid file and fork its worker.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long nginx may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the test nginx serves.
#[derive(Clone, Debug)]
pub struct NginxConfig {
    /// `listen` address (an address of the namespace nginx runs in).
    pub listen: SocketAddr,
    /// Where `location /api/` proxies to, if anywhere.
    pub backend: Option<SocketAddr>,
    /// Log one line per request with its status (read back with [`Nginx::access_log`]).
    pub access_log: bool,
    /// `keepalive_requests`: requests served on a connection before nginx closes it.
    pub keepalive_requests: Option<u32>,
    /// `master_process off`: one process that serves, no master and worker.
    pub single_process: bool,
    /// Settings for saturation load (the bench): 16384 connections per worker and 16384 open
    /// files (room for the bench's 10,000 idle keep-alive connections, B7), idle keep-alive
    /// connections kept 600 s, a listen backlog of 4096, and warnings in the error log.
    pub for_load: bool,
    /// `location /`: every path not listed below answers 200 `ok` (no newline).
    pub ok_everywhere: bool,
    /// `listen ... http2`: HTTP/2 without TLS, by prior knowledge only (nginx 1.22 serves no
    /// HTTP/1.1 on such a listener and accepts no `Upgrade: h2c`).
    pub http2: bool,
    /// Serve HTTPS (`listen ... ssl`) with this certificate and key (PEM files).
    pub tls: Option<(String, String)>,
}

impl NginxConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            backend: None,
            access_log: false,
            keepalive_requests: None,
            single_process: false,
            for_load: false,
            ok_everywhere: false,
            http2: false,
            tls: None,
        }
    }

    /// HTTPS with the certificate and key in these PEM files (see [`crate::tls::Certificate`]).
    pub fn tls(mut self, cert: &str, key: &str) -> Self {
        self.tls = Some((cert.to_string(), key.to_string()));
        self
    }

    pub fn backend(mut self, backend: SocketAddr) -> Self {
        self.backend = Some(backend);
        self
    }

    pub fn access_log(mut self) -> Self {
        self.access_log = true;
        self
    }

    pub fn keepalive_requests(mut self, n: u32) -> Self {
        self.keepalive_requests = Some(n);
        self
    }

    pub fn single_process(mut self) -> Self {
        self.single_process = true;
        self
    }

    pub fn for_load(mut self) -> Self {
        self.for_load = true;
        self
    }

    pub fn ok_everywhere(mut self) -> Self {
        self.ok_everywhere = true;
        self
    }

    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// The configuration file text: `/ok` answers 200 `ok\n`, `/missing` 404 and `/boom` 500
    /// (nginx's own error pages), `/api/` is proxied with HTTP/1.1 to the backend.
    fn render(&self, dir: &TempDir) -> String {
        let d = dir.path().display();
        let master = if self.single_process { "off" } else { "on" };
        let (level, connections) = if self.for_load {
            (" warn", 16384)
        } else {
            ("", 1024)
        };
        let mut conf = format!(
            "daemon off;\nmaster_process {master};\nworker_processes 1;\nuser root;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log{level};\n"
        );
        if self.for_load {
            conf.push_str("worker_rlimit_nofile 16384;\n");
        }
        let _ = write!(
            conf,
            "events {{ worker_connections {connections}; }}\nhttp {{\n"
        );
        if self.access_log {
            let _ = writeln!(
                conf,
                "    log_format status_only '$status';\n    access_log {d}/access.log status_only;"
            );
        } else {
            conf.push_str("    access_log off;\n");
        }
        if let Some(n) = self.keepalive_requests {
            let _ = writeln!(conf, "    keepalive_requests {n};");
        }
        if self.for_load {
            conf.push_str("    keepalive_timeout 600s;\n");
        }
        for (key, sub) in [
            ("client_body_temp_path", "client_body"),
            ("proxy_temp_path", "proxy"),
            ("fastcgi_temp_path", "fastcgi"),
            ("uwsgi_temp_path", "uwsgi"),
            ("scgi_temp_path", "scgi"),
        ] {
            let _ = writeln!(conf, "    {key} {d}/{sub};");
        }
        let backlog = if self.for_load { " backlog=4096" } else { "" };
        let http2 = if self.http2 { " http2" } else { "" };
        let ssl = if self.tls.is_some() { " ssl" } else { "" };
        let _ = writeln!(
            conf,
            "    server {{\n        listen {}{ssl}{http2}{backlog};",
            self.listen
        );
        if let Some((cert, key)) = &self.tls {
            let _ = writeln!(
                conf,
                "        ssl_certificate {cert};\n        ssl_certificate_key {key};"
            );
        }
        conf.push_str(
            "        location = /ok { return 200 \"ok\\n\"; }\n\
             \x20       location = /missing { return 404; }\n\
             \x20       location = /boom { return 500; }\n",
        );
        if self.ok_everywhere {
            conf.push_str("        location / { return 200 \"ok\"; }\n");
        }
        if let Some(backend) = self.backend {
            let _ = writeln!(
                conf,
                "        location /api/ {{\n            proxy_pass http://{backend};\n            \
                 proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n        }}"
            );
        }
        conf.push_str("    }\n}\n");
        conf
    }
}

/// A running nginx. Dropping it stops it (SIGTERM, then SIGKILL of the worker and the master)
/// and removes its directory; nginx's error log is printed if the test is failing.
pub struct Nginx {
    child: Child,
    config: NginxConfig,
    dir: TempDir,
    reaped: bool,
}

/// The pids of the children of `pid` (its threads' children, as the kernel lists them).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

impl Nginx {
    /// Writes the configuration and starts nginx (inside `netns` if given), then waits for its
    /// pid file and its worker process.
    pub fn start(config: NginxConfig, netns: Option<&NetNs>) -> Self {
        Self::try_start(config, netns).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start`], with an error instead of a panic (for `cargo xtask bench`).
    pub fn try_start(config: NginxConfig, netns: Option<&NetNs>) -> io::Result<Self> {
        let dir = TempDir::try_new("nginx")?;
        let conf_path = dir.file("nginx.conf");
        fs::write(&conf_path, config.render(&dir))?;
        let out = fs::File::create(dir.file("nginx.out"))?;
        let mut cmd = match netns {
            Some(ns) => ns.command("nginx"),
            None => Command::new("nginx"),
        };
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.file("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("spawn nginx: {e} (apt-get install nginx)"),
            )
        })?;
        let mut nginx = Self {
            child,
            config,
            dir,
            reaped: false,
        };
        nginx.wait_started()?;
        Ok(nginx)
    }

    fn wait_started(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid_file = self.dir.file("nginx.pid");
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                let logs = self.logs();
                return Err(io::Error::other(format!(
                    "nginx exited ({status}) at start:\n{logs}"
                )));
            }
            let pid_written = fs::read_to_string(&pid_file)
                .is_ok_and(|s| s.trim() == self.child.id().to_string());
            // nginx writes its pid file once it listens; a master forks its worker after.
            if pid_written && (self.config.single_process || !self.workers().is_empty()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs = self.logs();
                return Err(io::Error::other(format!(
                    "nginx not started after {START_TIMEOUT:?}:\n{logs}"
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }

    pub fn master_pid(&self) -> u32 {
        self.child.id()
    }

    /// The worker processes' pids.
    pub fn workers(&self) -> Vec<u32> {
        children(self.child.id())
    }

    /// The statuses nginx logged, one per request it finished (`access_log` must be on), as
    /// status -> count. nginx logs 499 for a request whose client closed before the response.
    pub fn access_log(&self) -> BTreeMap<String, u64> {
        assert!(
            self.config.access_log,
            "nginx was started without access_log"
        );
        let text = fs::read_to_string(self.dir.file("access.log")).unwrap_or_default();
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            *out.entry(line.trim().to_owned()).or_insert(0) += 1;
        }
        out
    }

    /// nginx's error log and console output.
    pub fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.file(name)).unwrap_or_default();
        format!(
            "--- nginx error.log ---\n{}--- nginx output ---\n{}--- nginx.conf ---\n{}",
            read("error.log"),
            read("nginx.out"),
            read("nginx.conf")
        )
    }

    /// Stops nginx (SIGTERM: fast shutdown, the master waits for its worker) and waits for it.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.reaped {
            return;
        }
        let master = self.child.id();
        let workers = self.workers();
        send_signal(master, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if self.child.try_wait().expect("waitpid nginx").is_some() {
                break;
            }
            if Instant::now() >= deadline {
                for w in &workers {
                    send_signal(*w, libc::SIGKILL);
                }
                send_signal(master, libc::SIGKILL);
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.reaped = true;
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.terminate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMP_PATHS: &str = "    client_body_temp_path D/client_body;
    proxy_temp_path D/proxy;
    fastcgi_temp_path D/fastcgi;
    uwsgi_temp_path D/uwsgi;
    scgi_temp_path D/scgi;
";

    fn render(config: &NginxConfig) -> String {
        let dir = TempDir::new("nginx-conf");
        config
            .render(&dir)
            .replace(&dir.path().display().to_string(), "D")
    }

    #[test]
    fn the_tests_configuration() {
        let config = NginxConfig::new("10.1.0.2:80".parse().unwrap())
            .backend("10.1.0.3:8080".parse().unwrap())
            .keepalive_requests(3);
        let want = format!(
            "daemon off;
master_process on;
worker_processes 1;
user root;
pid D/nginx.pid;
error_log D/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 3;
{TEMP_PATHS}    server {{
        listen 10.1.0.2:80;
        location = /ok {{ return 200 \"ok\\n\"; }}
        location = /missing {{ return 404; }}
        location = /boom {{ return 500; }}
        location /api/ {{
            proxy_pass http://10.1.0.3:8080;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
        );
        assert_eq!(render(&config), want);
    }

    /// What docs/benchmarks.md describes.
    #[test]
    fn the_bench_configuration() {
        let config = NginxConfig::new("127.0.0.1:8080".parse().unwrap())
            .single_process()
            .for_load()
            .ok_everywhere()
            .keepalive_requests(100_000_000);
        let want = format!(
            "daemon off;
master_process off;
worker_processes 1;
user root;
pid D/nginx.pid;
error_log D/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
{TEMP_PATHS}    server {{
        listen 127.0.0.1:8080 backlog=4096;
        location = /ok {{ return 200 \"ok\\n\"; }}
        location = /missing {{ return 404; }}
        location = /boom {{ return 500; }}
        location / {{ return 200 \"ok\"; }}
    }}
}}
"
        );
        assert_eq!(render(&config), want);
    }
}
