//! Service names for processes, first that applies: a configured mapping (by executable, or by
//! the port a server serves on), the process's `OTEL_SERVICE_NAME`, its executable name, its
//! command name. Kubernetes workload names will plug in here, ahead of the executable name.

use std::{collections::HashMap, path::Path};

use crate::{
    event::Process,
    metadata::proc::{boottime_ns_to_ticks, clock_ticks_per_second, process_info},
};

/// Processes remembered at once; the cache is emptied when full (names are cheap to re-read).
const CACHE_CAPACITY: usize = 16384;

pub struct ServiceNames {
    by_executable: HashMap<String, String>,
    by_port: HashMap<u16, String>,
    /// (tgid, start time) -> (executable name, OTEL_SERVICE_NAME): a reused pid is a new key.
    cache: HashMap<(u32, u64), (Option<String>, Option<String>)>,
    hz: u64,
}

impl ServiceNames {
    pub fn new(by_executable: HashMap<String, String>, by_port: HashMap<u16, String>) -> Self {
        ServiceNames {
            by_executable,
            by_port,
            cache: HashMap::new(),
            hz: clock_ticks_per_second(),
        }
    }

    /// The service name of `process`; `serving_port` is the local port when the process is
    /// the server of the connection in question.
    pub fn name(&mut self, process: &Process, serving_port: Option<u16>) -> String {
        if let Some(name) = serving_port.and_then(|p| self.by_port.get(&p)) {
            return name.clone();
        }
        let (exe, env) = self.facts(process);
        let exe = exe.unwrap_or_else(|| process.comm.clone());
        if let Some(name) = self.by_executable.get(&exe) {
            return name.clone();
        }
        env.unwrap_or(exe)
    }

    /// The executable name of `process` (its command name once it is gone).
    pub fn executable(&mut self, process: &Process) -> String {
        self.facts(process)
            .0
            .unwrap_or_else(|| process.comm.clone())
    }

    /// What /proc says about the process, if it is still the same process (pid and start
    /// time match); nothing for a process that is gone.
    fn facts(&mut self, process: &Process) -> (Option<String>, Option<String>) {
        let key = (process.tgid, process.start_ns);
        if let Some(v) = self.cache.get(&key) {
            return v.clone();
        }
        let facts = match process_info(Path::new("/proc"), process.tgid) {
            Ok(info)
                if process.start_ns == 0
                    || info.start_ticks == boottime_ns_to_ticks(process.start_ns, self.hz) =>
            {
                (info.exe_name, info.env_service_name)
            }
            _ => (None, None),
        };
        if self.cache.len() >= CACHE_CAPACITY {
            self.cache.clear();
        }
        self.cache.insert(key, facts.clone());
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Process {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ticks: u64 = after.split(' ').nth(19).unwrap().parse().unwrap();
        Process {
            tgid: std::process::id(),
            tid: std::process::id(),
            start_ns: ticks * (1_000_000_000 / clock_ticks_per_second()),
            cgroup_id: 0,
            comm: "truncated-comm".into(),
        }
    }

    #[test]
    fn mapping_then_executable_then_comm() {
        let exe = std::env::current_exe().unwrap();
        let exe = exe.file_name().unwrap().to_string_lossy().into_owned();
        let mut names = ServiceNames::new(
            HashMap::from([("renamed-exe".to_string(), "x".to_string())]),
            HashMap::from([(8080, "frontend".to_string())]),
        );
        let p = me();
        assert_eq!(names.name(&p, Some(8080)), "frontend");
        assert_eq!(names.name(&p, Some(9)), exe);
        let mut names = ServiceNames::new(
            HashMap::from([(exe.clone(), "by-exe".to_string())]),
            HashMap::new(),
        );
        assert_eq!(names.name(&p, None), "by-exe");
        // A process that is gone (or a reused pid with another start time) falls back to comm.
        let gone = Process {
            start_ns: p.start_ns + 7_000_000_000,
            ..p
        };
        let mut names = ServiceNames::new(HashMap::new(), HashMap::new());
        assert_eq!(names.name(&gone, None), "truncated-comm");
    }
}
