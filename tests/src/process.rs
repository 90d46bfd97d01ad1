//! The test programs (Python scripts in `tests/scripts/`), run as guarded child processes.

use std::fmt::Display;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::send_signal;
use crate::netns::NetNs;

/// How long one test program may run.
pub const RUN: Duration = Duration::from_secs(60);
/// How long a program may take to report that it listens.
pub const STARTUP: Duration = Duration::from_secs(10);

/// The Python interpreter: `$MESHTAP_PYTHON`, else Debian's `/usr/bin/python3`, else `python3`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("MESHTAP_PYTHON") {
        return p;
    }
    if std::path::Path::new("/usr/bin/python3").is_file() {
        return "/usr/bin/python3".to_owned();
    }
    "python3".to_owned()
}

pub fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// A script invocation being built: `tcp_server.py COMM args...`, optionally in a namespace.
#[derive(Clone)]
pub struct Script {
    file: &'static str,
    comm: String,
    netns: Option<String>,
    cgroup: Option<PathBuf>,
    interpreter: Option<PathBuf>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Script {
    /// `tests/scripts/tcp_server.py`, whose process name will be `comm`.
    pub fn server(comm: &str) -> Self {
        Self::new("tcp_server.py", comm)
    }

    /// `tests/scripts/tcp_client.py`, whose process name will be `comm`.
    pub fn client(comm: &str) -> Self {
        Self::new("tcp_client.py", comm)
    }

    pub fn new(file: &'static str, comm: &str) -> Self {
        assert!(comm.len() <= 15, "comm {comm:?} is longer than 15 bytes");
        Self {
            file,
            comm: comm.to_owned(),
            netns: None,
            cgroup: None,
            interpreter: None,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Runs the script inside `ns`.
    pub fn in_netns(mut self, ns: &NetNs) -> Self {
        self.netns = Some(ns.name().to_owned());
        self
    }

    /// Runs the script as a member of the cgroup v2 directory `dir`: the process writes its pid
    /// to `dir/cgroup.procs` before it execs the interpreter, so every socket it opens is
    /// opened from that cgroup.
    pub fn in_cgroup(mut self, dir: &Path) -> Self {
        self.cgroup = Some(dir.to_path_buf());
        self
    }

    /// Runs the script with this Python interpreter instead of [`python()`] (e.g. a copy of it
    /// under another name, so that the process's executable name is one of the test's choosing).
    pub fn interpreter(mut self, path: &Path) -> Self {
        self.interpreter = Some(path.to_path_buf());
        self
    }

    pub fn arg(mut self, arg: impl Display) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Adds `--name value`.
    pub fn opt(self, name: &str, value: impl Display) -> Self {
        self.arg(name).arg(value)
    }

    /// Gives the process the service name `comm` (`OTEL_SERVICE_NAME`): the one name the agent
    /// uses for it everywhere, TCP edges included. Without it a script is named after its
    /// interpreter's executable (`python3.11`), like every other Python process.
    pub fn named(self) -> Self {
        let comm = self.comm.clone();
        self.env("OTEL_SERVICE_NAME", comm)
    }

    /// Sets `key=value` in the script's environment (e.g. `OTEL_SERVICE_NAME`). `ip netns exec`
    /// passes the environment on.
    pub fn env(mut self, key: &str, value: impl Display) -> Self {
        self.envs.push((key.to_owned(), value.to_string()));
        self
    }

    fn command(&self) -> Command {
        let py = self
            .interpreter
            .as_ref()
            .map_or_else(python, |p| p.to_string_lossy().into_owned());
        // `sh -c 'echo $$ > "$0" && exec "$@"' PROCS PROGRAM ARGS...`: join the cgroup, then
        // become the program (same pid). Before `ip netns exec`, which mounts a sysfs of the
        // namespace's own over /sys, hiding the cgroup hierarchy.
        let mut program: Vec<String> = Vec::new();
        if let Some(dir) = &self.cgroup {
            program.extend([
                "sh".to_owned(),
                "-c".to_owned(),
                r#"echo $$ > "$0" && exec "$@""#.to_owned(),
                dir.join("cgroup.procs").to_string_lossy().into_owned(),
            ]);
        }
        if let Some(ns) = &self.netns {
            program.extend([
                "ip".to_owned(),
                "netns".to_owned(),
                "exec".to_owned(),
                ns.clone(),
            ]);
        }
        program.push(py);
        let mut cmd = Command::new(&program[0]);
        cmd.args(&program[1..]);
        cmd.arg("-u")
            .arg(scripts_dir().join(self.file))
            .arg(&self.comm)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn describe(&self) -> String {
        let ns = self
            .netns
            .as_ref()
            .map_or_else(String::new, |n| format!(" in netns {n}"));
        let cg = self
            .cgroup
            .as_ref()
            .map_or_else(String::new, |d| format!(" in cgroup {}", d.display()));
        format!(
            "{} {} {}{ns}{cg}",
            self.file,
            self.comm,
            self.args.join(" ")
        )
    }

    pub fn spawn(&self) -> ScriptChild {
        let mut child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.describe()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ScriptChild {
            pid: child.id(),
            child,
            stdin,
            lines: rx,
            what: self.describe(),
            reaped: false,
        }
    }

    /// Spawns, then waits for the `done` event and a zero exit status (see
    /// [`ScriptChild::finish`]).
    pub fn run(&self, timeout: Duration) -> Value {
        self.spawn().finish(timeout)
    }

    /// Spawns the script so that its pid is `pid` (for pid-reuse tests): writes `pid - 1` to
    /// `/proc/sys/kernel/ns_last_pid` and forks, retrying while another task takes the pid
    /// first. Children that got another pid are killed before they act, so the script must be
    /// started with `--wait-go` (it waits for a line on stdin). `None` after `attempts` misses.
    pub fn spawn_with_pid(&self, pid: u32, attempts: usize) -> Option<ScriptChild> {
        for _ in 0..attempts {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
                .expect("write /proc/sys/kernel/ns_last_pid (needs root)");
            let child = self.spawn();
            if child.pid() == pid {
                return Some(child);
            }
            drop(child);
        }
        None
    }
}

/// The `port` of a script's event (`listening`).
pub fn port_of(v: &Value) -> u16 {
    u16::try_from(v["port"].as_u64().expect("event has a port")).expect("port fits u16")
}

/// A running script. Killed (SIGKILL) and reaped on drop.
pub struct ScriptChild {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    what: String,
    reaped: bool,
}

impl ScriptChild {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next JSON line the script printed. Non-JSON lines are skipped.
    pub fn next_event(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match serde_json::from_str::<Value>(&line) {
                    Ok(v) => return v,
                    Err(_) => eprintln!("[{}] {line}", self.what),
                },
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: no output line within {timeout:?}", self.what)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait for script");
                    self.reaped = true;
                    panic!(
                        "{}: exited ({status}) without the expected output",
                        self.what
                    );
                }
            }
        }
    }

