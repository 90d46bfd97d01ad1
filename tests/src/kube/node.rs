//! The test's programs, in their pods' namespaces and cgroups: node-a with the api and web
//! pods, and pods of node-b as this node sees them.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::cgroups::Cgroups;
use super::fixtures::{Cluster, PodFixture};
use super::net::{Fabric, Sandbox, addr};
use crate::process::{RUN, STARTUP, Script, ScriptChild, python};
use crate::tempdir::TempDir;

/// Copies of the Python interpreter under names of the test's choosing: a process's executable
/// name is its service name when the agent knows nothing better.
pub struct Bins {
    dir: TempDir,
}

impl Bins {
    pub(crate) fn new() -> Self {
        Self {
            dir: TempDir::new("k8s-bin"),
        }
    }

    pub fn python(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if !path.exists() {
            let real = fs::canonicalize(python()).expect("resolve the Python interpreter");
            fs::copy(&real, &path)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", real.display(), path.display()));
        }
        path
    }
}

/// Where a program runs: a namespace, a container's cgroup (if any), an executable name.
pub struct Place<'a> {
    pub host: &'a Sandbox,
    pub cgroup: Option<&'a Path>,
    pub exe: PathBuf,
}

pub fn place<'a>(host: &'a Sandbox, cgroup: Option<&'a Path>, exe: PathBuf) -> Place<'a> {
    Place { host, cgroup, exe }
}

impl Place<'_> {
    fn script(&self, file: &'static str, comm: &str) -> Script {
        let mut s = Script::new(file, comm)
            .in_netns(&self.host.ns)
            .interpreter(&self.exe);
        if let Some(cg) = self.cgroup {
            s = s.in_cgroup(cg);
        }
        s
    }
}

/// `trace_service.py`.
pub struct Server {
    child: ScriptChild,
    exe: String,
}

impl Server {
    /// Serves on `bind`:`port` (pods bind 0.0.0.0).
    pub fn start(place: &Place<'_>, comm: &str, bind: Ipv4Addr, port: u16) -> Self {
        let mut child = place
            .script("trace_service.py", comm)
            .opt("--bind", bind)
            .opt("--port", port)
            .spawn();
        let v = child.expect_event("listening", STARTUP);
        Self {
            exe: v["exe"].as_str().expect("exe").to_owned(),
            child,
        }
    }

    /// Stops the server; returns how many requests it served.
    pub fn finish(mut self) -> usize {
        self.child.send_line("stop");
        let done = self.child.finish(RUN);
        done["requests"].as_array().expect("requests").len()
    }
}

