//! Cgroups shaped like kubelet's, for the test's containers.

use std::fs;
use std::path::{Path, PathBuf};

use super::fixtures::PodFixture;

/// The cgroup v2 hierarchy: the first `cgroup2` mount of /proc/self/mountinfo (a hybrid host
/// mounts it at /sys/fs/cgroup/unified, a unified one at /sys/fs/cgroup).
pub fn cgroup2_root() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next() != Some("cgroup2") {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .expect("no cgroup2 mount in /proc/self/mountinfo: these tests need cgroup v2")
}

/// Cgroup directories made for the test's containers; on drop every process still in one is
/// moved to the root cgroup and the directories are removed, deepest first.
pub struct Cgroups {
    root: PathBuf,
    created: Vec<PathBuf>,
}

impl Cgroups {
    pub(crate) fn new() -> Self {
        Self {
            root: cgroup2_root(),
            created: Vec::new(),
        }
    }

    /// The container's cgroup as kubelet's systemd cgroup driver and containerd make it:
    /// `<root>/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/
    /// cri-containerd-<id>.scope` (Guaranteed pods sit right under kubepods.slice), with the
    /// dashes of the pod uid turned into underscores, as systemd slices name them.
    pub fn container(&mut self, pod: &PodFixture) -> PathBuf {
        let uid = pod.uid.replace('-', "_");
        let mut dir = self.root.join("kubepods.slice");
        let pod_slice = if pod.qos == "guaranteed" {
            format!("kubepods-pod{uid}.slice")
        } else {
            dir = dir.join(format!("kubepods-{}.slice", pod.qos));
            format!("kubepods-{}-pod{uid}.slice", pod.qos)
        };
        let dir = dir
            .join(pod_slice)
            .join(format!("cri-containerd-{}.scope", pod.container_id));
        self.make(&dir);
        dir
    }

    /// The same with kubelet's cgroupfs driver: `<root>/kubepods/<qos>/pod<uid>/<id>`
    /// (Guaranteed: `<root>/kubepods/pod<uid>/<id>`).
    pub fn container_cgroupfs(&mut self, pod: &PodFixture) -> PathBuf {
        let mut dir = self.root.join("kubepods");
        if pod.qos != "guaranteed" {
            dir = dir.join(&pod.qos);
        }
        let dir = dir.join(format!("pod{}", pod.uid)).join(&pod.container_id);
        self.make(&dir);
        dir
    }

    fn make(&mut self, dir: &Path) {
        let mut missing = Vec::new();
        let mut d = dir.to_path_buf();
        while !d.exists() {
            missing.push(d.clone());
            d = d.parent().expect("below the cgroup root").to_path_buf();
        }
        for d in missing.into_iter().rev() {
            fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            self.created.push(d);
        }
    }

    /// Empties `dir` (its processes go to the root cgroup) and removes it, as the runtime does
    /// when a container is gone.
    pub fn remove(&mut self, dir: &Path) {
        self.evacuate(dir);
        if let Err(e) = fs::remove_dir(dir) {
            panic!("rmdir {}: {e}", dir.display());
        }
        self.created.retain(|d| d != dir);
    }

    fn evacuate(&self, dir: &Path) {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = fs::write(self.root.join("cgroup.procs"), pid);
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            self.evacuate(dir);
            if let Err(e) = fs::remove_dir(dir) {
                eprintln!("cleanup: rmdir {}: {e}", dir.display());
            }
        }
    }
}
