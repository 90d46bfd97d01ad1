//! `cargo xtask setup`: idempotently installs what building and testing need. Every step prints
//! one line and returns quickly (a few cheap probes, no network) when already satisfied.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{Ctx, euid, exists_on_path, probe, probe_stdout, run};

/// The only bpf-linker that links against the image's nightly rustc LLVM (22); 0.11+ needs a
/// separate LLVM that Debian 12 cannot provide (see `PLATFORM.md`).
const BPF_LINKER_VERSION: &str = "0.10.3";

/// Debian packages the integration tests use:
/// - `nginx`, `redis-server` (with `redis-benchmark`), `memcached`, `prometheus`: real services
///   the agent observes (and prometheus's `promtool` to check the exposition format);
/// - `curl`, `wrk`: HTTP client and load generator;
/// - `python3`: test helpers (stand-in Zipkin and OTLP collectors, schema validation);
/// - `iproute2`: network namespaces and veth pairs (`ip`), `ss`;
/// - `bpftool`: inspect the programs and maps the agent loads;
/// - `procps` (`ps`, `pgrep`, `sysctl`), `psmisc` (`fuser`, `killall`): process / port handling;
/// - `iptables`: DNAT inside test network namespaces, as kube-proxy does for Service ClusterIPs
///   and as a packet to another node's pod looks to this node (the Kubernetes tests);
/// - `postgresql`, `postgresql-contrib`: PostgreSQL 15 (`initdb`, `pg_ctl`, `psql`, `pgbench`)
///   for the PostgreSQL tests, run in a temporary directory.
/// - `libcap2-bin` (`capsh`): the TLS test runs the agent without CAP_SYS_ADMIN;
/// - `gcc`, `libssl-dev`: the TLS test builds an HTTPS client with OpenSSL linked statically
///   (`libssl.a`), as executables such as Node's carry it;
/// - `mariadb-server`, `mariadb-client`: the MySQL protocol tests' server (`mariadbd`,
///   `mariadb-install-db`) and the CLI that creates their tables.
/// - `nghttp2-server` (`nghttpd`), `nghttp2-client` (`h2load`), `nghttp2-proxy` (`nghttpx`, which
///   accepts the `Upgrade: h2c` handshake): the HTTP/2 tests' and the bench's servers and
///   clients (nghttp2 1.52).
/// - `nodejs`: Node for `@grpc/grpc-js` (see [`NPM_PACKAGES`]); a machine image may already
///   carry a `node` of its own on PATH, which is then used.
/// - `chromium`: the headless browser that opens the agent's web page (tests/tests/web.rs).
/// - `golang-go`: Go (1.19) to build the TLS test's HTTPS server and client on Go's own
///   `crypto/tls` (`tests/scripts/https_go.go`, standard library only, no module download).
const DEBIAN_PACKAGES: &[&str] = &[
    "nginx",
    "curl",
    "python3",
    "iproute2",
    "bpftool",
    "prometheus",
    "wrk",
    "redis-server",
    "memcached",
    "procps",
    "psmisc",
    "iptables",
    "postgresql",
    "postgresql-contrib",
    "mariadb-server",
    "mariadb-client",
    "openssl",
    "nghttp2-server",
    "nghttp2-client",
    "nghttp2-proxy",
    "chromium",
    "libcap2-bin",
    "gcc",
    "libssl-dev",
    "golang-go",
];

/// Packages whose install starts a service that would hold a port the tests use:
/// (package, service, port). Stopped right after they are installed.
const SERVICES: &[(&str, &str, u16)] = &[
    ("nginx", "nginx", 80),
    ("prometheus", "prometheus", 9090),
    ("redis-server", "redis-server", 6379),
    ("postgresql", "postgresql", 5432),
    ("mariadb-server", "mariadb", 3306),
    ("memcached", "memcached", 11211),
];

