//! deploy/: the container image and the Kubernetes manifests, checked without a cluster (there
//! is no API server or container engine here):
//! - every manifest validates strictly (unknown fields rejected) against the JSON schemas of
//!   Kubernetes 1.35 and 1.37, the oldest and newest supported releases (kubernetes-validate
//!   1.37.0 from PyPI), the PodMonitor against prometheus-operator 0.91.0's CRD schema
//!   (`tests/schemas/prometheus-operator/`); the validator itself is shown to reject bad objects;
//! - `kubectl kustomize deploy/` renders with Debian 12's kubectl 1.20 (built-in kustomize
//!   v2.0.3, the oldest the kustomization stays compatible with), and with any other kubectl on
//!   PATH, to exactly the expected objects, which validate too;
//! - the Dockerfile, the DaemonSet, the generated ConfigMap, the Service, the PodMonitor and
//!   `meshtap --help` agree with each other (binary path, flags, ports, mounts, labels);
//! - the endpoint's token comes from a Secret volume, the optional TLS files from another, and
//!   the NetworkPolicy admits to the agents' port only Prometheus and the agents themselves;
//! - the agent gets ready with the ConfigMap's config file and the DaemonSet's flags (a token
//!   file in place of the Secret's), and refuses /api/ without the token.
//!
//! Tools: `python3` with kubernetes-validate, and Debian's kubectl unpacked into
//! `/usr/local/lib/meshtap/kubernetes-client`; `cargo xtask setup` installs both. A missing tool
//! fails the test with the command that installs it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use meshtap_tests::agent::binary;
use meshtap_tests::process::{python, scripts_dir};
use meshtap_tests::{Agent, TempDir, free_port, workspace_root};
use serde_json::Value;

/// Kubernetes releases the manifests must validate against: the oldest and the newest of the
/// three minor releases supported upstream when this was written (November 2026).
const KUBERNETES_VERSIONS: &[&str] = &["1.35.0", "1.37.0"];
/// Where `cargo xtask setup` unpacks Debian's kubectl (`DEBIAN_KUBECTL_DIR` in setup.rs).
const DEBIAN_KUBECTL: &str = "/usr/local/lib/meshtap/kubernetes-client/usr/bin/kubectl";
/// The capabilities the DaemonSet adds (every other one dropped): see its comment.
const CAPABILITIES: &[&str] = &["BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_PTRACE"];

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

fn crd_schema() -> PathBuf {
    workspace_root()
        .join("tests/schemas/prometheus-operator/monitoring.coreos.com_podmonitors.yaml")
}

// ---------------------------------------------------------------------------------------------
// Tools

/// Runs `deploy_validate.py` on `files` (or on `stdin` when given) and returns the objects it
/// read and its error messages. Panics if the tool itself cannot run.
fn run_validator(files: &[PathBuf], stdin: Option<&str>) -> (Vec<Value>, Vec<String>) {
    let py = python();
    let mut cmd = Command::new(&py);
    cmd.arg(scripts_dir().join("deploy_validate.py"));
    for v in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes", v]);
    }
    cmd.arg("--crd").arg(crd_schema());
    match stdin {
        Some(_) => {
            cmd.arg("-");
        }
        None => {
            cmd.args(files);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run {py}: {e}; install python3 (`cargo xtask setup`) or set MESHTAP_PYTHON")
    });
    {
        let mut input = child.stdin.take().expect("stdin piped");
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .expect("write the validator's stdin");
    }
    let out = child
        .wait_with_output()
        .expect("wait for deploy_validate.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "deploy_validate.py could not run ({}): {stderr}",
        out.status
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "deploy_validate.py printed no JSON report ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let objects = report["objects"].as_array().expect("objects").clone();
    let errors: Vec<String> = report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e.as_str().expect("error text").to_owned())
        .collect();
    assert_eq!(
        out.status.code() == Some(0),
        errors.is_empty(),
        "exit status {} disagrees with the errors {errors:?}",
        out.status
    );
    (objects, errors)
}

/// Validates and returns the objects, failing the test with every validation error.
fn validated(files: &[PathBuf], stdin: Option<&str>, what: &str) -> Vec<Value> {
    let (objects, errors) = run_validator(files, stdin);
    assert!(
        errors.is_empty(),
        "{what} does not validate:\n  {}",
        errors.join("\n  ")
    );
    objects
}

