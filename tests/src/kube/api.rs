//! The fake API server (`kube_api.py`, serving the recorded cluster and changes to it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};

use super::fixtures::fixtures;
use super::{NODE, RBAC_RESOURCES};
use crate::http;
use crate::process::{STARTUP, Script, ScriptChild};

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// `kube_api.py`, serving the recorded cluster.
pub struct KubeApi {
    _child: ScriptChild,
    port: u16,
    control_port: u16,
}

impl KubeApi {
    pub fn start(extra: &[&str]) -> Self {
        let mut script = Script::new("kube_api.py", "mt-kube-api")
            .opt("--fixtures", fixtures().join("cluster").display())
            .opt("--bookmark-seconds", 1);
        for a in extra {
            script = script.arg(a);
        }
        let mut child = script.spawn();
        let v = child.expect_event("listening", STARTUP);
        let port = |k: &str| u16::try_from(v[k].as_u64().expect(k)).expect("port");
        Self {
            port: port("port"),
            control_port: port("control_port"),
            _child: child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn control(&self, method: &str, path: &str, body: &Value) -> Value {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.control_port));
        let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to the fake API's control port: {e}"));
        s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
        let body = serde_json::to_vec(body).expect("json");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .and_then(|()| s.write_all(&body))
        .unwrap_or_else(|e| panic!("{method} {path} to the fake API: {e}"));
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("{method} {path} to the fake API: {e}"));
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        assert!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "{method} {path} to the fake API: {head}\n{body}"
        );
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"))
    }

    /// Adds or changes objects (a List, or one object).
    pub fn apply(&self, objects: &Value) {
        self.control("POST", "/apply", objects);
    }

    pub fn delete_pod(&self, namespace: &str, name: &str, graceful: bool) {
        self.control(
            "POST",
            "/delete",
            &json!({"resource": "pods", "namespace": namespace, "name": name, "graceful": graceful}),
        );
    }

    /// Closes the listener and every connection: the API is unreachable until [`Self::serve`].
    pub fn stop(&self) {
        assert_eq!(
            self.control("POST", "/stop", &json!({})),
            json!({"stopped": true})
        );
    }

    /// Serves again on the same port; `compact`: every resourceVersion handed out so far is
    /// too old (watches resuming from one get 410 Gone and must relist).
    pub fn serve(&self, compact: bool) {
        let out = self.control("POST", "/start", &json!({ "compact": compact }));
        assert_eq!(out["started"], true, "{out}");
        assert_eq!(out["port"], self.port, "{out}");
    }

    /// The API requests received so far.
    pub fn requests(&self) -> Vec<Value> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.control_port));
        let r = http::get(addr, "/requests?since=0", HTTP_TIMEOUT).expect("GET /requests");
        serde_json::from_slice::<Vec<Value>>(&r.body).expect("requests JSON")
    }
}

/// Every request the agent made is a GET (list, watch or get) of a resource its ClusterRole
/// allows, and its pods of this node are asked for with the node's field selector.
pub fn assert_least_privilege(api: &KubeApi) {
    let requests = api.requests();
    assert!(!requests.is_empty(), "the agent made no API request");
    let bad: Vec<&Value> = requests
        .iter()
        .filter(|r| {
            r["method"] != "GET"
                || !["list", "watch", "get"].contains(&r["verb"].as_str().unwrap_or_default())
                || !RBAC_RESOURCES.contains(&r["resource"].as_str().unwrap_or_default())
        })
        .collect();
    assert!(
        bad.is_empty(),
        "requests outside get/list/watch on {RBAC_RESOURCES:?}: {bad:#?}"
    );
    let selector = format!("spec.nodeName={NODE}");
    for verb in ["list", "watch"] {
        assert!(
            requests.iter().any(|r| r["resource"] == "pods"
                && r["verb"] == verb
                && r["query"]["fieldSelector"] == selector.as_str()),
            "no {verb} of pods with fieldSelector {selector}: {requests:#?}"
        );
    }
}