/// Python modules the tests import, and the PyPI distributions that provide them. The MySQL
/// clients are pinned: tests/tests/db_mysql.rs counts the commands they send (mysql-connector
/// re-sends COM_STMT_RESET before each execution).
/// `kubernetes-validate` bundles Kubernetes' JSON schemas (tests/tests/deploy.rs validates
/// deploy/ with them); its version is pinned, and checked, because the schemas it carries are.
/// `opentelemetry-proto` (the OpenTelemetry project's generated OTLP classes, with the protobuf
/// runtime it pulls, 5.x to 7.x) is the stand-in OTLP collector's decoder
/// (tests/scripts/otlp_collector.py): independent of the agent's prost encoder.
/// `psycopg` 3 with its bundled libpq (`[binary]`) is pinned, and checked, because
/// tests/tests/db_postgres_edges.rs counts the messages its pipeline mode sends.
/// `grpcio` is pinned, and checked, because tests/tests/grpc.rs asserts what its transport puts
/// on the wire (Trailers-Only errors, a deadline's `grpc-status: 4` or reset).
/// The OpenTelemetry Python SDK and its B3 propagator are the tracer of the instrumented
/// applications in tests/tests/traces_mixed.rs (tests/scripts/otel_service.py): pinned, with the
/// API of the same release, because the test reads the spans they make.
const PYTHON_IMPORTS: &str = "import jsonschema, yaml, requests, kubernetes_validate, pymysql, mysql.connector, redis, pymemcache, pg8000.native, psycopg; \
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2; \
    import opentelemetry.sdk.trace, opentelemetry.propagators.b3; \
    from importlib.metadata import version; \
    assert version('kubernetes-validate') == '1.37.0', version('kubernetes-validate'); \
    assert version('opentelemetry-proto') == '1.45.2', version('opentelemetry-proto'); \
    assert version('opentelemetry-sdk') == '1.45.2', version('opentelemetry-sdk'); \
    assert version('opentelemetry-propagator-b3') == '1.45.1', version('opentelemetry-propagator-b3'); \
    assert version('pg8000') == '1.31.6', version('pg8000'); \
    assert psycopg.pq.__impl__ == 'binary', psycopg.pq.__impl__; \
    assert version('psycopg') == '3.2.3', version('psycopg'); \
    import grpc; assert grpc.__version__ == '1.85.1', grpc.__version__";
const PYTHON_PACKAGES: &[&str] = &[
    "jsonschema",
    "pyyaml",
    "requests",
    "kubernetes-validate==1.37.0",
    "opentelemetry-proto==1.45.2",
    "opentelemetry-api==1.45.2",
    "opentelemetry-sdk==1.45.2",
    "opentelemetry-propagator-b3==1.45.1",
    "PyMySQL==1.2.4",
    "mysql-connector-python==26.10.0",
    "redis",
    "pymemcache",
    "pg8000==1.31.6",
    "psycopg[binary]==3.2.3",
    "grpcio==1.85.1",
];

/// npm packages the tests use, pinned, installed into [`NPM_PREFIX`] (outside the repository):
/// `@grpc/grpc-js`, Node's pure-JavaScript gRPC (tests/scripts/grpc_node.js, through
/// grpc_node.py, which looks for it there), and `playwright-core`, which drives Debian's
/// chromium in tests/tests/web.rs (`npx playwright install` is not used: the tests run the
/// system's `/usr/bin/chromium`).
const NPM_PACKAGES: &[(&str, &str)] = &[("@grpc/grpc-js", "1.14.7"), ("playwright-core", "1.65.1")];
const NPM_PREFIX: &str = "/usr/local/lib/meshtap/node";

/// Debian 12's kubectl (package kubernetes-client, 1.20: its built-in kustomize is v2.0.3, the
/// oldest deploy/kustomization.yaml stays compatible with), unpacked here rather than installed:
/// machine images may carry another package owning /usr/bin/kubectl (this one's has Google's
/// `kubectl`), which dpkg would refuse to overwrite. tests/tests/deploy.rs looks for it here.
const DEBIAN_KUBECTL_DIR: &str = "/usr/local/lib/meshtap/kubernetes-client";
const DEBIAN_KUBECTL_PACKAGE: &str = "kubernetes-client";

/// Packages of another Debian release, unpacked (not installed: nothing of the system changes)
/// under `/usr/local/lib/meshtap`, as [`DEBIAN_KUBECTL_DIR`] is. apt fetches them from that
/// release's archive with a sources list and state of its own (it still checks the archive's
/// signatures with the system's keyring). The tests read them from the same paths.
struct Unpacked {
    /// The setup step's name.
    name: &'static str,
    dir: &'static str,
    sources: &'static str,
    packages: &'static [&'static str],
    /// Files that must exist under `dir` once unpacked (their presence skips the step).
    files: &'static [&'static str],
}

