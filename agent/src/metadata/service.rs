//! Service names for processes, first that applies: a configured mapping (by the port a server
//! serves on, or by executable), the process's `OTEL_SERVICE_NAME`, its Kubernetes workload (or
//! pod) name, its executable name, its command name.
//!
//! In Kubernetes, a process's pod comes from its container: the container id in
//! `/proc/<pid>/cgroup`, or, for a process that is already gone, in the path of the cgroup whose
//! id the kernel reported (found under the cgroup v2 hierarchy).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    event::Process,
    metadata::{
        cgroup::{ContainerRef, parse_cgroup_path, parse_proc_cgroup, path_of_cgroup_id},
        kube::{KubeIndex, PodMeta},
        proc::{boottime_ns_to_ticks, clock_ticks_per_second, process_info},
    },
};

/// Processes remembered at once; the cache is emptied when full (names are cheap to re-read).
const CACHE_CAPACITY: usize = 16384;
/// Cgroup directories walked at most to find one cgroup id.
const CGROUP_WALK_LIMIT: usize = 50_000;

/// What /proc said about a process.
#[derive(Clone, Default)]
struct Facts {
    exe: Option<String>,
    env_service_name: Option<String>,
    container: Option<ContainerRef>,
    /// Whether /proc still had the process (else the facts above are unknown, not absent).
    found: bool,
}

/// Kubernetes lookups: the index the watches fill, and where cgroups are.
struct Kube {
    index: KubeIndex,
    cgroup_root: Option<PathBuf>,
    /// cgroup id -> container (for processes gone before /proc was read).
    by_cgroup_id: HashMap<u64, Option<ContainerRef>>,
}

/// A process's service name and, in Kubernetes, its pod.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub service: Arc<str>,
    pub pod: Option<Arc<PodMeta>>,
}

/// Processes remembered as serving a port named by `--service-port`; beyond, further ones
/// are named as usual on their client side.
const MAX_NAMED_PROCESSES: usize = 4096;

pub struct ServiceNames {
    by_executable: HashMap<String, Arc<str>>,
    by_port: HashMap<u16, Arc<str>>,
    /// (tgid, start time) -> what /proc says: a reused pid is a new key.
    cache: HashMap<(u32, u64), Facts>,
    /// Processes seen serving (or listening on) a port named by `by_port`: tgid -> (start time,
    /// 0 if unknown; the name). Their other sides (the calls they make) take the same name,
    /// so that a proxy is one node of the service graph, not one per direction.
    named_processes: HashMap<u32, (u64, Arc<str>)>,
    hz: u64,
    proc_root: PathBuf,
    kube: Option<Kube>,
}

impl ServiceNames {
    pub fn new(by_executable: HashMap<String, String>, by_port: HashMap<u16, String>) -> Self {
        ServiceNames {
            by_executable: by_executable
                .into_iter()
                .map(|(exe, name)| (exe, name.into()))
                .collect(),
            by_port: by_port
                .into_iter()
                .map(|(port, name)| (port, name.into()))
                .collect(),
            cache: HashMap::new(),
            named_processes: HashMap::new(),
            hz: clock_ticks_per_second(),
            proc_root: PathBuf::from("/proc"),
            kube: None,
        }
    }

    /// Reads processes from `proc_root` instead of /proc.
    pub fn with_proc_root(mut self, proc_root: PathBuf) -> Self {
        self.proc_root = proc_root;
        self
    }

    /// Names processes in pods after their workloads.
    pub fn with_kubernetes(mut self, index: KubeIndex, cgroup_root: Option<PathBuf>) -> Self {
        self.kube = Some(Kube {
            index,
            cgroup_root,
            by_cgroup_id: HashMap::new(),
        });
        self
    }

    /// Where processes are read from.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// Whether Kubernetes metadata is on.
    pub fn kubernetes(&self) -> bool {
        self.kube.is_some()
    }

    /// The pod or Service that owns `ip` now, when Kubernetes metadata is on.
    pub fn remote(&self, ip: std::net::IpAddr) -> Option<crate::metadata::kube::Peer> {
        if ip.is_loopback() || ip.is_unspecified() {
            return None;
        }
        self.kube.as_ref()?.index.peer(ip)
    }

    /// The service name of `process`; `serving_port` is the local port when the process is
    /// the server of the connection in question.
    pub fn name(&mut self, process: &Process, serving_port: Option<u16>) -> Arc<str> {
        self.identify(process, serving_port).service
    }

