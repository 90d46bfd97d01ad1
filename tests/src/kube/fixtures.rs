//! The recorded cluster (`tests/fixtures/kube/`): its objects, and what a test needs of a pod.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::NODE;
use crate::workspace_root;

pub fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures/kube")
}

/// Every object of the JSON files (Lists or single objects) of a fixture directory.
pub fn read_objects(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for f in files {
        let doc: Value = serde_json::from_slice(
            &fs::read(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if doc["kind"] == "List" {
            objects.extend(doc["items"].as_array().expect("items").iter().cloned());
        } else {
            objects.push(doc);
        }
    }
    objects
}

pub fn change_file(name: &str) -> Value {
    let path = fixtures().join("changes").join(format!("{name}.json"));
    serde_json::from_slice(&fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What a test needs of a recorded pod.
#[derive(Clone, Debug)]
pub struct PodFixture {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub container_id: String,
    pub ip: Ipv4Addr,
    pub qos: String,
    pub object: Value,
}

impl PodFixture {
    pub fn from(object: &Value) -> Self {
        let s = |v: &Value| {
            v.as_str()
                .unwrap_or_else(|| panic!("{v} in {object}"))
                .to_owned()
        };
        let id = s(&object["status"]["containerStatuses"][0]["containerID"]);
        Self {
            name: s(&object["metadata"]["name"]),
            namespace: s(&object["metadata"]["namespace"]),
            uid: s(&object["metadata"]["uid"]),
            container_id: id
                .strip_prefix("containerd://")
                .unwrap_or_else(|| panic!("containerd id {id}"))
                .to_owned(),
            ip: s(&object["status"]["podIP"]).parse().expect("podIP"),
            qos: s(&object["status"]["qosClass"]).to_lowercase(),
            object: object.clone(),
        }
    }
}

/// The recorded cluster (`fixtures/kube/cluster`).
pub struct Cluster {
    objects: Vec<Value>,
}

impl Cluster {
    pub fn load() -> Self {
        Self {
            objects: read_objects(&fixtures().join("cluster")),
        }
    }

    pub fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }

    pub fn pod(&self, name: &str) -> PodFixture {
        PodFixture::from(
            self.of_kind("Pod")
                .find(|p| p["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("no pod {name} in the fixtures")),
        )
    }

    /// What `meshtap_kubernetes_objects` shows once the agent has listed this cluster.
    pub fn expected_objects(&self) -> Vec<(&'static str, f64)> {
        let pods = self.of_kind("Pod").count();
        let node = self
            .of_kind("Pod")
            .filter(|p| p["spec"]["nodeName"] == NODE)
            .count();
        vec![
            ("node_pods", node as f64),
            ("pods", pods as f64),
            ("services", self.of_kind("Service").count() as f64),
            ("replicasets", self.of_kind("ReplicaSet").count() as f64),
        ]
    }
}