/// OpenSSL 1.1 (Debian 11's `libssl1.1` and `libssl-dev`): a client built against it proves
/// the uprobes on `libssl.so.1.1` (Debian 12 ships OpenSSL 3 only).
const OPENSSL_1_1: Unpacked = Unpacked {
    name: "openssl 1.1 (debian 11)",
    dir: "/usr/local/lib/meshtap/openssl-1.1",
    sources: "deb http://deb.debian.org/debian bullseye main\n\
              deb http://deb.debian.org/debian-security bullseye-security main\n",
    packages: &["libssl1.1", "libssl-dev"],
    files: &[
        "usr/lib/x86_64-linux-gnu/libssl.so.1.1",
        "usr/include/openssl/ssl.h",
    ],
};

/// OpenSSL 3.5 (Debian 13's `libssl3t64`, with Debian 13's C library, loader, zlib and zstd
/// that it needs): a client run with that loader proves the uprobe on `SSL_write_ex2`, which
/// OpenSSL has from 3.3 on (Debian 12 has 3.0).
const OPENSSL_3_5: Unpacked = Unpacked {
    name: "openssl 3.5 (debian 13)",
    dir: "/usr/local/lib/meshtap/openssl-3.5",
    sources: "deb http://deb.debian.org/debian trixie main\n",
    packages: &["libssl3t64", "libc6", "zlib1g", "libzstd1"],
    files: &[
        "usr/lib/x86_64-linux-gnu/libssl.so.3",
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    ],
};

/// Go 1.23 (Debian 12's backports): the TLS tests build their Go programs with it too, a Go of
/// today's binaries (`golang-go` is 1.19).
const GO_1_23: Unpacked = Unpacked {
    name: "go 1.23 (debian 12 backports)",
    dir: "/usr/local/lib/meshtap/go-1.23",
    sources: "deb http://deb.debian.org/debian bookworm-backports main\n",
    packages: &["golang-1.23-go", "golang-1.23-src"],
    files: &[
        "usr/lib/go-1.23/bin/go",
        "usr/lib/go-1.23/src/crypto/tls/conn.go",
    ],
};

/// Runs the whole setup; `packages == false` (`--no-packages`) skips the apt and pip steps.
pub fn setup(ctx: &Ctx, packages: bool) -> Result<()> {
    let start = Instant::now();
    rust(ctx)?;
    if packages {
        let mut apt = Apt::default();
        debian_packages(ctx, &mut apt)?;
        debian_kubectl(ctx, &mut apt)?;
        unpack(ctx, &OPENSSL_1_1)?;
        unpack(ctx, &OPENSSL_3_5)?;
        unpack(ctx, &GO_1_23)?;
        python_modules(ctx, &mut apt)?;
        npm_packages(ctx, &mut apt)?;
    } else {
        step("debian packages", "skipped (--no-packages)");
        step(
            "kubectl (debian kubernetes-client)",
            "skipped (--no-packages)",
        );
        step(OPENSSL_1_1.name, "skipped (--no-packages)");
        step(OPENSSL_3_5.name, "skipped (--no-packages)");
        step(GO_1_23.name, "skipped (--no-packages)");
        step("python modules", "skipped (--no-packages)");
        step("npm packages", "skipped (--no-packages)");
    }
    eprintln!("[setup] done in {:.2}s", start.elapsed().as_secs_f64());
    Ok(())
}

/// The Rust pieces only: what `cargo build -p meshtap` (agent/build.rs) and the lints need.
pub fn rust(ctx: &Ctx) -> Result<()> {
    nightly_rust_src(ctx)?;
    lint_components(ctx)?;
    bpf_linker(ctx)
}

fn step(name: &str, what: &str) {
    eprintln!("[setup] {name}: {what}");
}

/// `rustup` for probes: never lets a probe silently download a toolchain.
fn rustup_probe(ctx: &Ctx) -> std::process::Command {
    let mut cmd = ctx.cmd("rustup");
    cmd.env("RUSTUP_AUTO_INSTALL", "0");
    cmd
}