/// Debian's kubectl 1.20: `$MESHTAP_KUBECTL`, else where setup unpacks it.
fn debian_kubectl() -> PathBuf {
    let path = std::env::var_os("MESHTAP_KUBECTL")
        .map_or_else(|| PathBuf::from(DEBIAN_KUBECTL), PathBuf::from);
    assert!(
        path.is_file(),
        "Debian's kubectl (package kubernetes-client, 1.20) is not at {}: run `cargo xtask setup` \
         (it unpacks the package there), or point MESHTAP_KUBECTL at a kubectl",
        path.display()
    );
    path
}

/// The client version kubectl reports, e.g. `v1.20.2` (`--short` before 1.28, where it is
/// needed for a one-line answer; removed since).
fn kubectl_version(kubectl: &Path) -> Result<String, String> {
    let mut texts = Vec::new();
    for args in [
        &["version", "--client", "--short"][..],
        &["version", "--client"],
    ] {
        let out = Command::new(kubectl)
            .args(args)
            .output()
            .map_err(|e| format!("run {} version: {e}", kubectl.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success()
            && let Some(v) = text
                .lines()
                .find_map(|l| l.strip_prefix("Client Version: "))
        {
            return Ok(v.trim().to_owned());
        }
        texts.push(text);
    }
    Err(format!("{} version printed {texts:?}", kubectl.display()))
}

/// Every kubectl to render with: Debian's (required), then the first `kubectl` on PATH if it
/// is another one that works (newer kustomize; one that cannot even tell its version is reported
/// and left out), with its version.
fn kubectls() -> Vec<(PathBuf, String)> {
    let debian = debian_kubectl();
    let version = kubectl_version(&debian).unwrap_or_else(|e| panic!("{e}"));
    if std::env::var_os("MESHTAP_KUBECTL").is_none() {
        assert!(
            version.starts_with("v1.20."),
            "{} is {version}, expected Debian 12's 1.20: run `cargo xtask setup`",
            debian.display()
        );
    }
    let mut all = vec![(debian.clone(), version)];
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file());
    match on_path {
        Some(p) if p.canonicalize().ok() != debian.canonicalize().ok() => {
            match kubectl_version(&p) {
                Ok(v) => all.push((p, v)),
                Err(e) => eprintln!("NOT rendering with {}: it does not work: {e}", p.display()),
            }
        }
        _ => eprintln!("no other kubectl on PATH: rendering with Debian's only"),
    }
    all
}

/// `kubectl kustomize dir`.
fn kustomize(kubectl: &Path, dir: &Path) -> String {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {} kustomize: {e}", kubectl.display()));
    assert!(
        out.status.success(),
        "`{} kustomize {}` failed ({}): {}",
        kubectl.display(),
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kustomize output is UTF-8")
}

/// The flags `meshtap --help` lists.
fn help_flags() -> BTreeSet<String> {
    let bin = binary();
    assert!(
        bin.is_file(),
        "agent binary {} does not exist: build it with `cargo build --release -p meshtap` or \
         point MESHTAP_BIN at it",
        bin.display()
    );
    let out = Command::new(&bin)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run {} --help: {e}", bin.display()));
    assert!(out.status.success(), "meshtap --help: {}", out.status);
    let text = String::from_utf8(out.stdout).expect("help is UTF-8");
    text.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| {
            w.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|f| f.len() > 2)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reading the objects

/// The manifests in deploy/ (every `*.yaml` but the kustomization).
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("read deploy/")
        .map(|e| e.expect("deploy/ entry").path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    files
}

fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().expect("kind")
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().expect("metadata.name")
}

fn namespace(obj: &Value) -> Option<&str> {
    obj["metadata"]["namespace"].as_str()
}

/// The one object of `kind` in `objects`.
fn one<'a>(objects: &'a [Value], kind_: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| kind(o) == kind_).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind_}");
    found[0]
}

/// `(kind, namespace, name)` of every object, sorted; a generated ConfigMap's name has its
/// content hash replaced by `<hash>` (kustomize versions hash differently).
fn identities(objects: &[Value]) -> Vec<(String, String, String)> {
    let mut ids: Vec<(String, String, String)> = objects
        .iter()
        .map(|o| {
            let mut n = name(o).to_owned();
            if kind(o) == "ConfigMap" {
                let (base, hash) = n
                    .rsplit_once('-')
                    .expect("generated ConfigMap name has a hash");
                assert!(
                    hash.len() == 10 && hash.chars().all(|c| c.is_ascii_alphanumeric()),
                    "ConfigMap {n} has no kustomize content hash"
                );
                n = format!("{base}-<hash>");
            }
            (kind(o).to_owned(), namespace(o).unwrap_or("").to_owned(), n)
        })
        .collect();
    ids.sort();
    ids
}

