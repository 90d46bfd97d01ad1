//! Container identity from cgroup paths: which container, and which Kubernetes pod, a process
//! runs in, read from `/proc/<pid>/cgroup` or from the cgroup v2 id that eBPF reports.
//!
//! The container runtimes and the kubelet name cgroups after the ids they manage. The names
//! depend on the runtime, on the cgroup driver (systemd or cgroupfs) and a little on the cgroup
//! version:
//!
//! | runtime, driver      | container cgroup                                                    |
//! |----------------------|---------------------------------------------------------------------|
//! | containerd, systemd  | `.../kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope`      |
//! | containerd, systemd (runc's unit spelling, seen with cgroup v1) | `.../kubepods-<qos>-pod<uid_>.slice:cri-containerd:<id>` |
//! | containerd, cgroupfs | `/kubepods/<qos>/pod<uid>/<id>`                                     |
//! | CRI-O, systemd       | `.../crio-<id>.scope`; its monitor: `crio-conmon-<id>.scope`        |
//! | CRI-O, cgroupfs      | `.../pod<uid>/crio-<id>`; its monitor: `crio-conmon-<id>`           |
//! | Docker               | `/docker/<id>`, `/system.slice/docker-<id>.scope`, `.../kubepods-...-pod<uid_>.slice/docker-<id>.scope` |
//! | Podman               | `.../libpod-<id>.scope` (sometimes with a `/container` child); its monitor: `libpod-conmon-<id>.scope` |
//!
//! `<qos>` is `burstable` or `besteffort`; guaranteed pods sit directly under `kubepods`
//! (`kubepods-pod<uid_>.slice`, `/kubepods/pod<uid>`). The systemd driver spells the dashes of the
//! pod UID as underscores (`<uid_>`), because `-` separates the levels of a slice name.
//!
//! Paths are relative to the cgroup namespace of the *reader*. An agent in a private cgroup
//! namespace reads other processes' paths as `/../../kubepods-...`; the `..` segments are skipped
//! and the names below them still identify the container. Nested clusters put a whole node in a
//! container: kind nodes are Docker containers (`/docker/<node id>/kubepods/...`), k3s can run
//! inside a pod. The innermost container wins: a pod cgroup starts a new layer and drops any
//! container found above it.
//!
//! All parsers take untrusted text and never panic.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The shortest id accepted after a runtime prefix. Docker prints 12-character short ids; no
/// runtime names cgroups with fewer.
const MIN_ID_LEN: usize = 12;
/// The longest id accepted. Runtimes use 64 (a SHA-256 in hex); the margin costs nothing.
const MAX_ID_LEN: usize = 128;
/// The length of a full container id. A cgroup named by nothing but hex digits is taken as a
/// container only at this length, so that other hex-named cgroups do not look like containers.
const FULL_ID_LEN: usize = 64;
/// The kernel appends this to a cgroup v2 path whose cgroup was removed (`proc_cgroup_show` in
/// `kernel/cgroup/cgroup.c`).
const DELETED_SUFFIX: &str = " (deleted)";

/// The container runtime that named a cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// containerd's CRI plugin: `cri-containerd-<id>.scope`, `...:cri-containerd:<id>`, and the
    /// leaves of the cgroupfs driver that bear only the id below a pod (see
    /// [`parse_cgroup_path`]).
    Containerd,
    /// CRI-O: `crio-<id>`, `crio-<id>.scope`, and its monitor `crio-conmon-<id>`.
    CriO,
    /// Docker: `docker-<id>.scope` and `/docker/<id>`.
    Docker,
    /// Anything else: Podman (`libpod-<id>`), an id-named cgroup outside Kubernetes and Docker,
    /// or a pod cgroup with no container cgroup below it.
    Unknown,
}

/// The container, and the pod, that one cgroup belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub runtime: Runtime,
    /// The container id: lowercase hex, 12 to 128 characters, normally 64. It can be the id of a
    /// pod sandbox (pause container), whose cgroup holds the pause process. It is `None` when
    /// the cgroup is only known to be a pod's, or is a runtime monitor's (CRI-O's and Podman's
    /// conmon run in `crio-conmon-<id>` / `libpod-conmon-<id>` beside the container).
    pub container_id: Option<String>,
    /// The pod UID in its API form, with dashes (`0125ec2f-b64a-4868-8f5b-94b56cbab864`); the
    /// systemd driver's underscores are turned back into dashes. Static pods are named by their
    /// 32-hex-digit config hash instead (the `kubernetes.io/config.hash` annotation of the
    /// mirror pod), which is returned as it is.
    pub pod_uid: Option<String>,
}

/// Reads the container identity from the whole content of `/proc/<pid>/cgroup`.
///
/// Each line is `hierarchy-ID:controller-list:cgroup-path` (`proc_cgroup_show` in
/// `kernel/cgroup/cgroup.c`): cgroup v1 hierarchies as `N:controllers:/path`, the v2 hierarchy
/// as `0::/path`, and both on hybrid hosts. Lines that do not have this form are ignored. The
/// path may itself contain `:`, so only the first two colons split a line.
///
/// The v2 line is preferred when it names a container. Otherwise the line that tells the most
/// wins: a container id over a pod alone, and the v2 line, then the earlier line, on a tie. On
/// hybrid hosts the v2 line is often `0::/` even for containers, and runtimes do not always join
/// every v1 hierarchy.
///
/// Returns `None` when no line places the process in a container or a pod, for example host
/// processes (`/`, `/system.slice/containerd.service`, `/user.slice/...`).
#[must_use]
pub fn parse_proc_cgroup(content: &str) -> Option<ContainerRef> {
    let mut v2: Option<ContainerRef> = None;
    let mut v1: Option<ContainerRef> = None;
    // v1 lines usually repeat one path for every controller: parse each distinct path once.
    let mut previous_path: Option<&str> = None;
    for line in content.lines() {
        let Some((hierarchy, rest)) = line.split_once(':') else {
            continue;
        };
        let Some((controllers, path)) = rest.split_once(':') else {
            continue;
        };
        if hierarchy.is_empty() || !hierarchy.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let is_v2 = hierarchy == "0" && controllers.is_empty();
        if !is_v2 && previous_path == Some(path) {
            continue;
        }
        if !is_v2 {
            previous_path = Some(path);
        }
        let Some(found) = parse_cgroup_path(path) else {
            continue;
        };
        if is_v2 {
            if found.container_id.is_some() {
                return Some(found);
            }
            if v2.is_none() {
                v2 = Some(found);
            }
        } else if v1.as_ref().is_none_or(|best| rank(&found) > rank(best)) {
            v1 = Some(found);
        }
    }
    match (v2, v1) {
        (Some(v2), Some(v1)) if rank(&v1) > rank(&v2) => Some(v1),
        (Some(v2), _) => Some(v2),
        (None, v1) => v1,
    }
}

/// How much a [`ContainerRef`] tells: a container id counts more than a pod UID.
fn rank(found: &ContainerRef) -> u8 {
    u8::from(found.container_id.is_some()) * 2 + u8::from(found.pod_uid.is_some())
}

/// Reads the container identity from one cgroup path, such as the path of one line of
/// `/proc/<pid>/cgroup` or the result of [`path_of_cgroup_id`].
///
/// The path is read segment by segment, from the root down:
///
/// - a pod segment (`pod<uid>`, or `...-pod<uid_>.slice` with the systemd driver) sets the pod
///   UID and forgets any container seen above it (a kind or k3s node container around the pod);
/// - a container segment (`cri-containerd-<id>.scope`, `crio-<id>[.scope]`, `docker-<id>.scope`,
///   `libpod-<id>.scope`, runc's `<slice>:<prefix>:<id>`, or a bare 64-hex-digit id) replaces
///   the container seen so far, so the innermost one wins;
/// - a runtime monitor segment (`crio-conmon-<id>`, `libpod-conmon-<id>`) is recorded as the
///   runtime without a container id;
/// - other segments (`kubepods.slice`, `burstable`, `/container` and other children that
///   processes create inside their container) change nothing.
///
/// A bare id cannot say which runtime made it. It is reported as [`Runtime::Docker`] under a
/// `docker` cgroup or below `docker.service`, as [`Runtime::Containerd`] below a pod or `kubepods` (the cgroupfs driver of
/// containerd; Kubernetes before 1.24 with dockershim made the same names for Docker), and as
/// [`Runtime::Unknown`] elsewhere. Match container ids without the runtime when it matters.
///
/// Returns `None` when the path names neither a container nor a pod.
#[must_use]
pub fn parse_cgroup_path(path: &str) -> Option<ContainerRef> {
    let path = path.trim();
    let path = path.strip_suffix(DELETED_SUFFIX).unwrap_or(path);
    let mut walk = Walk::default();
    for segment in path.split('/') {
        walk.segment(segment);
    }
    walk.finish()
}