    /// The service name and pod of `process`.
    pub fn identify(&mut self, process: &Process, serving_port: Option<u16>) -> Identity {
        let pod = self.pod(process);
        if let Some(name) = serving_port.and_then(|p| self.by_port.get(&p)) {
            if self.named_processes.len() < MAX_NAMED_PROCESSES
                || self.named_processes.contains_key(&process.tgid)
            {
                self.named_processes
                    .insert(process.tgid, (process.start_ns, name.clone()));
            }
            return Identity {
                service: name.clone(),
                pod,
            };
        }
        if let Some((start_ns, name)) = self.named_processes.get(&process.tgid)
            && (*start_ns == 0 || process.start_ns == 0 || *start_ns == process.start_ns)
        {
            return Identity {
                service: name.clone(),
                pod,
            };
        }
        let facts = self.facts(process);
        let exe = facts.exe.unwrap_or_else(|| process.comm.to_string());
        let service = if let Some(name) = self.by_executable.get(&exe) {
            name.clone()
        } else if let Some(name) = facts.env_service_name {
            name.into()
        } else if let Some(pod) = &pod {
            pod.service_name().into()
        } else {
            exe.into()
        };
        Identity { service, pod }
    }

    /// The pod running `process`, when Kubernetes metadata is on and the pod is known.
    pub fn pod(&mut self, process: &Process) -> Option<Arc<PodMeta>> {
        self.kube.as_ref()?;
        let facts = self.facts(process);
        let container = match facts.container {
            Some(c) => Some(c),
            // Gone before /proc was read: its cgroup still says which container it was.
            None if !facts.found => self.container_of_cgroup_id(process.cgroup_id),
            None => None,
        }?;
        self.kube.as_ref()?.index.pod(
            container.container_id.as_deref(),
            container.pod_uid.as_deref(),
        )
    }

    /// The container of the cgroup with id `cgroup_id`, from its path under the cgroup v2 root.
    fn container_of_cgroup_id(&mut self, cgroup_id: u64) -> Option<ContainerRef> {
        let kube = self.kube.as_mut()?;
        if cgroup_id == 0 {
            return None;
        }
        if let Some(known) = kube.by_cgroup_id.get(&cgroup_id) {
            return known.clone();
        }
        let root = kube.cgroup_root.as_deref()?;
        let found = path_of_cgroup_id(root, cgroup_id, CGROUP_WALK_LIMIT)
            .and_then(|path| parse_cgroup_path(&path));
        if kube.by_cgroup_id.len() >= CACHE_CAPACITY {
            kube.by_cgroup_id.clear();
        }
        kube.by_cgroup_id.insert(cgroup_id, found.clone());
        found
    }

    /// The executable name of `process` (its command name once it is gone).
    pub fn executable(&mut self, process: &Process) -> Arc<str> {
        match self.facts(process).exe {
            Some(exe) => exe.into(),
            None => process.comm.as_str().into(),
        }
    }

    /// What /proc says about the process, if it is still the same process (pid and start
    /// time match); nothing for a process that is gone.
    fn facts(&mut self, process: &Process) -> Facts {
        let key = (process.tgid, process.start_ns);
        if let Some(v) = self.cache.get(&key) {
            return v.clone();
        }
        let facts = match process_info(&self.proc_root, process.tgid) {
            Ok(info)
                if process.start_ns == 0
                    || info.start_ticks == boottime_ns_to_ticks(process.start_ns, self.hz) =>
            {
                let container = if self.kube.is_some() {
                    read_cgroup(&self.proc_root, process.tgid)
                } else {
                    None
                };
                Facts {
                    exe: info.exe_name,
                    env_service_name: info.env_service_name,
                    container,
                    found: true,
                }
            }
            _ => Facts::default(),
        };
        if self.cache.len() >= CACHE_CAPACITY {
            self.cache.clear();
        }
        self.cache.insert(key, facts.clone());
        facts
    }
}

/// The container of process `tgid`, from `/proc/<tgid>/cgroup`.
fn read_cgroup(proc_root: &Path, tgid: u32) -> Option<ContainerRef> {
    let text = std::fs::read_to_string(proc_root.join(tgid.to_string()).join("cgroup")).ok()?;
    parse_proc_cgroup(&text)
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
        assert_eq!(&*names.name(&p, Some(9)), exe);
        assert_eq!(&*names.name(&p, None), exe);
        assert_eq!(&*names.name(&p, Some(8080)), "frontend");
        // Once seen serving the named port, the process is "frontend" on its other sides too
        // (the calls a proxy makes), but not a reused pid.
        assert_eq!(&*names.name(&p, None), "frontend");
        assert_eq!(&*names.name(&p, Some(9)), "frontend");
        let reused = Process {
            start_ns: p.start_ns + 7_000_000_000,
            ..p.clone()
        };
        assert_eq!(&*names.name(&reused, None), "truncated-comm");
        let mut names = ServiceNames::new(
            HashMap::from([(exe.clone(), "by-exe".to_string())]),
            HashMap::new(),
        );
        assert_eq!(&*names.name(&p, None), "by-exe");
        // A process that is gone (or a reused pid with another start time) falls back to comm.
        let gone = Process {
            start_ns: p.start_ns + 7_000_000_000,
            ..p
        };
        let mut names = ServiceNames::new(HashMap::new(), HashMap::new());
        assert_eq!(&*names.name(&gone, None), "truncated-comm");
    }
}