/// Step 1: the nightly toolchain (on the image) needs `rust-src` for `-Z build-std=core`.
fn nightly_rust_src(ctx: &Ctx) -> Result<()> {
    const NAME: &str = "rust-src (nightly)";
    if !exists_on_path(ctx, "rustup") {
        bail!(
            "rustup not found (looked on PATH and in {}): install rustup with the stable and \
             nightly toolchains (https://rustup.rs)",
            ctx.cargo_bin.display()
        );
    }
    let toolchains =
        probe_stdout(rustup_probe(ctx).args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains
        .lines()
        .any(|line| line.starts_with("nightly-") || line.starts_with("nightly "))
    {
        bail!(
            "the nightly toolchain is not installed (agent/build.rs compiles agent-ebpf with it via \
             aya-build); install it with `rustup toolchain install nightly --profile minimal \
             --component rust-src` and re-run `cargo xtask setup`"
        );
    }
    let installed = probe_stdout(rustup_probe(ctx).args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("`rustup component list --toolchain nightly --installed` failed")?;
    if has_component(&installed, "rust-src") {
        step(NAME, "already installed");
        return Ok(());
    }
    step(NAME, "installing");
    run(ctx
        .cmd("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// `rustup component list --installed` prints `rust-src` bare and others as `<name>-<target>`.
fn has_component(list: &str, name: &str) -> bool {
    list.lines().map(str::trim).any(|line| {
        line == name
            || line
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

/// rustfmt and clippy for the toolchain running xtask (stable): `lint` and `test` need them.
fn lint_components(ctx: &Ctx) -> Result<()> {
    const NAME: &str = "rustfmt + clippy (stable)";
    let installed = probe_stdout(rustup_probe(ctx).args(["component", "list", "--installed"]))
        .context("`rustup component list --installed` failed")?;
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !has_component(&installed, c))
        .collect();
    if missing.is_empty() {
        step(NAME, "already installed");
        return Ok(());
    }
    step(NAME, &format!("installing {}", missing.join(" ")));
    run(ctx.cmd("rustup").args(["component", "add"]).args(&missing))
}

/// Step 2: bpf-linker, exactly [`BPF_LINKER_VERSION`].
fn bpf_linker(ctx: &Ctx) -> Result<()> {
    let name = format!("bpf-linker {BPF_LINKER_VERSION}");
    // `bpf-linker 0.10.3`; resolved on the augmented PATH, i.e. ~/.cargo/bin first.
    let found = probe_stdout(ctx.cmd("bpf-linker").arg("--version"));
    let version = found
        .as_deref()
        .and_then(|out| out.split_whitespace().nth(1).map(str::to_owned));
    if version.as_deref() == Some(BPF_LINKER_VERSION) {
        step(&name, "already installed");
        return Ok(());
    }
    let why = match version {
        Some(other) => format!("found {other}, installing (takes about 2 minutes)"),
        None => "not found, installing (takes about 2 minutes)".to_owned(),
    };
    step(&name, &why);
    run(ctx
        .cargo([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ])
        .stdin(Stdio::null()))?;
    let out = probe_stdout(ctx.cmd("bpf-linker").arg("--version")).unwrap_or_default();
    if out.split_whitespace().nth(1) != Some(BPF_LINKER_VERSION) {
        bail!(
            "bpf-linker still not {BPF_LINKER_VERSION} after `cargo install` (got {:?}); is \
             another bpf-linker earlier on PATH than {}?",
            out.trim(),
            ctx.cargo_bin.display()
        );
    }
    Ok(())
}

/// Runs `apt-get update` at most once per setup.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, ctx: &Ctx, packages: &[&str]) -> Result<()> {
        if euid() != 0 {
            bail!(
                "installing Debian packages needs root: run `apt-get install -y \
                 --no-install-recommends {}` as root, re-run as root, or pass --no-packages",
                packages.join(" ")
            );
        }
        self.update(ctx)?;
        run(apt_get(ctx)
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages))
    }

    fn update(&mut self, ctx: &Ctx) -> Result<()> {
        if !self.updated {
            run(apt_get(ctx).arg("update"))?;
            self.updated = true;
        }
        Ok(())
    }
}

fn apt_get(ctx: &Ctx) -> std::process::Command {
    let mut cmd = ctx.cmd("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    cmd
}

/// Which of `packages` dpkg does not report as installed.
fn missing_debian_packages<'a>(ctx: &Ctx, packages: &[&'a str]) -> Result<Vec<&'a str>> {
    if !exists_on_path(ctx, "dpkg-query") {
        bail!("dpkg-query not found: this setup expects Debian 12; pass --no-packages to skip");
    }
    // One query for all: exits 1 when some package is unknown, but still lists the known ones.
    let out = probe(
        ctx.cmd("dpkg-query")
            .args(["-W", "-f=${Package}\t${Status}\n"])
            .args(packages),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed = |pkg: &str| {
        stdout.lines().any(|line| {
            line.split_once('\t').is_some_and(|(name, status)| {
                name == pkg && status.split_whitespace().last() == Some("installed")
            })
        })
    };
    Ok(packages
        .iter()
        .copied()
        .filter(|pkg| !installed(pkg))
        .collect())
}

/// Step 3: the Debian packages, then stop the services their install may have started.
fn debian_packages(ctx: &Ctx, apt: &mut Apt) -> Result<()> {
    const NAME: &str = "debian packages";
    let missing = missing_debian_packages(ctx, DEBIAN_PACKAGES)?;
    if missing.is_empty() {
        step(NAME, &format!("all {} installed", DEBIAN_PACKAGES.len()));
        return Ok(());
    }
    step(NAME, &format!("installing {}", missing.join(" ")));
    apt.install(ctx, &missing)?;
    let still = missing_debian_packages(ctx, DEBIAN_PACKAGES)?;
    if !still.is_empty() {
        bail!("apt-get install did not install: {}", still.join(" "));
    }
    stop_services(ctx, &missing);
    Ok(())
}

/// Debian's nginx / prometheus / redis-server / memcached / postgresql / mariadb start their
/// service on install (unless a `policy-rc.d` forbids it). Stop them so ports
/// 80/9090/6379/11211/5432/3306 are free for the tests; failures
/// (not running, no init script) are ignored.
fn stop_services(ctx: &Ctx, installed_now: &[&str]) {
    let services: Vec<(&str, u16)> = SERVICES
        .iter()
        .filter(|(pkg, _, _)| installed_now.contains(pkg))
        .map(|&(_, service, port)| (service, port))
        .collect();
    if services.is_empty() {
        return;
    }
    let init = probe_stdout(ctx.cmd("ps").args(["-p", "1", "-o", "comm="]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let systemd = init == "systemd";
    for &(service, _) in &services {
        let mut cmd = if systemd {
            let mut cmd = ctx.cmd("systemctl");
            cmd.args(["stop", service]);
            cmd
        } else {
            let mut cmd = ctx.cmd("service");
            cmd.args([service, "stop"]);
            cmd
        };
        let _ignored = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let list: Vec<String> = services
        .iter()
        .map(|(service, port)| format!("{service} (:{port})"))
        .collect();
    step(
        "services",
        &format!(
            "stopped {} via {} (PID 1 is {:?})",
            list.join(", "),
            if systemd { "systemctl" } else { "service" },
            init
        ),
    );
}

/// Step 4: Debian's kubectl, unpacked into [`DEBIAN_KUBECTL_DIR`] (see there why not installed):
/// `apt-get download` fetches the package through apt's configured sources, `dpkg-deb -x`
/// unpacks it. Skipped when the kubectl there already reports version 1.20.
fn debian_kubectl(ctx: &Ctx, apt: &mut Apt) -> Result<()> {
    const NAME: &str = "kubectl (debian kubernetes-client)";
    let kubectl = Path::new(DEBIAN_KUBECTL_DIR).join("usr/bin/kubectl");
    let version = || {
        probe_stdout(ctx.cmd(&kubectl).args(["version", "--client", "--short"]))
            .and_then(|out| out.split_whitespace().last().map(str::to_owned))
    };
    if let Some(v) = version().filter(|v| v.starts_with("v1.20.")) {
        step(NAME, &format!("{v} already at {}", kubectl.display()));
        return Ok(());
    }
    if euid() != 0 {
        bail!(
            "unpacking Debian's kubectl into {DEBIAN_KUBECTL_DIR} needs root: re-run as root, or \
             pass --no-packages"
        );
    }
    step(NAME, &format!("unpacking into {DEBIAN_KUBECTL_DIR}"));
    apt.update(ctx)?;
    let download =
        std::env::temp_dir().join(format!("meshtap-setup-kubectl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download).with_context(|| format!("create {}", download.display()))?;
    let result = (|| {
        // As root, apt downloads as user _apt, who cannot write to our directory.
        run(apt_get(ctx)
            .args([
                "-o",
                "APT::Sandbox::User=root",
                "download",
                DEBIAN_KUBECTL_PACKAGE,
            ])
            .current_dir(&download))?;
        let deb = std::fs::read_dir(&download)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?;
        let _ = std::fs::remove_dir_all(DEBIAN_KUBECTL_DIR);
        std::fs::create_dir_all(DEBIAN_KUBECTL_DIR)?;
        run(ctx
            .cmd("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(DEBIAN_KUBECTL_DIR))
    })();
    let _ = std::fs::remove_dir_all(&download);
    result?;
    match version() {
        Some(v) if v.starts_with("v1.20.") => Ok(()),
        other => bail!(
            "{} reports version {other:?} after unpacking {DEBIAN_KUBECTL_PACKAGE}, expected v1.20.x",
            kubectl.display()
        ),
    }
}

/// Step 4b: packages of another Debian release unpacked (see [`Unpacked`]). Skipped when their
/// files are there.
fn unpack(ctx: &Ctx, what: &Unpacked) -> Result<()> {
    let dir = Path::new(what.dir);
    if what.files.iter().all(|f| dir.join(f).is_file()) {
        step(what.name, &format!("already at {}", what.dir));
        return Ok(());
    }
    if euid() != 0 {
        bail!(
            "unpacking {} into {} needs root: re-run as root, or pass --no-packages",
            what.packages.join(" "),
            what.dir
        );
    }
    step(what.name, &format!("unpacking into {}", what.dir));
    let work = std::env::temp_dir().join(format!("meshtap-setup-unpack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let result = (|| {
        for sub in ["lists/partial", "cache/archives/partial", "debs"] {
            std::fs::create_dir_all(work.join(sub))?;
        }
        let sources = work.join("sources.list");
        std::fs::write(&sources, what.sources)?;
        // apt with that release's archive only, and no installed packages to compare with: the
        // system's own sources, lists and status are neither read nor changed.
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/nonexistent".to_string(),
            format!("Dir::State::Lists={}", work.join("lists").display()),
            format!("Dir::Cache={}", work.join("cache").display()),
            "Dir::State::status=/dev/null".to_string(),
            // As root, apt downloads as user _apt, who cannot write to our directory.
            "APT::Sandbox::User=root".to_string(),
        ];
        let apt = |args: &[&str]| {
            let mut cmd = apt_get(ctx);
            for o in &options {
                cmd.args(["-o", o]);
            }
            cmd.args(args).current_dir(work.join("debs"));
            cmd
        };
        run(&mut apt(&["update"]))?;
        let mut download = vec!["download"];
        download.extend(what.packages);
        run(&mut apt(&download))?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        for deb in std::fs::read_dir(work.join("debs"))? {
            let deb = deb?.path();
            if deb.extension().is_some_and(|x| x == "deb") {
                run(ctx.cmd("dpkg-deb").arg("-x").arg(&deb).arg(dir))?;
            }
        }
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result?;
    if let Some(missing) = what.files.iter().find(|f| !dir.join(f).is_file()) {
        bail!(
            "{} missing after unpacking {}",
            dir.join(missing).display(),
            what.packages.join(" ")
        );
    }
    Ok(())
}

/// The interpreter the tests run their scripts with (`tests/src/process.rs`: `python()`):
/// `$MESHTAP_PYTHON`, else Debian's `/usr/bin/python3`, else `python3` on PATH. The modules must
/// be installed for that one, not for whichever `python3` comes first on PATH (pyenv's, here).
fn python() -> String {
    if let Ok(p) = std::env::var("MESHTAP_PYTHON") {
        return p;
    }
    if Path::new("/usr/bin/python3").is_file() {
        return "/usr/bin/python3".to_owned();
    }
    "python3".to_owned()
}

/// Step 5: Python modules for the tests, with pip, only if they do not import already.
fn python_modules(ctx: &Ctx, apt: &mut Apt) -> Result<()> {
    let py = python();
    let name = format!("python modules ({}) for {py}", PYTHON_PACKAGES.join(", "));
    let imports =
        || probe(ctx.cmd(&py).args(["-c", PYTHON_IMPORTS])).is_ok_and(|out| out.status.success());
    if imports() {
        step(&name, "already importable");
        return Ok(());
    }
    if !probe(ctx.cmd(&py).args(["-m", "pip", "--version"])).is_ok_and(|out| out.status.success()) {
        step("python3-pip", "pip missing, installing");
        apt.install(ctx, &["python3-pip"])?;
    }
    step(&name, "installing with pip");
    let mut pip = ctx.cmd(&py);
    pip.args(["-m", "pip", "install", "--quiet"])
        .args(PYTHON_PACKAGES)
        .stdin(Stdio::null())
        // Understood by every pip that has the matching check; ignored by older ones.
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_ROOT_USER_ACTION", "ignore");
    if externally_managed(ctx, &py) {
        // Debian's own python3 refuses pip installs (PEP 668). On Debian, pip installs to
        // /usr/local/lib/python3.11/dist-packages and leaves dpkg's files alone.
        pip.env("PIP_BREAK_SYSTEM_PACKAGES", "1");
    }
    run(&mut pip)?;
    if !imports() {
        bail!("`{py} -c \"{PYTHON_IMPORTS}\"` still fails after the pip install");
    }
    Ok(())
}

/// Whether `py` is marked externally managed (PEP 668), as Debian's `/usr/bin/python3` is.
fn externally_managed(ctx: &Ctx, py: &str) -> bool {
    probe_stdout(ctx.cmd(py).args([
        "-c",
        "import sysconfig; print(sysconfig.get_path('stdlib'))",
    ]))
    .is_some_and(|stdlib| Path::new(stdlib.trim()).join("EXTERNALLY-MANAGED").exists())
}

/// The version of `package` installed under [`NPM_PREFIX`], from its `package.json`.
fn npm_installed_version(package: &str) -> Option<String> {
    let manifest = Path::new(NPM_PREFIX)
        .join("node_modules")
        .join(package)
        .join("package.json");
    let text = std::fs::read_to_string(manifest).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["version"].as_str().map(str::to_owned)
}

/// Step 6: the npm packages, exactly [`NPM_PACKAGES`], into [`NPM_PREFIX`]; Node from Debian
/// (`nodejs`) if no `node` is on PATH.
fn npm_packages(ctx: &Ctx, apt: &mut Apt) -> Result<()> {
    let wanted: Vec<String> = NPM_PACKAGES
        .iter()
        .map(|(name, version)| format!("{name}@{version}"))
        .collect();
    let name = format!("npm packages ({}) in {NPM_PREFIX}", wanted.join(", "));
    let missing: Vec<&String> = NPM_PACKAGES
        .iter()
        .zip(&wanted)
        .filter(|((package, version), _)| {
            npm_installed_version(package).as_deref() != Some(*version)
        })
        .map(|(_, spec)| spec)
        .collect();
    if missing.is_empty() {
        step(&name, "already installed");
        return Ok(());
    }
    if !exists_on_path(ctx, "node") || !exists_on_path(ctx, "npm") {
        step("nodejs", "node or npm missing, installing");
        apt.install(ctx, &["nodejs", "npm"])?;
    }
    step(&name, "installing with npm");
    std::fs::create_dir_all(NPM_PREFIX).with_context(|| format!("create {NPM_PREFIX}"))?;
    run(ctx
        .cmd("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--save-exact",
            "--prefix",
            NPM_PREFIX,
        ])
        .args(&missing)
        .stdin(Stdio::null()))?;
    for (package, version) in NPM_PACKAGES {
        let got = npm_installed_version(package);
        if got.as_deref() != Some(*version) {
            bail!("{package} in {NPM_PREFIX} is {got:?} after npm install, expected {version}");
        }
    }
    Ok(())
}