/// The state of [`parse_cgroup_path`] while it goes down one path.
#[derive(Default)]
struct Walk<'a> {
    /// The innermost container (or runtime monitor, with no id) of the current layer.
    container: Option<(Runtime, Option<String>)>,
    pod_uid: Option<String>,
    /// A pod or `kubepods` cgroup is above the current segment.
    in_kubepods: bool,
    /// `docker.service` is above the current segment: Docker's own cgroup parent.
    in_docker_service: bool,
    /// The previous segment that was not empty, `.` or `..`.
    parent: &'a str,
}

impl<'a> Walk<'a> {
    fn segment(&mut self, segment: &'a str) {
        if segment.is_empty() || segment == "." || segment == ".." {
            return;
        }
        // runc turns the systemd cgroupsPath "<slice>:<prefix>:<name>" into the unit
        // "<prefix>-<name>.scope" in that slice. Some containerd setups on cgroup v1 show the
        // unspelled form as one segment instead.
        if let Some((slice, unit)) = segment.split_once(':')
            && let Some((prefix, name)) = unit.split_once(':')
        {
            self.name(slice);
            if let Some(id) = container_id(name) {
                self.container = Some((runtime_of_unit_prefix(prefix), Some(id)));
            }
        } else {
            self.name(segment);
        }
        self.parent = segment;
    }

    /// Applies one cgroup name (a segment, or the slice part of a runc unit spelling).
    fn name(&mut self, name: &str) {
        if let Some(uid) = pod_uid(name) {
            self.pod_uid = Some(uid);
            self.container = None;
            self.in_kubepods = true;
        } else if name.contains("kubepods") {
            self.in_kubepods = true;
        } else if name == "docker.service" {
            self.in_docker_service = true;
        } else if let Some(found) = self.container_of(name) {
            self.container = Some(found);
        }
    }

    /// The runtime and container id that a cgroup name stands for, if it is a container's or
    /// a runtime monitor's cgroup.
    fn container_of(&self, name: &str) -> Option<(Runtime, Option<String>)> {
        let unit = name.strip_suffix(".scope").unwrap_or(name);
        for (prefix, runtime, role) in PREFIXES {
            if let Some(id) = unit.strip_prefix(prefix) {
                let id = container_id(id)?;
                let id = (*role == Role::Container).then_some(id);
                return Some((runtime.clone(), id));
            }
        }
        if name.len() != FULL_ID_LEN {
            return None;
        }
        let id = container_id(name)?;
        let runtime = if self.parent == "docker" || self.in_docker_service {
            Runtime::Docker
        } else if self.in_kubepods {
            Runtime::Containerd
        } else {
            Runtime::Unknown
        };
        Some((runtime, Some(id)))
    }

    fn finish(self) -> Option<ContainerRef> {
        let (runtime, container_id) = self.container.unwrap_or((Runtime::Unknown, None));
        if container_id.is_none() && self.pod_uid.is_none() {
            return None;
        }
        Some(ContainerRef {
            runtime,
            container_id,
            pod_uid: self.pod_uid,
        })
    }
}

/// What a prefixed cgroup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The container's own processes.
    Container,
    /// The runtime's monitor for that container (conmon), which is not in the container.
    Monitor,
}

/// Name prefixes of container cgroups, each before any shorter prefix it starts with
/// (`crio-conmon-` before `crio-`).
const PREFIXES: &[(&str, Runtime, Role)] = &[
    ("cri-containerd-", Runtime::Containerd, Role::Container),
    ("crio-conmon-", Runtime::CriO, Role::Monitor),
    ("crio-", Runtime::CriO, Role::Container),
    ("docker-", Runtime::Docker, Role::Container),
    ("libpod-conmon-", Runtime::Unknown, Role::Monitor),
    ("libpod-", Runtime::Unknown, Role::Container),
];

/// The runtime behind the `<prefix>` of runc's `<slice>:<prefix>:<name>` spelling.
fn runtime_of_unit_prefix(prefix: &str) -> Runtime {
    match prefix {
        "cri-containerd" => Runtime::Containerd,
        "crio" => Runtime::CriO,
        "docker" => Runtime::Docker,
        _ => Runtime::Unknown,
    }
}

/// `id` as a container id: 12 to 128 lowercase hex digits.
fn container_id(id: &str) -> Option<String> {
    let valid = (MIN_ID_LEN..=MAX_ID_LEN).contains(&id.len()) && id.bytes().all(is_lower_hex);
    valid.then(|| id.to_owned())
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// The pod UID in a pod cgroup name: `pod<uid>` (cgroupfs driver), or a systemd slice whose last
/// `-` level is `pod<uid_>` (`kubepods-besteffort-pod<uid_>.slice`, `kubepods-pod<uid_>.slice`,
/// kind's `kubelet-kubepods-...-pod<uid_>.slice`).
fn pod_uid(name: &str) -> Option<String> {
    if let Some(slice) = name.strip_suffix(".slice") {
        let last = slice.rsplit('-').next()?;
        return normalize_uid(last.strip_prefix("pod")?, b'_');
    }
    normalize_uid(name.strip_prefix("pod")?, b'-')
}

/// A UID spelled with `separator` (`8-4-4-4-12` hex digits) with dashes, or a static pod's 32
/// hex digits as they are. Both lowercase.
fn normalize_uid(uid: &str, separator: u8) -> Option<String> {
    let bytes = uid.as_bytes();
    let valid = match bytes.len() {
        32 => bytes.iter().all(|&b| is_lower_hex(b)),
        36 => bytes.iter().enumerate().all(|(i, &b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == separator
            } else {
                is_lower_hex(b)
            }
        }),
        _ => false,
    };
    valid.then(|| uid.replace(char::from(separator), "-"))
}

/// The mount point of the first cgroup2 file system in `mountinfo`, the content of
/// `/proc/self/mountinfo`: `/sys/fs/cgroup` on cgroup v2 hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones, `None` on v1-only ones.
///
/// A line is `id parent major:minor root mount-point options [optional fields...] - fstype
/// source super-options` (proc(5)). The mount point is field 5; the kernel writes space, tab,
/// newline and backslash in it as `\ooo` octal escapes, which are decoded.
#[must_use]
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs_fields) = line.split_once(" - ")?;
        if fs_fields.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mount_point = unescape_mountinfo(mount.split(' ').nth(4)?)?;
        mount_point.is_absolute().then_some(mount_point)
    })
}

/// Decodes the `\ooo` octal escapes of a mountinfo field (`mangle` in `fs/proc_namespace.c`).
/// A backslash that does not start three octal digits is kept as it is.
fn unescape_mountinfo(field: &str) -> Option<PathBuf> {
    if field.is_empty() {
        return None;
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let [b'\\', a, b, c, ..] = bytes[i..]
            && [a, b, c].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value =
                (u32::from(a - b'0') << 6) | (u32::from(b - b'0') << 3) | u32::from(c - b'0');
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Some(PathBuf::from(OsString::from_vec(out)))
}

/// Finds the cgroup whose id is `cgroup_id` below `root`, a cgroup v2 mount point (see
/// [`cgroup2_mount`]), and returns its path relative to `root`, starting with `/` (`/` is `root`
/// itself). Pass the result to [`parse_cgroup_path`].
///
/// A cgroup v2 id, as `bpf_get_current_cgroup_id` returns it, is the inode number of the
/// cgroup's directory in kernfs. Before Linux 5.5 the id held the kernfs generation in its high
/// 32 bits and the inode number in the low ones; an id above `u32::MAX` that matches no inode
/// whole is matched by its low 32 bits.
///
/// The search goes breadth first, reads at most `max_dirs` directories and compares the inode
/// numbers that `readdir` returns, so it makes no `stat` call per entry. Directories that vanish
/// or cannot be read during the walk are skipped, as are names that are not UTF-8 and symbolic
/// links. Returns `None` when the id is not found within the budget or `root` cannot be read.
#[must_use]
pub fn path_of_cgroup_id(root: &Path, cgroup_id: u64, max_dirs: usize) -> Option<String> {
    let root_inode = match fs::metadata(root) {
        Ok(metadata) => metadata.ino(),
        Err(e) => {
            log::debug!("cannot read cgroup root {}: {e}", root.display());
            return None;
        }
    };
    if inode_is_cgroup_id(root_inode, cgroup_id) {
        return Some("/".to_owned());
    }
    let mut pending: VecDeque<(PathBuf, String)> = VecDeque::new();
    pending.push_back((root.to_path_buf(), String::new()));
    let mut walked = 0;
    while let Some((dir, relative)) = pending.pop_front() {
        if walked >= max_dirs {
            return None;
        }
        walked += 1;
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let child = format!("{relative}/{name}");
            if inode_is_cgroup_id(entry.ino(), cgroup_id) {
                return Some(child);
            }
            pending.push_back((entry.path(), child));
        }
    }
    None
}