fn expected_identities() -> Vec<(String, String, String)> {
    let mut ids: Vec<(String, String, String)> = [
        ("ClusterRole", "", "meshtap"),
        ("ClusterRoleBinding", "", "meshtap"),
        ("ConfigMap", "meshtap", "meshtap-config-<hash>"),
        ("DaemonSet", "meshtap", "meshtap"),
        ("Namespace", "", "meshtap"),
        ("NetworkPolicy", "meshtap", "meshtap"),
        ("Service", "meshtap", "meshtap"),
        ("ServiceAccount", "meshtap", "meshtap"),
    ]
    .iter()
    .map(|(k, ns, n)| ((*k).to_owned(), (*ns).to_owned(), (*n).to_owned()))
    .collect();
    ids.sort();
    ids
}

/// `kubectl kustomize deploy/` with Debian's kubectl, validated.
fn rendered() -> Vec<Value> {
    let kubectl = debian_kubectl();
    let yaml = kustomize(&kubectl, &deploy_dir());
    validated(
        &[],
        Some(&yaml),
        "the output of `kubectl kustomize deploy/`",
    )
}

/// A container's args as `--flag -> value` (`--flag value` or `--flag=value`), in order.
fn parse_args(args: &[String]) -> Vec<(String, String)> {
    let mut parsed = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        assert!(arg.starts_with("--"), "argument {arg:?} is not a --flag");
        if let Some((flag, value)) = arg.split_once('=') {
            parsed.push((flag.to_owned(), value.to_owned()));
            i += 1;
        } else {
            let value = args
                .get(i + 1)
                .unwrap_or_else(|| panic!("{arg} has no value"));
            assert!(!value.starts_with("--"), "{arg} has no value");
            parsed.push((arg.clone(), value.clone()));
            i += 2;
        }
    }
    parsed
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

/// The DaemonSet's only container.
fn container(ds: &Value) -> &Value {
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "the DaemonSet runs one container");
    &containers[0]
}

/// The volume mounted at `mount_path` in the container: (volume, mount).
fn volume_at<'a>(ds: &'a Value, mount_path: &str) -> (&'a Value, &'a Value) {
    let mount = container(ds)["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == mount_path)
        .unwrap_or_else(|| panic!("no volume is mounted at {mount_path}"));
    let volume = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("volume {} of {mount_path} is not defined", mount["name"]));
    (volume, mount)
}

/// Whether every `key: value` of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a label map");
    !selector.is_empty() && selector.iter().all(|(k, v)| &labels[k] == v)
}

/// The workspace's version (`[workspace.package] version` in Cargo.toml).
fn workspace_version() -> String {
    let toml = std::fs::read_to_string(workspace_root().join("Cargo.toml")).expect("Cargo.toml");
    toml.lines()
        .find_map(|l| l.trim().strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("workspace version in Cargo.toml")
        .to_owned()
}

/// A `const NAME: &str = "value";` of xtask/src/setup.rs.
fn setup_const(name_: &str) -> String {
    let text =
        std::fs::read_to_string(workspace_root().join("xtask/src/setup.rs")).expect("setup.rs");
    let prefix = format!("const {name_}: &str = \"");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .and_then(|v| v.strip_suffix("\";"))
        .unwrap_or_else(|| panic!("xtask/src/setup.rs has no `{prefix}...\";`"))
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn every_manifest_validates_strictly() {
    let files = manifest_files();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "clusterrole.yaml",
        "clusterrolebinding.yaml",
        "daemonset.yaml",
        "namespace.yaml",
        "networkpolicy.yaml",
        "podmonitor.yaml",
        "service.yaml",
        "serviceaccount.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "deploy/{expected} is missing"
        );
    }
    let objects = validated(&files, None, "deploy/*.yaml");
    let mut kinds: Vec<&str> = objects.iter().map(kind).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Namespace",
            "NetworkPolicy",
            "PodMonitor",
            "Service",
            "ServiceAccount"
        ],
        "one object of each kind in {names:?}"
    );
    // Namespaced objects say where they go, so that each file applies on its own.
    for obj in &objects {
        let cluster_scoped = matches!(
            kind(obj),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding"
        );
        assert_eq!(
            namespace(obj).is_some(),
            !cluster_scoped,
            "{} {}: metadata.namespace",
            kind(obj),
            name(obj)
        );
    }
}