/// Runs `trace_client.py` to completion: `n` GETs to `dest` (half on one keep-alive connection,
/// half on connections of their own); asserts every one got a 200.
pub fn requests(place: &Place<'_>, comm: &str, dest: SocketAddrV4, n: usize) {
    let done = place
        .script("trace_client.py", comm)
        .opt("--host", dest.ip())
        .opt("--port", dest.port())
        .opt("--count", n)
        .opt("--connection", "mixed")
        .run(RUN);
    let statuses: Vec<&Value> = done["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert_eq!(statuses.len(), n, "{done}");
    assert!(statuses.iter().all(|s| **s == 200), "{done}");
}

/// The pods of node-a that a test runs, in their namespaces and cgroups. Field order is drop
/// order: processes go first, then namespaces, then cgroups.
pub struct Node {
    pub api_server: Option<Server>,
    pub fabric: Fabric,
    pub api_host: Option<Sandbox>,
    pub web_host: Sandbox,
    pub cgroups: Cgroups,
    pub api_cg: Option<PathBuf>,
    web_cg: PathBuf,
    pub bins: Bins,
    cluster: Cluster,
}

/// The api pod's port.
pub const API_PORT: u16 = 8080;

/// How kubelet lays out the cgroups of containers.
#[derive(Clone, Copy)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    /// web-0 and the api pod, the api server running; kubelet's systemd cgroup driver.
    pub fn new() -> Self {
        Self::with_driver(Driver::Systemd)
    }

    pub fn with_driver(driver: Driver) -> Self {
        let cluster = Cluster::load();
        let (api, web) = (cluster.pod("api-7d9f8b6c5d-x2x9k"), cluster.pod("web-0"));
        let mut fabric = Fabric::new();
        let mut cgroups = Cgroups::new();
        let api_host = fabric.host("api", &[api.ip]);
        let web_host = fabric.host("web", &[web.ip]);
        let (api_cg, web_cg) = match driver {
            Driver::Systemd => (cgroups.container(&api), cgroups.container(&web)),
            Driver::Cgroupfs => (
                cgroups.container_cgroupfs(&api),
                cgroups.container_cgroupfs(&web),
            ),
        };
        let bins = Bins::new();
        let api_server = Server::start(
            &Place {
                host: &api_host,
                cgroup: Some(&api_cg),
                exe: bins.python("api-bin"),
            },
            "mtk-api",
            Ipv4Addr::UNSPECIFIED,
            API_PORT,
        );
        assert_eq!(api_server.exe, "api-bin");
        Self {
            api_server: Some(api_server),
            fabric,
            api_host: Some(api_host),
            web_host,
            cgroups,
            api_cg: Some(api_cg),
            web_cg,
            bins,
            cluster,
        }
    }

    pub fn api(&self) -> PodFixture {
        self.cluster.pod("api-7d9f8b6c5d-x2x9k")
    }

    pub fn web(&self) -> PodFixture {
        self.cluster.pod("web-0")
    }

    pub fn api_addr(&self) -> SocketAddrV4 {
        addr(self.api().ip, API_PORT)
    }

    /// web-0's client (executable web-bin).
    pub fn web_place(&self) -> Place<'_> {
        Place {
            host: &self.web_host,
            cgroup: Some(&self.web_cg),
            exe: self.bins.python("web-bin"),
        }
    }

    /// `n` requests from web-0 to `dest`.
    pub fn web_requests(&self, dest: SocketAddrV4, n: usize) {
        requests(&self.web_place(), "mtk-web", dest, n);
    }
}

/// A pod of node-b, as this node sees it: its address is in a namespace that DNATs every
/// connection to it to another address of the namespace, where a process in no pod's cgroup
/// serves, bound to that address only, and SNATs it so that the server sees another client
/// address. The agent sees that server, but nothing ties it to the pod's address or to the
/// client: from here the pod is remote, as a pod of another node is.
pub struct RemotePod {
    pub server: Server,
    _host: Sandbox,
}

impl RemotePod {
    /// The pod at `pod_ip`:`port`, served from `elsewhere`:`port` by a process whose executable
    /// is `exe`.
    pub fn start(
        node: &mut Node,
        pod_ip: Ipv4Addr,
        port: u16,
        elsewhere: Ipv4Addr,
        exe: &str,
    ) -> Self {
        let host = node.fabric.host(exe, &[pod_ip, elsewhere]);
        host.dnat_incoming(addr(pod_ip, port), addr(elsewhere, port));
        // And from the pod's address: the server sees neither the client's address nor the
        // one it connected to, so nothing on this node pairs the two ends (as with a server on
        // another node, whose half of the connection this node never observes).
        host.snat_incoming(addr(elsewhere, port), pod_ip);
        let server = Server::start(
            &place(&host, None, node.bins.python(exe)),
            &format!("mtk-{exe}"),
            elsewhere,
            port,
        );
        Self {
            server,
            _host: host,
        }
    }

    /// The payments pod of node-b.
    pub fn payments(node: &mut Node, pod: &PodFixture) -> Self {
        Self::start(
            node,
            pod.ip,
            8080,
            Ipv4Addr::new(10, 250, 0, 7),
            "node-b-bin",
        )
    }
}