/// Whether a kernfs inode number is the cgroup id `id` (see [`path_of_cgroup_id`]).
fn inode_is_cgroup_id(inode: u64, id: u64) -> bool {
    inode == id || (id > u64::from(u32::MAX) && inode == id & u64::from(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn container(runtime: Runtime, id: &str, pod: Option<&str>) -> Option<ContainerRef> {
        Some(ContainerRef {
            runtime,
            container_id: Some(id.to_owned()),
            pod_uid: pod.map(str::to_owned),
        })
    }

    fn pod_only(runtime: Runtime, pod: &str) -> Option<ContainerRef> {
        Some(ContainerRef {
            runtime,
            container_id: None,
            pod_uid: Some(pod.to_owned()),
        })
    }

    // ---- Golden samples: real /proc/<pid>/cgroup dumps and cgroup paths ----------------------
    //
    // Each sample names where it was published. Long v1 dumps are shortened to a few of their
    // lines (all lines of such a dump carry the same path); nothing else is changed unless the
    // comment says so.

    /// containerd with the systemd driver on cgroup v1 (Bottlerocket, EKS). From
    /// neuvector/neuvector share/system/cgroup_test.go, `TestK8sBottleRocket`.
    const CONTAINERD_SYSTEMD_V1: &str = "\
11:cpuset:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poddd1bf9d1_241d_47f5_8e25_12de83135812.slice/cri-containerd-f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830.scope
10:blkio:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poddd1bf9d1_241d_47f5_8e25_12de83135812.slice/cri-containerd-f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830.scope
5:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poddd1bf9d1_241d_47f5_8e25_12de83135812.slice/cri-containerd-f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830.scope
";

    /// containerd configured with `SystemdCgroup` while the kubelet passes a slice: runc's
    /// `<slice>:cri-containerd:<id>` spelling shows up in the v1 paths, some under
    /// `/system.slice/containerd.service`. From open-telemetry/opentelemetry-java#4507
    /// (<https://github.com/open-telemetry/opentelemetry-java/issues/4507>).
    const CONTAINERD_UNIT_SPELLING_V1: &str = "\
11:perf_event:/kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice:cri-containerd:ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459
10:blkio:/system.slice/containerd.service/kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice:cri-containerd:ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459
9:cpuacct,cpu:/system.slice/containerd.service/kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice:cri-containerd:ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459
";

    /// kind (containerd, systemd driver, cgroup v2, kubelet cgroup root `kubelet.slice`). The
    /// cgroup is from the absolutePath logged in containerd/nri#227
    /// (<https://github.com/containerd/nri/pull/227>); kubernetes-sigs/kind#3947 shows the same
    /// `0::/kubelet.slice/...` form in a kind node's /proc/<pid>/cgroup.
    const KIND_CONTAINERD_V2: &str = "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod1e597579_417e_482f_bf65_5fe170c3aebd.slice/cri-containerd-a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e.scope\n";

    /// k3s (containerd, cgroupfs driver, cgroup v2). From rancher/k3k#792
    /// (<https://github.com/rancher/k3k/pull/792>), `cat /proc/142989/cgroup`.
    const K3S_CGROUPFS_V2: &str = "0::/kubepods/burstable/pod404bd273-57bc-4508-a386-e2b76d3c9cfe/3aaaa76f09e1de6bb75e84f9c15b737a2d590f69757953e3ec262bd5861dc15b\n";

    /// cgroupfs driver on cgroup v1, besteffort. From neuvector/neuvector
    /// share/system/cgroup_test.go, `TestDockerIDKubepods`.
    const CGROUPFS_BESTEFFORT_V1: &str = "\
11:devices:/kubepods/besteffort/pod74ba62da-1a3d-11e7-bb11-080027cb0e22/cb1eadb7abe3a6545e9856411207073277838e1bdc003337c2f8685faeedc32c
10:memory:/kubepods/besteffort/pod74ba62da-1a3d-11e7-bb11-080027cb0e22/cb1eadb7abe3a6545e9856411207073277838e1bdc003337c2f8685faeedc32c
1:name=systemd:/kubepods/besteffort/pod74ba62da-1a3d-11e7-bb11-080027cb0e22/cb1eadb7abe3a6545e9856411207073277838e1bdc003337c2f8685faeedc32c";

    /// cgroupfs driver, burstable, on a host with the `rdma:/` line and merged controllers. From
    /// duckdb/duckdb#16608 (<https://github.com/duckdb/duckdb/pull/16608>).
    const CGROUPFS_BURSTABLE_V1: &str = "\
12:rdma:/
11:freezer:/kubepods/burstable/podc101fead-5fa2-4525-97af-5894973b336e/2b7a2f7fb72575bb50a46d68cceaf43a12a597184714cb33af2f6420f5314293
3:cpu,cpuacct:/kubepods/burstable/podc101fead-5fa2-4525-97af-5894973b336e/2b7a2f7fb72575bb50a46d68cceaf43a12a597184714cb33af2f6420f5314293
";

    /// CRI-O with the systemd driver on cgroup v1, with a `files:/` line. From
    /// opencontainers/runc#4620 (<https://github.com/opencontainers/runc/issues/4620>),
    /// `cat /proc/21689/cgroup`.
    const CRIO_SYSTEMD_V1: &str = "\
13:freezer:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda5c1f8d5_1919_434d_add7_4afaafdaef89.slice/crio-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c.scope
12:cpuset:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda5c1f8d5_1919_434d_add7_4afaafdaef89.slice/crio-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c.scope
11:files:/
";

    /// CRI-O's conmon with `conmon_cgroup = "system.slice"`: a host process, not in the pod.
    /// From istio/istio#55139 (<https://github.com/istio/istio/issues/55139>), kubeadm + CRI-O.
    const CRIO_CONMON_SYSTEM_SLICE: &str = "\
13:hugetlb:/
0::/system.slice/crio-conmon-c055fa05e5c1c20cc4ef3e2ebd180ab360b5369538c9b7cd536b3e6c58311b39.scope
";

    /// Docker on a Debian host, cgroupfs driver: `/docker/<id>`. From neuvector/neuvector
    /// share/system/cgroup_test.go, `TestDockerIDUbuntu`.
    const DOCKER_CGROUPFS_V1: &str = "\
12:name=systemd:/docker/31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30
11:hugetlb:/docker/31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30
1:cpuset:/docker/31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30
";

    /// Docker on CentOS, systemd driver: `/system.slice/docker-<id>.scope`. From
    /// neuvector/neuvector share/system/cgroup_test.go, `TestDockerIDCentOS`.
    const DOCKER_SYSTEMD_V1: &str = "\
10:devices:/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope
2:cpuacct,cpu:/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope
1:name=systemd:/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope
";

    /// Kubernetes with Docker and the systemd driver, burstable, with `rdma:/`. From lxc/lxc#3890
    /// (<https://github.com/lxc/lxc/issues/3890>), a CI log, timestamps removed.
    const DOCKER_KUBEPODS_SYSTEMD_V1: &str = "\
12:rdma:/
11:freezer:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7d4424e6_bb13_42f4_a47a_45a4828bf54d.slice/docker-d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98.scope
10:pids:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7d4424e6_bb13_42f4_a47a_45a4828bf54d.slice/docker-d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98.scope
";

    /// Docker on a cgroup v2 host, read from another container's private cgroup namespace. From
    /// neuvector/neuvector share/system/cgroup_test.go, `TestDockerK8s_Ubuntu_Container_Cgroupv2`.
    const PRIVATE_CGROUPNS_V2: &str = "0::/../../kubepods-besteffort-podfd698699_eabf_4c23_92ef_cf0bbdb78261.slice/docker-2cc65c162ca1388b6b8d5ccfb701d22fc96675ccf8b2f1590c490c2c4039547f.scope\n";

    /// Docker in Docker on RancherOS: the inner container wins. From neuvector/neuvector
    /// share/system/cgroup_test.go, `TestDockerIDRancherOS`.
    const DOCKER_IN_DOCKER_V1: &str = "\
9:name=systemd:/docker/a9a5ad238e59234193ee7ec3fcff5e735b3708ea1068826952255b69e3cfa413/docker/ec08435e04266c5ba381fccbb829f626d11d8ddf5f8f547263c7a2d79ab4787a
8:memory:/docker/a9a5ad238e59234193ee7ec3fcff5e735b3708ea1068826952255b69e3cfa413/docker/ec08435e04266c5ba381fccbb829f626d11d8ddf5f8f547263c7a2d79ab4787a
";

    /// RKE on RancherOS: the kubelet runs in a Docker container, so some hierarchies show the
    /// pods below `/docker/<kubelet container>`, like kind nodes on cgroup v1. From rancher/os#2967
    /// (<https://github.com/rancher/os/issues/2967>); the excerpt cuts the cpuset line
    /// after `besteffort`, completed here with the pod and container of its name=systemd line.
    const NESTED_NODE_V1: &str = "\
11:name=systemd:/kubepods/besteffort/pod7e241a28-b013-481e-9e00-cbe6f00b5eaf/6b5583d73d20fa6da209e4d628a0c27395815f6613cb0a2c7e0e5b64507b210c
10:cpuset:/docker/8ec3e6062e1825067fddaa64bfb839cb47579b4bfe49c4dd9d486ff81c35a479/kubepods/besteffort/pod7e241a28-b013-481e-9e00-cbe6f00b5eaf/6b5583d73d20fa6da209e4d628a0c27395815f6613cb0a2c7e0e5b64507b210c
";

    /// A container that made a child cgroup for itself (kube-proxy in old kubeadm setups). From
    /// neuvector/neuvector share/system/cgroup_test.go, `TestK8sProxyProcess`.
    const CHILD_CGROUP_V1: &str = "\
11:freezer:/kubepods/besteffort/podf8a694f2-7c08-11e9-98da-000c29077430/c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903/kube-proxy
1:name=systemd:/kubepods/besteffort/podf8a694f2-7c08-11e9-98da-000c29077430/c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903/kube-proxy
";

    /// Podman with the systemd driver on a hybrid host: the v2 line names the container and
    /// name=systemd has an `init.scope` child (systemd inside the container). From
    /// podman-container-tools/podman#10602
    /// (<https://github.com/podman-container-tools/podman/issues/10602>); the excerpt cuts the
    /// v2 line after `libpod-2521e`, completed with the id of the other lines.
    const PODMAN_HYBRID: &str = "\
12:pids:/machine.slice/libpod-2521e906f0a0c758c3a7dc4fd68c197e32e96abb4b36807d0b0ede6d014a7c24.scope
1:name=systemd:/machine.slice/libpod-2521e906f0a0c758c3a7dc4fd68c197e32e96abb4b36807d0b0ede6d014a7c24.scope/init.scope
0::/machine.slice/libpod-2521e906f0a0c758c3a7dc4fd68c197e32e96abb4b36807d0b0ede6d014a7c24.scope
";

    /// Rootful Podman on cgroup v2 under the user manager, with crun's `container` child. From
    /// podman-container-tools/podman#20423
    /// (<https://github.com/podman-container-tools/podman/issues/20423>).
    const PODMAN_V2: &str = "0::/user.slice/user-0.slice/user@0.service/machine.slice/libpod-cf21d19260ace8544fe8b769fc2638bf2c0873dfbfff0b6253f0569b26a1d5eb.scope/container\n";

    /// The kubelet and Docker disagreeing on the driver (Kubernetes 1.5): a systemd-style pod
    /// slice (`BestEffort-pod<uid_>.slice`, before the `kubepods` names) under Docker's service,
    /// with a bare container id. From kubernetes/kubernetes#36807
    /// (<https://github.com/kubernetes/kubernetes/issues/36807>).
    const MISMATCHED_DRIVERS_V1: &str = "11:memory:/system.slice/docker.service/BestEffort.slice/BestEffort-pod0d33f94b_ab1a_11e6_9e1a_68f7281d8004.slice/0c34bcd7d02f321d0df7aa6ea703285b02abebc9096c5128c14091fc43ea1f3b\n";

    // Host processes, in which there is nothing to find.

    /// From neuvector/neuvector share/system/cgroup_test.go, `TestHostProcess` (shortened).
    const HOST_ROOT_V1: &str = "\
14:name=dsystemd:/
13:name=systemd:/
5:memory:/
1:cpuset:/";
    /// From neuvector/neuvector share/system/cgroup_test.go, `TestNsEnterProcess` (shortened).
    const HOST_SESSION_V1: &str = "\
13:name=systemd:/user/1000.user/c2.session
12:pids:/
5:memory:/user/1000.user/c2.session
1:cpuset:/";
    /// This machine's own /proc/self/cgroup when this module was written: a hybrid host whose
    /// memory hierarchy has a 32-hex-digit cgroup that is not a container id.
    const THIS_MACHINE: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/b144ae114a6eab57dc8f8242d3ca3449
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";
    /// From neuvector/neuvector share/system/cgroup_test.go, `TestCrio_Host_Proc1_Cgroupv2`.
    const HOST_INIT_V2: &str = "0::/init.scope\n";
    /// containerd itself, in the cgroup systemd gives its unit (constructed, not copied).
    const CONTAINERD_SERVICE_V2: &str = "0::/system.slice/containerd.service\n";

    #[test]
    fn containerd_forms() {
        assert_eq!(
            parse_proc_cgroup(CONTAINERD_SYSTEMD_V1),
            container(
                Runtime::Containerd,
                "f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830",
                Some("dd1bf9d1-241d-47f5-8e25-12de83135812")
            )
        );
        assert_eq!(
            parse_proc_cgroup(CONTAINERD_UNIT_SPELLING_V1),
            container(
                Runtime::Containerd,
                "ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459",
                Some("0125ec2f-b64a-4868-8f5b-94b56cbab864")
            )
        );
        assert_eq!(
            parse_proc_cgroup(KIND_CONTAINERD_V2),
            container(
                Runtime::Containerd,
                "a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e",
                Some("1e597579-417e-482f-bf65-5fe170c3aebd")
            )
        );
        assert_eq!(
            parse_proc_cgroup(K3S_CGROUPFS_V2),
            container(
                Runtime::Containerd,
                "3aaaa76f09e1de6bb75e84f9c15b737a2d590f69757953e3ec262bd5861dc15b",
                Some("404bd273-57bc-4508-a386-e2b76d3c9cfe")
            )
        );
        // The relative path that containerd's NRI reports for the same kind container
        // (containerd/nri#227) is runc's unit spelling without a leading slash.
        assert_eq!(
            parse_cgroup_path(
                "kubelet-kubepods-besteffort-pod1e597579_417e_482f_bf65_5fe170c3aebd.slice:cri-containerd:a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e"
            ),
            container(
                Runtime::Containerd,
                "a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e",
                Some("1e597579-417e-482f-bf65-5fe170c3aebd")
            )
        );
    }

    #[test]
    fn cgroupfs_driver_qos_classes() {
        assert_eq!(
            parse_proc_cgroup(CGROUPFS_BESTEFFORT_V1),
            container(
                Runtime::Containerd,
                "cb1eadb7abe3a6545e9856411207073277838e1bdc003337c2f8685faeedc32c",
                Some("74ba62da-1a3d-11e7-bb11-080027cb0e22")
            )
        );
        assert_eq!(
            parse_proc_cgroup(CGROUPFS_BURSTABLE_V1),
            container(
                Runtime::Containerd,
                "2b7a2f7fb72575bb50a46d68cceaf43a12a597184714cb33af2f6420f5314293",
                Some("c101fead-5fa2-4525-97af-5894973b336e")
            )
        );
        // Guaranteed pods have no QoS level. kubernetes/kubernetes#94104 lists a kind node's
        // `/kubepods/pode48d9140-...` (a guaranteed pod) and `.../burstable/pode3e7e53f...` (a
        // static pod, named by its config hash) next to each other.
        assert_eq!(
            parse_cgroup_path("/kubepods/pode48d9140-f441-4b0f-b642-f0179a167e74"),
            pod_only(Runtime::Unknown, "e48d9140-f441-4b0f-b642-f0179a167e74")
        );
        assert_eq!(
            parse_cgroup_path("/kubepods/burstable/pode3e7e53f7a71dbba7e64b7dae53fcdca"),
            pod_only(Runtime::Unknown, "e3e7e53f7a71dbba7e64b7dae53fcdca")
        );
    }

    #[test]
    fn systemd_driver_qos_classes() {
        // Guaranteed: `kubepods-pod<uid>.slice`, from the systemd-cgls tree in
        // kubernetes/kubernetes#62896 (<https://github.com/kubernetes/kubernetes/issues/62896>).
        assert_eq!(
            parse_cgroup_path(
                "/kubepods.slice/kubepods-pod10231429_28f6_11e8_8903_74dbd1a06fe0.slice/docker-32cc26191dad2120ae02fbe32e3cb962c291591439f28765da6c2b8dd28d7e48.scope"
            ),
            container(
                Runtime::Docker,
                "32cc26191dad2120ae02fbe32e3cb962c291591439f28765da6c2b8dd28d7e48",
                Some("10231429-28f6-11e8-8903-74dbd1a06fe0")
            )
        );
        assert_eq!(
            parse_proc_cgroup(DOCKER_KUBEPODS_SYSTEMD_V1),
            container(
                Runtime::Docker,
                "d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98",
                Some("7d4424e6-bb13-42f4-a47a-45a4828bf54d")
            )
        );
        // A static pod's slice, from the cgroup tree in netdata/netdata#4868
        // (<https://github.com/netdata/netdata/issues/4868>).
        assert_eq!(
            parse_cgroup_path(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8daa50c3a64c9ff60bb9eab7b44b56fd.slice/cri-containerd-2884d57c0e100d7a9a2f9487ce0bc2986bca3430e988af7a4865aff061f51ac5.scope"
            ),
            container(
                Runtime::Containerd,
                "2884d57c0e100d7a9a2f9487ce0bc2986bca3430e988af7a4865aff061f51ac5",
                Some("8daa50c3a64c9ff60bb9eab7b44b56fd")
            )
        );
        // A process directly in a pod slice (not yet in a container scope).
        assert_eq!(
            parse_cgroup_path(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0bacf352_28f6_11e8_8903_74dbd1a06fe0.slice"
            ),
            pod_only(Runtime::Unknown, "0bacf352-28f6-11e8-8903-74dbd1a06fe0")
        );
        assert_eq!(
            parse_proc_cgroup(MISMATCHED_DRIVERS_V1),
            container(
                Runtime::Docker,
                "0c34bcd7d02f321d0df7aa6ea703285b02abebc9096c5128c14091fc43ea1f3b",
                Some("0d33f94b-ab1a-11e6-9e1a-68f7281d8004")
            )
        );
    }

    #[test]
    fn crio_forms() {
        assert_eq!(
            parse_proc_cgroup(CRIO_SYSTEMD_V1),
            container(
                Runtime::CriO,
                "5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c",
                Some("a5c1f8d5-1919-434d-add7-4afaafdaef89")
            )
        );
        // conmon in the pod (`conmon_cgroup = "pod"`): the pod, not a container. The path is
        // the CGroup line of `systemctl status crio-conmon-...` in opencontainers/runc#4620.
        assert_eq!(
            parse_cgroup_path(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod207aaad1_659f_4db8_88e0_46e0cdcc3004.slice/crio-conmon-32da98c8522068be05a7510a3eddb09cad6ed2f03286180d0e931d0d0b6224a6.scope"
            ),
            pod_only(Runtime::CriO, "207aaad1-659f-4db8-88e0-46e0cdcc3004")
        );
        // conmon in system.slice identifies nothing.
        assert_eq!(parse_proc_cgroup(CRIO_CONMON_SYSTEM_SLICE), None);
        // OpenShift (CRI-O, cgroup v2): the sandbox cgroup has no `.scope`, the container's
        // has. From the absolutePaths logged in containerd/nri#227.
        assert_eq!(
            parse_cgroup_path(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod35550f44_f691_427e_b57d_ab6127d2cb65.slice/crio-468f848e2ebec7203ed55748d08337851af589ac42eb551c572446a5c68fe631"
            ),
            container(
                Runtime::CriO,
                "468f848e2ebec7203ed55748d08337851af589ac42eb551c572446a5c68fe631",
                Some("35550f44-f691-427e-b57d-ab6127d2cb65")
            )
        );
        assert_eq!(
            parse_proc_cgroup(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod35550f44_f691_427e_b57d_ab6127d2cb65.slice/crio-805b902ed98fdc1409c76e9aa94964787a904c80f46fc3ee74283509108f5e73.scope\n"
            ),
            container(
                Runtime::CriO,
                "805b902ed98fdc1409c76e9aa94964787a904c80f46fc3ee74283509108f5e73",
                Some("35550f44-f691-427e-b57d-ab6127d2cb65")
            )
        );
        // The same as NRI's relative path (runc's unit spelling with `crio`).
        assert_eq!(
            parse_cgroup_path(
                "kubepods-burstable-pod35550f44_f691_427e_b57d_ab6127d2cb65.slice:crio:805b902ed98fdc1409c76e9aa94964787a904c80f46fc3ee74283509108f5e73"
            ),
            container(
                Runtime::CriO,
                "805b902ed98fdc1409c76e9aa94964787a904c80f46fc3ee74283509108f5e73",
                Some("35550f44-f691-427e-b57d-ab6127d2cb65")
            )
        );
        // cgroupfs driver: `crio-conmon-<id>` beside the container in the pod directory, from a
        // Kata Containers host-cgroups design note (an older text than today's
        // docs/design/host-cgroups.md in kata-containers/kata-containers); the container itself
        // is `crio-<id>` there (cri-o/cri-o#812, <https://github.com/cri-o/cri-o/pull/812>).
        assert_eq!(
            parse_cgroup_path(
                "/kubepods/burstable/pod1cc61d33-5ca1-11e9-90bc-525400cfa589/crio-conmon-1b05886a39901ef3a7555796d38dcfaafd8fda929aef223ea576324a4949f9ef"
            ),
            pod_only(Runtime::CriO, "1cc61d33-5ca1-11e9-90bc-525400cfa589")
        );
        assert_eq!(
            parse_cgroup_path(
                "/kubepods/burstable/pod1cc61d33-5ca1-11e9-90bc-525400cfa589/crio-1b05886a39901ef3a7555796d38dcfaafd8fda929aef223ea576324a4949f9ef"
            ),
            container(
                Runtime::CriO,
                "1b05886a39901ef3a7555796d38dcfaafd8fda929aef223ea576324a4949f9ef",
                Some("1cc61d33-5ca1-11e9-90bc-525400cfa589")
            )
        );
        // crun's `container` child below the scope.
        assert_eq!(
            parse_cgroup_path(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod35550f44_f691_427e_b57d_ab6127d2cb65.slice/crio-805b902ed98fdc1409c76e9aa94964787a904c80f46fc3ee74283509108f5e73.scope/container"
            ),
            container(
                Runtime::CriO,
                "805b902ed98fdc1409c76e9aa94964787a904c80f46fc3ee74283509108f5e73",
                Some("35550f44-f691-427e-b57d-ab6127d2cb65")
            )
        );
    }

    #[test]
    fn docker_forms() {
        assert_eq!(
            parse_proc_cgroup(DOCKER_CGROUPFS_V1),
            container(
                Runtime::Docker,
                "31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30",
                None
            )
        );
        assert_eq!(
            parse_proc_cgroup(DOCKER_SYSTEMD_V1),
            container(
                Runtime::Docker,
                "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d",
                None
            )
        );
        assert_eq!(
            parse_proc_cgroup(DOCKER_IN_DOCKER_V1),
            container(
                Runtime::Docker,
                "ec08435e04266c5ba381fccbb829f626d11d8ddf5f8f547263c7a2d79ab4787a",
                None
            )
        );
        // Docker on cgroup v2 read from another container's cgroup namespace, from
        // neuvector/neuvector share/system/cgroup_test.go, `TestDockerNative_Container_Cgroupv2`.
        assert_eq!(
            parse_proc_cgroup(
                "0::/../docker-1f1d6e2d4940ddac13abd421a2617992bf89f0e0f9a902ed58278c5f843e9ae7.scope\n"
            ),
            container(
                Runtime::Docker,
                "1f1d6e2d4940ddac13abd421a2617992bf89f0e0f9a902ed58278c5f843e9ae7",
                None
            )
        );
        // A mount unit named after a scope is no cgroup of a container.
        assert_eq!(
            parse_cgroup_path(
                "/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope.mount"
            ),
            None
        );
    }

    #[test]
    fn private_cgroup_namespace() {
        assert_eq!(
            parse_proc_cgroup(PRIVATE_CGROUPNS_V2),
            container(
                Runtime::Docker,
                "2cc65c162ca1388b6b8d5ccfb701d22fc96675ccf8b2f1590c490c2c4039547f",
                Some("fd698699-eabf-4c23-92ef-cf0bbdb78261")
            )
        );
        // The k3s form `/../../kubepods.slice/...` of the brief, with the k3k pod above.
        assert_eq!(
            parse_cgroup_path(
                "/../../kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod33baea74_f206_4f95_9893_c56282acda4e.slice/cri-containerd-3aaaa76f09e1de6bb75e84f9c15b737a2d590f69757953e3ec262bd5861dc15b.scope"
            ),
            container(
                Runtime::Containerd,
                "3aaaa76f09e1de6bb75e84f9c15b737a2d590f69757953e3ec262bd5861dc15b",
                Some("33baea74-f206-4f95-9893-c56282acda4e")
            )
        );
        // A process reading its own cgroup in its own namespace sees `/`.
        assert_eq!(parse_proc_cgroup("0::/\n"), None);
    }

    #[test]
    fn nested_nodes_innermost_container_wins() {
        assert_eq!(
            parse_proc_cgroup(NESTED_NODE_V1),
            container(
                Runtime::Containerd,
                "6b5583d73d20fa6da209e4d628a0c27395815f6613cb0a2c7e0e5b64507b210c",
                Some("7e241a28-b013-481e-9e00-cbe6f00b5eaf")
            )
        );
        // minikube's docker driver with CRI-O: the node is `/docker/<id>`, from the
        // `systemctl status kubepods.slice` tree in kubernetes/minikube#11280
        // (<https://github.com/kubernetes/minikube/issues/11280>).
        assert_eq!(
            parse_cgroup_path(
                "/docker/d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2ca4a155_3599_498d_bb9d_4446693fa3ea.slice/crio-358607a37e7ada357032e7f5729c9ae6a3efdb7962acbcbe47ff6a3c5506cb1c.scope"
            ),
            container(
                Runtime::CriO,
                "358607a37e7ada357032e7f5729c9ae6a3efdb7962acbcbe47ff6a3c5506cb1c",
                Some("2ca4a155-3599-498d-bb9d-4446693fa3ea")
            )
        );
        // A pod of a nested node without a container yet: the node's container is dropped.
        assert_eq!(
            parse_cgroup_path(
                "/docker/d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2ca4a155_3599_498d_bb9d_4446693fa3ea.slice"
            ),
            pod_only(Runtime::Unknown, "2ca4a155-3599-498d-bb9d-4446693fa3ea")
        );
        // The node itself (its containerd or kubelet) is just in the node's container.
        assert_eq!(
            parse_cgroup_path(
                "/docker/d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22/system.slice/containerd.service"
            ),
            container(
                Runtime::Docker,
                "d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22",
                None
            )
        );
        // k3s in a pod (k3k's virtual clusters, rancher/k3k#792): the k3s server pod's scope,
        // then the inner cluster's cgroupfs pods below it. Assembled from the two paths that PR
        // shows.
        assert_eq!(
            parse_cgroup_path(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod33baea74_f206_4f95_9893_c56282acda4e.slice/cri-containerd-f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830.scope/kubepods/burstable/pod404bd273-57bc-4508-a386-e2b76d3c9cfe/3aaaa76f09e1de6bb75e84f9c15b737a2d590f69757953e3ec262bd5861dc15b"
            ),
            container(
                Runtime::Containerd,
                "3aaaa76f09e1de6bb75e84f9c15b737a2d590f69757953e3ec262bd5861dc15b",
                Some("404bd273-57bc-4508-a386-e2b76d3c9cfe")
            )
        );
    }

    #[test]
    fn child_cgroups_of_a_container_keep_it() {
        assert_eq!(
            parse_proc_cgroup(CHILD_CGROUP_V1),
            container(
                Runtime::Containerd,
                "c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903",
                Some("f8a694f2-7c08-11e9-98da-000c29077430")
            )
        );
    }

    #[test]
    fn podman_forms() {
        assert_eq!(
            parse_proc_cgroup(PODMAN_HYBRID),
            container(
                Runtime::Unknown,
                "2521e906f0a0c758c3a7dc4fd68c197e32e96abb4b36807d0b0ede6d014a7c24",
                None
            )
        );
        assert_eq!(
            parse_proc_cgroup(PODMAN_V2),
            container(
                Runtime::Unknown,
                "cf21d19260ace8544fe8b769fc2638bf2c0873dfbfff0b6253f0569b26a1d5eb",
                None
            )
        );
        assert_eq!(
            parse_cgroup_path(
                "/machine.slice/libpod-conmon-cf21d19260ace8544fe8b769fc2638bf2c0873dfbfff0b6253f0569b26a1d5eb.scope"
            ),
            None
        );
    }

    #[test]
    fn host_processes_are_not_in_containers() {
        for sample in [
            HOST_ROOT_V1,
            HOST_SESSION_V1,
            THIS_MACHINE,
            HOST_INIT_V2,
            CONTAINERD_SERVICE_V2,
            "0::/system.slice/docker.service\n",
            "0::/kubepods.slice/kubepods-burstable.slice\n",
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/podman-6696.scope\n",
            "",
            "\n\n",
        ] {
            assert_eq!(parse_proc_cgroup(sample), None, "{sample:?}");
        }
    }

    #[test]
    fn hybrid_files_prefer_the_v2_line_with_a_container() {
        let v1_id = "a".repeat(64);
        let v2_id = "b".repeat(64);
        // The v2 line names a container: it wins over v1 lines that name another.
        let both = format!(
            "2:memory:/docker/{v1_id}\n1:name=systemd:/docker/{v1_id}\n0::/system.slice/docker-{v2_id}.scope\n"
        );
        assert_eq!(
            parse_proc_cgroup(&both),
            container(Runtime::Docker, &v2_id, None)
        );
        // The v2 line names only a pod: a v1 line with a container id tells more.
        let pod_v2 = format!(
            "4:memory:/kubepods/pod0125ec2f-b64a-4868-8f5b-94b56cbab864/{v1_id}\n0::/kubepods/pod0125ec2f-b64a-4868-8f5b-94b56cbab864\n"
        );
        assert_eq!(
            parse_proc_cgroup(&pod_v2),
            container(
                Runtime::Containerd,
                &v1_id,
                Some("0125ec2f-b64a-4868-8f5b-94b56cbab864")
            )
        );
        // The v2 line is `/`: any v1 line with a container, wherever it is.
        let v1_only = format!("3:cpu:/\n2:pids:/\n1:name=systemd:/docker/{v1_id}\n0::/\n");
        assert_eq!(
            parse_proc_cgroup(&v1_only),
            container(Runtime::Docker, &v1_id, None)
        );
        // Among v1 lines, a container id beats a pod alone.
        let ranked = format!(
            "3:cpu:/kubepods/pod0125ec2f-b64a-4868-8f5b-94b56cbab864\n2:pids:/kubepods/pod0125ec2f-b64a-4868-8f5b-94b56cbab864/crio-{v1_id}\n"
        );
        assert_eq!(
            parse_proc_cgroup(&ranked),
            container(
                Runtime::CriO,
                &v1_id,
                Some("0125ec2f-b64a-4868-8f5b-94b56cbab864")
            )
        );
    }

    #[test]
    fn odd_lines_and_paths() {
        let id = "c".repeat(64);
        // A removed cgroup v2 (`proc_cgroup_show` appends " (deleted)").
        assert_eq!(
            parse_proc_cgroup(&format!("0::/docker/{id} (deleted)\n")),
            container(Runtime::Docker, &id, None)
        );
        // CRLF, missing fields, non-numeric hierarchies.
        assert_eq!(
            parse_proc_cgroup(&format!(
                "junk\r\nx:y:/docker/{id}\r\n:cpu:/docker/{id}\r\n"
            )),
            None
        );
        assert_eq!(
            parse_proc_cgroup(&format!("1:cpu:/docker/{id}\r\n")),
            container(Runtime::Docker, &id, None)
        );
        // Ids: too short, not hex, uppercase, bare but not 64 long.
        assert_eq!(parse_cgroup_path("/docker-0123456789a.scope"), None);
        assert_eq!(
            parse_cgroup_path("/docker-0123456789ab.scope"),
            container(Runtime::Docker, "0123456789ab", None)
        );
        assert_eq!(
            parse_cgroup_path(&format!("/crio-{}", "g".repeat(64))),
            None
        );
        assert_eq!(
            parse_cgroup_path(&format!("/docker/{}", "A".repeat(64))),
            None
        );
        assert_eq!(
            parse_cgroup_path(&format!("/docker/{}", "a".repeat(63))),
            None
        );
        assert_eq!(
            parse_cgroup_path(&format!("/cri-containerd-{}.scope", "a".repeat(129))),
            None
        );
        // A bare id outside Docker and Kubernetes (containerd's cgroupfs namespaces).
        assert_eq!(
            parse_cgroup_path(&format!("/k8s.io/{id}")),
            container(Runtime::Unknown, &id, None)
        );
        // Pod UIDs with the wrong separator for their driver, or the wrong shape.
        assert_eq!(
            parse_cgroup_path("/kubepods/pod0125ec2f_b64a_4868_8f5b_94b56cbab864"),
            None
        );
        assert_eq!(
            parse_cgroup_path(
                "/kubepods.slice/kubepods-pod0125ec2f-b64a-4868-8f5b-94b56cbab864.slice"
            ),
            None
        );
        assert_eq!(
            parse_cgroup_path("/kubepods/pod0125ec2f-b64a-4868-8f5b"),
            None
        );
        assert_eq!(parse_cgroup_path("/kubepods/podcast"), None);
        // Podman pods are not Kubernetes pods.
        assert_eq!(
            parse_cgroup_path(&format!("/machine.slice/machine-libpod_pod_{id}.slice")),
            None
        );
        // Colons that are not runc's spelling.
        assert_eq!(parse_cgroup_path("/a:b"), None);
        assert_eq!(
            parse_cgroup_path(&format!("/x.slice:cri-containerd:{id}:extra")),
            None
        );
        assert_eq!(
            parse_cgroup_path(&format!("/x.slice:other:{id}")),
            container(Runtime::Unknown, &id, None)
        );
    }

    /// A tiny deterministic generator (xorshift64*), so the fuzz tests need no dependency and
    /// fail the same way every time.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % (n as u64)).unwrap()
        }
    }

    /// Checks what every result promises about its fields.
    fn check_invariants(found: Option<&ContainerRef>) {
        let Some(found) = found else {
            return;
        };
        assert!(found.container_id.is_some() || found.pod_uid.is_some());
        if let Some(id) = &found.container_id {
            assert!((MIN_ID_LEN..=MAX_ID_LEN).contains(&id.len()), "{id}");
            assert!(id.bytes().all(is_lower_hex), "{id}");
        }
        if let Some(uid) = &found.pod_uid {
            assert!(uid.len() == 32 || uid.len() == 36, "{uid}");
            assert!(uid.bytes().all(|b| b == b'-' || is_lower_hex(b)), "{uid}");
        }
    }

    #[test]
    fn fuzz_random_bytes_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let len = rng.below(200);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next().to_le_bytes()[0]).collect();
            let text = String::from_utf8_lossy(&bytes);
            check_invariants(parse_proc_cgroup(&text).as_ref());
            check_invariants(parse_cgroup_path(&text).as_ref());
            let _ = cgroup2_mount(&text);
        }
    }

    #[test]
    fn fuzz_cgroup_like_strings_never_panic() {
        // Pieces of real paths, glued at random, reach the deep branches that random bytes miss.
        const PIECES: &[&str] = &[
            "/",
            "/",
            "/",
            ":",
            ":",
            "\n",
            "0",
            "1",
            "12",
            "name=systemd",
            "cpu,cpuacct",
            "..",
            ".",
            "pod",
            "-",
            "_",
            ".slice",
            ".scope",
            " (deleted)",
            "kubepods",
            "kubepods-",
            "besteffort",
            "burstable-",
            "cri-containerd-",
            "crio-",
            "crio-conmon-",
            "docker",
            "docker-",
            "libpod-",
            "libpod-conmon-",
            ":cri-containerd:",
            ":crio:",
            "0125ec2f_b64a_4868_8f5b_94b56cbab864",
            "0125ec2f-b64a-4868-8f5b-94b56cbab864",
            "8daa50c3a64c9ff60bb9eab7b44b56fd",
            "0123456789ab",
            "deadbeef",
            "é",
            "\\040",
            "\u{0}",
            " - cgroup2 cgroup2 rw",
            " ",
            "\\",
            "f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830",
        ];
        const HEADS: &[&str] = &["0::", "4:memory:", "1:name=systemd:", "", "x:", "0:"];
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let mut found = 0;
        for _ in 0..50_000 {
            // Lines of segments of pieces: shaped enough to get past the line and segment
            // checks, random enough to mix the forms.
            let mut text = String::new();
            for _ in 0..rng.below(4) {
                text.push_str(HEADS[rng.below(HEADS.len())]);
                for _ in 0..rng.below(7) {
                    text.push('/');
                    for _ in 0..=rng.below(3) {
                        text.push_str(PIECES[rng.below(PIECES.len())]);
                    }
                }
                text.push('\n');
            }
            let parsed = parse_proc_cgroup(&text);
            found += usize::from(parsed.is_some());
            check_invariants(parsed.as_ref());
            check_invariants(parse_cgroup_path(&text).as_ref());
            let _ = cgroup2_mount(&text);
            let _ = unescape_mountinfo(&text);
            // And the pieces glued with no structure at all.
            let glued: String = (0..rng.below(24))
                .map(|_| PIECES[rng.below(PIECES.len())])
                .collect();
            check_invariants(parse_proc_cgroup(&glued).as_ref());
            check_invariants(parse_cgroup_path(&glued).as_ref());
            let _ = cgroup2_mount(&glued);
            let _ = unescape_mountinfo(&glued);
        }
        // The generator does reach containers and pods, not only rejections.
        assert!(found > 100, "only {found} inputs parsed");
    }

    /// This machine's /proc/self/mountinfo when this module was written: a hybrid host, with
    /// cgroup2 at /sys/fs/cgroup/unified after the v1 hierarchies.
    const MOUNTINFO_THIS_MACHINE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334432k,nr_inodes=3083608,mode=755
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683656k
26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs tracefs rw
43 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
";

    /// A cgroup v2 host (openSUSE Kubic with CRI-O), optional `shared:N` fields. From
    /// neuvector/neuvector share/system/cgroup_test.go, `TestCrio_Host_Proc1_Cgroupv2`.
    const MOUNTINFO_V2_HOST: &str = "\
22 60 0:20 / /proc rw,nosuid,nodev,noexec,relatime shared:14 - proc proc rw
23 60 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:5 - sysfs sysfs rw
28 60 0:24 / /run rw,nosuid,nodev shared:13 - tmpfs tmpfs rw,size=745192k,nr_inodes=819200,mode=755,inode64
29 23 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:7 - cgroup2 cgroup2 rw
30 23 0:26 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:8 - pstore pstore rw
";

    /// Inside a Docker container on a cgroup v2 host: the mount's root is the container's cgroup
    /// and its source is `cgroup`. From neuvector/neuvector share/system/cgroup_test.go,
    /// `TestDockerNative_Container_Cgroupv2`.
    const MOUNTINFO_V2_CONTAINER: &str = "\
404 400 0:98 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
405 404 0:25 /../docker-1f1d6e2d4940ddac13abd421a2617992bf89f0e0f9a902ed58278c5f843e9ae7.scope /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot
406 402 0:94 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
";

    /// A hybrid systemd host, from kubernetes/kubernetes#95488
    /// (<https://github.com/kubernetes/kubernetes/issues/95488>).
    const MOUNTINFO_HYBRID_SYSTEMD: &str = "\
33 24 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,size=4096k,nr_inodes=1024,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
";

    #[test]
    fn cgroup2_mount_samples() {
        assert_eq!(
            cgroup2_mount(MOUNTINFO_THIS_MACHINE),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount(MOUNTINFO_V2_HOST),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount(MOUNTINFO_V2_CONTAINER),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount(MOUNTINFO_HYBRID_SYSTEMD),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        // v1 only, or nothing.
        let v1_only: String = MOUNTINFO_THIS_MACHINE
            .lines()
            .filter(|line| !line.contains("cgroup2"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(cgroup2_mount(&v1_only), None);
        assert_eq!(cgroup2_mount(""), None);
        // The first of two, with an escaped space in the mount point (a DaemonSet's host mount).
        let two = "\
50 23 0:25 / /host/sys/fs/cgroup\\040v2 rw - cgroup2 cgroup2 rw
51 23 0:25 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(two),
            Some(PathBuf::from("/host/sys/fs/cgroup v2"))
        );
        // fstype `cgroup` is v1, and a source named cgroup2 is not the fstype.
        assert_eq!(
            cgroup2_mount("40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup2 rw\n"),
            None
        );
        // Truncated lines.
        assert_eq!(cgroup2_mount("41 31 0:38 / - cgroup2 cgroup2 rw\n"), None);
        assert_eq!(cgroup2_mount(" - cgroup2"), None);
    }

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(
            unescape_mountinfo("/a\\040b\\011c\\012d\\134e"),
            Some(PathBuf::from("/a b\tc\nd\\e"))
        );
        // Not an escape: kept as it is. `\777` does not fit a byte.
        assert_eq!(unescape_mountinfo("/a\\9"), Some(PathBuf::from("/a\\9")));
        assert_eq!(unescape_mountinfo("/a\\04"), Some(PathBuf::from("/a\\04")));
        assert_eq!(
            unescape_mountinfo("/a\\777"),
            Some(PathBuf::from("/a\\777"))
        );
        assert_eq!(unescape_mountinfo(""), None);
    }

    #[test]
    fn cgroup2_mount_of_this_machine() {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(mount) = cgroup2_mount(&mountinfo) else {
            // A cgroup v1-only machine: nothing else to check.
            assert!(!mountinfo.contains(" - cgroup2 "));
            return;
        };
        // It is a cgroup v2 root or a delegated part of one.
        assert!(mount.join("cgroup.procs").exists(), "{}", mount.display());
        assert!(
            mount.join("cgroup.controllers").exists(),
            "{}",
            mount.display()
        );
    }

    /// A directory made for a test, removed on drop (with `rmdir`, which is how cgroups are
    /// removed: their interface files cannot be deleted).
    struct TestDirs {
        dirs: Vec<PathBuf>,
    }

    impl Drop for TestDirs {
        fn drop(&mut self) {
            for dir in self.dirs.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
        }
    }

    fn unique_name(what: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        format!(
            "meshtap-test-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    #[test]
    fn path_of_cgroup_id_in_the_real_cgroup2_mount() {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let real = cgroup2_mount(&mountinfo);
        // Make a cgroup in the real hierarchy if we may; a plain directory tree otherwise, where
        // inode lookup works the same way.
        let name = unique_name("cgroup");
        let (root, mut guard) = match real {
            Some(root) if fs::create_dir(root.join(&name)).is_ok() => {
                let guard = TestDirs {
                    dirs: vec![root.join(&name)],
                };
                (root, guard)
            }
            _ => {
                let root = std::env::temp_dir().join(unique_name("root"));
                fs::create_dir(&root).unwrap();
                fs::create_dir(root.join(&name)).unwrap();
                let guard = TestDirs {
                    dirs: vec![root.clone(), root.join(&name)],
                };
                (root, guard)
            }
        };
        println!("cgroup id lookup under {}", root.display());
        let leaf = root.join(&name).join("leaf");
        fs::create_dir(&leaf).unwrap();
        guard.dirs.push(leaf.clone());

        let id = fs::metadata(root.join(&name)).unwrap().ino();
        assert_eq!(
            path_of_cgroup_id(&root, id, 100_000),
            Some(format!("/{name}"))
        );
        let leaf_id = fs::metadata(&leaf).unwrap().ino();
        assert_eq!(
            path_of_cgroup_id(&root, leaf_id, 100_000),
            Some(format!("/{name}/leaf"))
        );
        let root_id = fs::metadata(&root).unwrap().ino();
        assert_eq!(path_of_cgroup_id(&root, root_id, 0), Some("/".to_owned()));
        // The budget counts directories read: the leaf is found when its parent is read, the
        // second directory of the walk at the earliest.
        assert_eq!(path_of_cgroup_id(&root, leaf_id, 1), None);
        // An id that no directory has.
        assert_eq!(path_of_cgroup_id(&root, u64::MAX - 7, 100_000), None);
        assert_eq!(
            path_of_cgroup_id(&root.join(unique_name("missing")), id, 100_000),
            None
        );
        drop(guard);
        assert!(!root.join(&name).exists());
    }

    #[test]
    fn path_of_cgroup_id_in_a_directory_tree() {
        let root = std::env::temp_dir().join(unique_name("tree"));
        let a = root.join("kubepods.slice");
        let b = a.join("kubepods-besteffort.slice");
        let c = b.join("kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice");
        let d = c.join(format!("cri-containerd-{}.scope", "e".repeat(64)));
        let mut guard = TestDirs { dirs: Vec::new() };
        for dir in [&root, &a, &b, &c, &d] {
            fs::create_dir(dir).unwrap();
            guard.dirs.push(dir.clone());
        }
        // A file and a symbolic link with the target's inode are not directories to match.
        fs::write(root.join("cgroup.procs"), "").unwrap();
        std::os::unix::fs::symlink(&d, root.join("link")).unwrap();

        let id = fs::metadata(&d).unwrap().ino();
        let path = path_of_cgroup_id(&root, id, 100).unwrap();
        assert_eq!(
            path,
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice/cri-containerd-{}.scope",
                "e".repeat(64)
            )
        );
        assert_eq!(
            parse_cgroup_path(&path),
            container(
                Runtime::Containerd,
                &"e".repeat(64),
                Some("0125ec2f-b64a-4868-8f5b-94b56cbab864")
            )
        );
        // Four directories hold the path down to d's parent.
        assert_eq!(path_of_cgroup_id(&root, id, 3), None);
        assert_eq!(path_of_cgroup_id(&root, id, 4), Some(path));
        // A file's inode is not a cgroup.
        let file_id = fs::metadata(root.join("cgroup.procs")).unwrap().ino();
        assert_eq!(path_of_cgroup_id(&root, file_id, 100), None);

        fs::remove_file(root.join("cgroup.procs")).unwrap();
        fs::remove_file(root.join("link")).unwrap();
    }

    #[test]
    fn old_kernel_cgroup_ids_match_by_low_bits() {
        assert!(inode_is_cgroup_id(4242, 4242));
        assert!(inode_is_cgroup_id(4242, (1 << 32) | 4242));
        assert!(!inode_is_cgroup_id(4242, 4243));
        assert!(!inode_is_cgroup_id(1 << 32, 0));
    }
}