/// The validator must fail on what the API server refuses, or the test above proves nothing.
#[test]
fn the_validator_rejects_invalid_objects() {
    let cases = [
        (
            "unknown field in a built-in kind",
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n      - {name: c, image: i, securityContext: {capabilitiez: {}}}\n",
            "capabilitiez",
        ),
        (
            "wrong type",
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: abc}]}\n",
            "spec.ports.0.port",
        ),
        (
            "unknown field in a PodMonitor",
            "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {name: x}\nspec:\n  selector: {}\n  podMetricsEndpoints: [{port: m, intervall: 30s}]\n",
            "intervall",
        ),
        (
            "PodMonitor value outside its enum",
            "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {name: x}\nspec:\n  selector: {}\n  podMetricsEndpoints: [{port: m, scheme: ftp}]\n",
            "scheme",
        ),
        (
            "PodMonitor without its required selector",
            "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {name: x}\nspec: {}\n",
            "selector",
        ),
        (
            "unknown field in a PodMonitor's metadata",
            "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {name: x, labelz: {}}\nspec: {selector: {}}\n",
            "labelz",
        ),
        (
            "a kind nobody defines",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: x}\n",
            "Widget",
        ),
    ];
    for (what, yaml, needle) in cases {
        let (_, errors) = run_validator(&[], Some(yaml));
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "{what}: expected an error mentioning {needle:?}, got {errors:?}"
        );
    }
}

#[test]
fn kustomize_renders_exactly_the_expected_objects() {
    let manifests = validated(&manifest_files(), None, "deploy/*.yaml");
    let mut first: Option<Vec<Value>> = None;
    for (kubectl, version) in kubectls() {
        let yaml = kustomize(&kubectl, &deploy_dir());
        let what = format!(
            "`kubectl kustomize deploy/` ({}, {version})",
            kubectl.display()
        );
        let objects = validated(&[], Some(&yaml), &what);
        assert_eq!(identities(&objects), expected_identities(), "{what}");
        // Everything in the manifests but the PodMonitor (see deploy/podmonitor.yaml), as
        // written: kustomize only adds the ConfigMap and the image tag.
        for obj in &objects {
            let source = manifests
                .iter()
                .find(|m| kind(m) == kind(obj) && name(m) == name(obj));
            match (kind(obj), source) {
                ("ConfigMap", None) => {}
                ("DaemonSet", Some(source)) => {
                    let mut obj = obj.clone();
                    let mut source = source.clone();
                    for o in [&mut obj, &mut source] {
                        let spec = &mut o["spec"]["template"]["spec"];
                        spec["containers"][0]["image"] = Value::Null;
                        spec["volumes"][0]["configMap"]["name"] = Value::Null;
                    }
                    assert_eq!(obj, source, "{what}: the DaemonSet as in daemonset.yaml");
                }
                (_, Some(source)) => assert_eq!(obj, source, "{what}: {} as written", kind(obj)),
                (k, None) => panic!("{what}: {k} {} is in no manifest", name(obj)),
            }
        }
        // The ConfigMap is deploy/meshtap.toml, and the DaemonSet mounts that ConfigMap.
        let config_map = one(&objects, "ConfigMap");
        let toml =
            std::fs::read_to_string(deploy_dir().join("meshtap.toml")).expect("meshtap.toml");
        assert_eq!(
            config_map["data"]["meshtap.toml"],
            toml.as_str(),
            "{what}: ConfigMap data"
        );
        let ds = one(&objects, "DaemonSet");
        assert_eq!(
            ds["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
            name(config_map),
            "{what}: the DaemonSet's config volume names the generated ConfigMap"
        );
        assert_eq!(
            container(ds)["image"],
            format!("meshtap:{}", workspace_version()).as_str(),
            "{what}: image tagged with the workspace version"
        );
        if let Some(first) = &first {
            assert_eq!(
                identities(first),
                identities(&objects),
                "{what}: the same objects with every kubectl"
            );
        } else {
            first = Some(objects);
        }
        eprintln!("{what}: renders the expected objects, which validate");
    }
}

#[test]
fn rbac_grants_only_reads_of_what_the_agent_watches() {
    let objects = rendered();
    let role = one(&objects, "ClusterRole");
    let mut granted: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
        let mut verbs = strings(&rule["verbs"]);
        verbs.sort();
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                let previous = granted.insert((group.clone(), resource), verbs.clone());
                assert!(previous.is_none(), "a resource granted twice");
            }
        }
    }
    let read = vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()];
    let expected: BTreeMap<(String, String), Vec<String>> = [
        ("", "namespaces"),
        ("", "pods"),
        ("", "services"),
        ("apps", "replicasets"),
        ("discovery.k8s.io", "endpointslices"),
    ]
    .iter()
    .map(|(g, r)| (((*g).to_owned(), (*r).to_owned()), read.clone()))
    .collect();
    assert_eq!(granted, expected);

    let binding = one(&objects, "ClusterRoleBinding");
    let account = one(&objects, "ServiceAccount");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], name(role));
    let subjects = binding["subjects"].as_array().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], name(account));
    assert_eq!(
        subjects[0]["namespace"],
        namespace(account).expect("namespace")
    );
    let pod = &one(&objects, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], name(account));
    assert_eq!(pod["automountServiceAccountToken"], true);
}