    /// The next event, asserting that it is `event` (e.g. `listening`).
    pub fn expect_event(&mut self, event: &str, timeout: Duration) -> Value {
        let v = self.next_event(timeout);
        assert_eq!(
            v["event"].as_str(),
            Some(event),
            "{}: expected event {event}, got {v}",
            self.what
        );
        v
    }

    /// Sends one line to the script's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to script stdin");
        stdin.flush().expect("flush script stdin");
    }

    /// Waits for the `done` event (skipping others) and for the script to exit 0; returns the
    /// `done` event.
    pub fn finish(mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let done = loop {
            let v = self.next_event(deadline.saturating_duration_since(Instant::now()));
            if v["event"] == "done" {
                break v;
            }
        };
        self.stdin = None;
        let status = self.child.wait().expect("wait for script");
        self.reaped = true;
        assert!(status.success(), "{}: exited with {status}", self.what);
        done
    }

    /// Kills the script (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        self.reap_by_force();
    }

    fn reap_by_force(&mut self) {
        if !self.reaped {
            send_signal(self.pid, libc::SIGKILL);
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for ScriptChild {
    fn drop(&mut self) {
        self.reap_by_force();
    }
}

/// What a command printed, and how it ended.
#[derive(Debug)]
pub struct CommandOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion (stdin closed, stdout and stderr captured). Panics if it cannot
/// start, or if it is still running after `timeout` (then it is killed and reaped first). The
/// exit status is the caller's to check.
pub fn run_command(cmd: &mut Command, timeout: Duration) -> CommandOutput {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let collect = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = collect(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = collect(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            break status;
        }
        if Instant::now() >= deadline {
            send_signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
            panic!("{what} still running after {timeout:?}: killed");
        }
        thread::sleep(Duration::from_millis(10));
    };
    CommandOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}
