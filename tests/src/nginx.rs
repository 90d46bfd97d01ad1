//! A real nginx (Debian's `nginx`): one master, one worker, configured in a temp directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
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
}

impl NginxConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            backend: None,
            access_log: false,
            keepalive_requests: None,
        }
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

    /// The configuration file text: `/ok` answers 200 `ok\n`, `/missing` 404 and `/boom` 500
    /// (nginx's own error pages), `/api/` is proxied with HTTP/1.1 to the backend.
    fn render(&self, dir: &TempDir) -> String {
        let d = dir.path().display();
        let mut conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n"
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
        for (key, sub) in [
            ("client_body_temp_path", "client_body"),
            ("proxy_temp_path", "proxy"),
            ("fastcgi_temp_path", "fastcgi"),
            ("uwsgi_temp_path", "uwsgi"),
            ("scgi_temp_path", "scgi"),
        ] {
            let _ = writeln!(conf, "    {key} {d}/{sub};");
        }
        let _ = writeln!(conf, "    server {{\n        listen {};", self.listen);
        conf.push_str(
            "        location = /ok { return 200 \"ok\\n\"; }\n\
             \x20       location = /missing { return 404; }\n\
             \x20       location = /boom { return 500; }\n",
        );
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
        let dir = TempDir::new("nginx");
        let conf_path = dir.file("nginx.conf");
        fs::write(&conf_path, config.render(&dir)).expect("write nginx.conf");
        let out = fs::File::create(dir.file("nginx.out")).expect("create nginx.out");
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
            .stdout(out.try_clone().expect("dup nginx.out"))
            .stderr(out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn nginx: {e} (apt-get install nginx)"));
        let mut nginx = Self {
            child,
            config,
            dir,
            reaped: false,
        };
        nginx.wait_started();
        nginx
    }

    fn wait_started(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid_file = self.dir.file("nginx.pid");
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid nginx") {
                self.reaped = true;
                panic!("nginx exited ({status}) at start:\n{}", self.logs());
            }
            let pid_written = fs::read_to_string(&pid_file)
                .is_ok_and(|s| s.trim() == self.child.id().to_string());
            if pid_written && !self.workers().is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx not started after {START_TIMEOUT:?}:\n{}",
                self.logs()
            );
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