#[test]
fn daemonset_is_least_privilege_and_consistent() {
    let objects = rendered();
    let ds = one(&objects, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = container(ds);

    // Privileges.
    assert_eq!(pod["hostPID"], true, "hostPID");
    assert!(pod["hostNetwork"] != true && pod["hostIPC"] != true);
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let mut added = strings(&sc["capabilities"]["add"]);
    added.sort();
    assert_eq!(added, CAPABILITIES);
    assert!(pod["securityContext"].get("sysctls").is_none());
    for mount in c["volumeMounts"].as_array().expect("volumeMounts") {
        assert_eq!(
            mount["readOnly"], true,
            "{} is mounted read-only",
            mount["mountPath"]
        );
    }

    // Scheduling and rollout.
    let tolerations = pod["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.as_object().is_some_and(|t| t.len() == 1) && t["operator"] == "Exists"),
        "tolerates every taint: {tolerations:?}"
    );
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"].is_string());
    for what in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][what][resource].is_string(),
                "resources.{what}.{resource} is set"
            );
        }
    }

    // NODE_NAME from the downward API.
    let env = c["env"].as_array().expect("env");
    let node_name = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("env NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );

    // Every flag exists in the agent; values agree with mounts, ports and the ConfigMap.
    let help = help_flags();
    let args = parse_args(&strings(&c["args"]));
    let flags: BTreeMap<&str, &str> = args.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
    assert_eq!(flags.len(), args.len(), "no flag given twice: {args:?}");
    let unknown: Vec<&&str> = flags.keys().filter(|f| !help.contains(**f)).collect();
    assert!(
        unknown.is_empty(),
        "the DaemonSet passes flags `{} --help` does not list: {unknown:?} (known: {help:?})",
        binary().display()
    );
    for flag in ["--config", "--listen", "--proc-root", "--cgroup-root"] {
        assert!(flags.contains_key(flag), "the DaemonSet passes {flag}");
    }

    let config = Path::new(flags["--config"]);
    let (volume, _) = volume_at(ds, config.parent().unwrap().to_str().unwrap());
    let config_map = one(&objects, "ConfigMap");
    assert_eq!(volume["configMap"]["name"], name(config_map));
    let key = config.file_name().unwrap().to_str().unwrap();
    assert!(
        config_map["data"][key].is_string(),
        "the ConfigMap has the key {key} that --config reads"
    );

    let host_paths = [
        (flags["--proc-root"], "/proc"),
        (flags["--cgroup-root"], "/sys/fs/cgroup"),
        ("/sys/kernel/tracing", "/sys/kernel/tracing"),
    ];
    for (mount_path, host_path) in host_paths {
        let (volume, _) = volume_at(ds, mount_path);
        assert_eq!(
            volume["hostPath"]["path"], host_path,
            "{mount_path} is the host's {host_path}"
        );
    }

    let listen: std::net::SocketAddr = flags["--listen"].parse().expect("--listen is ip:port");
    assert!(
        listen.ip().is_unspecified(),
        "--listen on every interface of the pod"
    );
    let port = listen.port();
    let ports = c["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["containerPort"], port);
    let port_name = ports[0]["name"].as_str().expect("the port is named");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            get["port"] == port_name || get["port"] == port,
            "{probe} on the agent's port"
        );
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string().as_str());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // The headless Service and the PodMonitor point at these pods and this port.
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&ds["spec"]["selector"]["matchLabels"], labels));
    let service = one(&objects, "Service");
    assert_eq!(service["spec"]["clusterIP"], "None", "headless");
    assert!(selects(&service["spec"]["selector"], labels));
    let service_ports = service["spec"]["ports"].as_array().expect("ports");
    assert_eq!(service_ports.len(), 1);
    assert_eq!(service_ports[0]["port"], port);
    assert!(service_ports[0]["targetPort"] == port_name || service_ports[0]["targetPort"] == port);
    let monitors = validated(
        &[deploy_dir().join("podmonitor.yaml")],
        None,
        "deploy/podmonitor.yaml",
    );
    let monitor = one(&monitors, "PodMonitor");
    assert_eq!(namespace(monitor), namespace(ds));
    assert!(selects(&monitor["spec"]["selector"]["matchLabels"], labels));
    let endpoints = monitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"], port_name);
    assert_eq!(endpoints[0]["path"], "/metrics");
}

/// The volume mounted at the directory holding `file`: (volume, mount).
fn volume_of_file<'a>(ds: &'a Value, file: &str) -> (&'a Value, &'a Value) {
    let dir = Path::new(file).parent().expect("a file in a directory");
    volume_at(ds, dir.to_str().expect("UTF-8 path"))
}

/// The endpoint's token and TLS files come from Secrets (the token's required, TLS's optional),
/// the config file's commented TLS keys point into the TLS volume, the PodMonitor sends the
/// token's Secret, and the NetworkPolicy admits to the agents' port only Prometheus and the
/// agents, and nothing else.
#[test]
fn endpoint_secrets_and_network_policy() {
    let objects = rendered();
    let ds = one(&objects, "DaemonSet");
    let c = container(ds);
    let args = parse_args(&strings(&c["args"]));
    let token_file = args
        .iter()
        .find(|(f, _)| f == "--token-file")
        .map(|(_, v)| v.as_str())
        .expect("the DaemonSet passes --token-file");
    let (volume, mount) = volume_of_file(ds, token_file);
    assert_eq!(mount["readOnly"], true);
    let secret = &volume["secret"];
    assert_eq!(secret["secretName"], "meshtap-token");
    assert!(
        secret.get("optional").is_none_or(|o| o == false),
        "the token is required"
    );
    let file_name = Path::new(token_file).file_name().unwrap().to_str().unwrap();
    let items = secret["items"].as_array().expect("the Secret's items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["path"], file_name);
    let token_key = items[0]["key"].as_str().expect("key");
    assert!(
        mount.get("subPath").is_none(),
        "no subPath: Kubernetes updates a Secret's files only without it"
    );

    let toml = one(&objects, "ConfigMap")["data"]["meshtap.toml"]
        .as_str()
        .expect("meshtap.toml");
    let commented = |key: &str| {
        toml.lines()
            .find_map(|l| {
                let v = l
                    .strip_prefix("# ")?
                    .strip_prefix(key)?
                    .trim_start()
                    .strip_prefix('=')?;
                Some(v.trim().split('"').nth(1)?.to_owned())
            })
            .unwrap_or_else(|| panic!("meshtap.toml shows `{key}` commented out"))
    };
    let (cert, key) = (commented("tls_cert"), commented("tls_key"));
    let (tls_volume, _) = volume_of_file(ds, &cert);
    assert_eq!(volume_of_file(ds, &key).0, tls_volume);
    assert_eq!(tls_volume["secret"]["secretName"], "meshtap-tls");
    assert_eq!(tls_volume["secret"]["optional"], true);
    // A kubernetes.io/tls Secret's keys.
    assert!(
        cert.ends_with("/tls.crt") && key.ends_with("/tls.key"),
        "{cert} {key}"
    );
    // The agents ask each other over https with the CA of the same Secret (cert-manager's).
    let peer_ca = commented("peer_ca");
    assert_eq!(volume_of_file(ds, &peer_ca).0, tls_volume);
    assert!(peer_ca.ends_with("/ca.crt"), "{peer_ca}");

    let monitors = validated(
        &[deploy_dir().join("podmonitor.yaml")],
        None,
        "deploy/podmonitor.yaml",
    );
    let auth = &one(&monitors, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["authorization"];
    assert_eq!(auth["type"], "Bearer");
    assert_eq!(auth["credentials"]["name"], "meshtap-token");
    assert_eq!(auth["credentials"]["key"], token_key);

    let policy = one(&objects, "NetworkPolicy");
    assert_eq!(namespace(policy), namespace(ds));
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let spec = &policy["spec"];
    assert!(selects(&spec["podSelector"]["matchLabels"], labels));
    assert_eq!(strings(&spec["policyTypes"]), ["Ingress"]);
    let rules = spec["ingress"].as_array().expect("ingress rules");
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    let port_name = c["ports"][0]["name"].as_str().expect("named port");
    let ports = rules[0]["ports"]
        .as_array()
        .expect("the rule names its ports");
    assert_eq!(ports.len(), 1);
    assert!(ports[0]["port"] == port_name || ports[0]["port"] == c["ports"][0]["containerPort"]);
    assert_eq!(ports[0]["protocol"], "TCP");
    let peers = rules[0]["from"]
        .as_array()
        .expect("the rule names its peers");
    assert_eq!(peers.len(), 2, "Prometheus and the agents: {peers:?}");
    // Prometheus: pods of one namespace, both selected by labels (an empty selector would
    // admit every pod or namespace).
    let prometheus = &peers[0];
    for selector in ["namespaceSelector", "podSelector"] {
        assert!(
            prometheus[selector]["matchLabels"]
                .as_object()
                .is_some_and(|m| !m.is_empty()),
            "Prometheus's {selector} selects by labels: {prometheus}"
        );
    }
    assert!(prometheus.get("ipBlock").is_none());
    // The agents: this namespace's pods with the DaemonSet's labels, no namespaceSelector.
    let agents = &peers[1];
    assert_eq!(
        agents.as_object().map(|o| o.len()),
        Some(1),
        "the agents' peer is a podSelector alone: {agents}"
    );
    assert_eq!(
        &agents["podSelector"]["matchLabels"], &spec["podSelector"]["matchLabels"],
        "the agents admit each other"
    );

    // The README tells how to create the token Secret the DaemonSet reads.
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    assert!(
        readme.contains("create secret generic meshtap-token --from-literal=token="),
        "README shows how to create the token Secret"
    );
}

#[test]
fn dockerfile_builds_the_binary_the_daemonset_runs() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    // Instructions, with `\` continuations joined.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let stages: Vec<(usize, &str, &str)> = instructions
        .iter()
        .enumerate()
        .filter_map(|(i, ins)| {
            let words: Vec<&str> = ins.split_whitespace().collect();
            (words.first() == Some(&"FROM")).then(|| {
                assert!(
                    words.len() == 4 && words[2].eq_ignore_ascii_case("AS"),
                    "`{ins}`: every stage is named"
                );
                (i, words[1], words[3])
            })
        })
        .collect();
    assert_eq!(stages.len(), 2, "a builder and a runtime stage: {stages:?}");
    let (builder_at, builder_image, builder) = stages[0];
    let (runtime_at, _, _) = stages[1];
    let builder_part = &instructions[builder_at..runtime_at];
    let runtime_part = &instructions[runtime_at..];

    // The builder has what `cargo xtask setup` installs, at the same versions.
    let rust_version = {
        let toml = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        toml.lines()
            .find_map(|l| l.trim().strip_prefix("rust-version = \""))
            .and_then(|v| v.strip_suffix('"'))
            .expect("rust-version")
            .to_owned()
    };
    let tag = builder_image.rsplit_once(':').expect("builder image tag").1;
    assert!(
        builder_image.contains("/rust:") && tag.starts_with(&format!("{rust_version}.")),
        "builder {builder_image} is Rust {rust_version}"
    );
    let linker = setup_const("BPF_LINKER_VERSION");
    assert!(
        builder_part
            .iter()
            .any(|i| i == &format!("ARG BPF_LINKER_VERSION={linker}")),
        "the builder installs bpf-linker {linker} as setup.rs does"
    );
    assert!(
        builder_part
            .iter()
            .any(|i| i.contains("cargo install \"bpf-linker@${BPF_LINKER_VERSION}\" --locked")),
        "the builder runs cargo install bpf-linker"
    );
    assert!(
        builder_part
            .iter()
            .any(|i| i.contains("--component rust-src") && i.contains("nightly-${host}")),
        "the builder provides a toolchain named nightly with rust-src (aya-build runs `rustup run nightly`)"
    );
    let build = builder_part
        .iter()
        .find(|i| i.contains("cargo build"))
        .expect("the builder runs cargo build");
    assert!(
        build.contains("cargo build --release --locked -p meshtap;"),
        "`{build}` builds the release agent"
    );
    assert!(build.contains("install -D -m 0755 target/release/meshtap /out/meshtap"));

    // The runtime holds that binary and runs it as the entrypoint, with no fixed arguments.
    let copy = runtime_part
        .iter()
        .find(|i| i.starts_with("COPY"))
        .expect("the runtime copies the binary");
    assert_eq!(
        copy,
        &format!("COPY --from={builder} /out/meshtap /usr/local/bin/meshtap")
    );
    let entrypoint = runtime_part
        .iter()
        .find_map(|i| i.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let entrypoint: Vec<String> =
        serde_json::from_str(entrypoint).expect("ENTRYPOINT in exec (JSON) form");
    assert_eq!(entrypoint, ["/usr/local/bin/meshtap"]);
    assert!(
        !runtime_part
            .iter()
            .any(|i| i.starts_with("CMD") || i.starts_with("USER")),
        "no CMD (the DaemonSet gives the args) and no USER (capabilities need uid 0)"
    );
    assert!(
        runtime_part.iter().any(|i| i == "EXPOSE 9464"),
        "the runtime exposes the agent's port"
    );

    // The DaemonSet runs the entrypoint (no `command` override) as uid 0, with flags the
    // binary has (checked in detail above).
    let objects = rendered();
    let c = container(one(&objects, "DaemonSet"));
    assert!(
        c.get("command").is_none(),
        "the DaemonSet keeps the image's entrypoint"
    );
    assert_eq!(c["securityContext"]["runAsUser"], 0);
    let help = help_flags();
    for (flag, _) in parse_args(&strings(&c["args"])) {
        assert!(help.contains(&flag), "meshtap has no {flag}");
    }
}

/// The agent starts, and gets ready, with the ConfigMap's file and the DaemonSet's flags. The
/// container's paths become the host paths the DaemonSet mounts there, but for the cgroup
/// hierarchy: this machine has the hybrid layout (cgroup v2 at /sys/fs/cgroup/unified), the
/// nodes the DaemonSet is written for have cgroup v2 at /sys/fs/cgroup.
#[test]
fn agent_gets_ready_with_the_daemonsets_config_and_flags() {
    let objects = rendered();
    let ds = one(&objects, "DaemonSet");
    let c = container(ds);
    let tmp = TempDir::new("deploy-config");
    let config_path = tmp.file("meshtap.toml");
    let toml = one(&objects, "ConfigMap")["data"]["meshtap.toml"]
        .as_str()
        .expect("meshtap.toml in the ConfigMap");
    std::fs::write(&config_path, toml).expect("write the config file");
    let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(str::to_owned))
                .flatten()
        })
        .expect("a cgroup2 mount on this machine");

    let token_path = tmp.file("token");
    std::fs::write(&token_path, "deploy-test-token\n").expect("write the token file");
    let mut args: Vec<String> = Vec::new();
    for (flag, value) in parse_args(&strings(&c["args"])) {
        let value = match flag.as_str() {
            "--config" => config_path.clone(),
            // A file of a Secret volume (checked by the test of the Secrets).
            "--token-file" => token_path.clone(),
            "--listen" => format!("127.0.0.1:{}", free_port()),
            "--cgroup-root" => cgroup2.clone(),
            _ => match c["volumeMounts"]
                .as_array()
                .expect("volumeMounts")
                .iter()
                .find(|m| m["mountPath"] == value.as_str())
            {
                Some(_) => {
                    let (volume, _) = volume_at(ds, &value);
                    volume["hostPath"]["path"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{flag} {value} is not a host path"))
                        .to_owned()
                }
                None => value,
            },
        };
        args.extend([flag, value]);
    }
    // No API server here: Kubernetes metadata off whatever the environment says.
    args.extend(["--kubernetes".to_owned(), "off".to_owned()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&argv);
    let health = agent.get("/healthz");
    assert_eq!(health.status, 200, "/healthz");
    let metrics = agent.metrics_text();
    assert!(
        metrics.contains("meshtap_programs_attached"),
        "the agent serves its metrics"
    );
    let api = agent.get("/api/v1/connections");
    assert_eq!(api.status, 401, "/api/ without the token: {}", api.text());
    eprintln!("agent ready with {args:?}");
}
