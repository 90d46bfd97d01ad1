//! TLS libraries: finding the files that hold OpenSSL's `SSL_read`/`SSL_write` on the node
//! (shared `libssl.so*` and executables that link OpenSSL statically and export its symbols,
//! such as Node's), and executables built with Go's `crypto/tls` (see [`go`]), and attaching
//! the uprobes of `agent-ebpf/src/tls.rs` (`go_tls.rs`) to each file once.
//!
//! A uprobe belongs to a file (its inode), not to a process: once attached it fires in every
//! process that maps the file, including processes started later and processes that load the
//! library later (`dlopen`). So only new *files* need finding: the system's library
//! directories at start, every process's mappings at start, then the mappings of each process
//! that appears or executes another program (checked every second), and all of them again
//! every [`FULL_SCAN_EVERY`] scans (a process that loads a library from a new file long after
//! it started). Files are told apart by device and inode (the same file under two paths, or in
//! a container's mount namespace through `/proc/<pid>/root`, is probed once).

use std::{
    collections::HashMap,
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use meshtap_common::MAX_TLS_LIBRARIES;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use crate::metrics::Registry;

mod go;

/// The probed functions and their entry programs; every one also gets `tls_return`.
/// `SSL_read` and `SSL_write` must be present; the others are probed where they exist.
const FUNCTIONS: &[(&str, &str)] = &[
    ("SSL_read", "tls_read_enter"),
    ("SSL_write", "tls_write_enter"),
    ("SSL_read_ex", "tls_read_ex_enter"),
    ("SSL_write_ex", "tls_write_ex_enter"),
    // OpenSSL 3.3 and newer.
    ("SSL_write_ex2", "tls_write_ex2_enter"),
    ("SSL_do_handshake", "tls_handshake_enter"),
    ("SSL_free", FREE_PROGRAM),
];
/// `SSL_free` has an entry program only.
const FREE_PROGRAM: &str = "tls_free_enter";
const RETURN_PROGRAM: &str = "tls_return";
/// The tail-call target that sends the rest of an HTTP/2 connection's plaintext: loaded (with
/// the others, not attached) and installed in `TLS_TAIL`.
pub const CONTINUE_PROGRAM: &str = "tls_continue";
/// Every attached program of this module, loaded when TLS plaintext is on.
pub const PROGRAMS: &[&str] = &[
    go::READ_PROGRAM,
    go::WRITE_PROGRAM,
    go::HANDSHAKE_PROGRAM,
    go::RETURN_PROGRAM,
    "tls_read_enter",
    "tls_write_enter",
    "tls_read_ex_enter",
    "tls_write_ex_enter",
    "tls_write_ex2_enter",
    "tls_handshake_enter",
    FREE_PROGRAM,
    RETURN_PROGRAM,
];

/// Where shared libraries live on the distributions we know, searched at start (under
/// `<proc root>/1/root`, the host's file system) so that the system's `libssl` is probed before
/// any process maps it.
const LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
];

/// Scans between two full scans (at one scan a second, 30 s).
pub const FULL_SCAN_EVERY: u32 = 30;

/// Files remembered as examined; past it those found not to be TLS libraries are forgotten
/// (and examined again if met again).
const MAX_EXAMINED: usize = 16384;

/// Files larger than this are not examined for OpenSSL's symbols.
const MAX_FILE_BYTES: u64 = 1024 * 1024 * 1024;

pub mod name {
    pub const LIBRARIES_PROBED: &str = "meshtap_tls_libraries_probed";
    pub const ATTACH_FAILURES: &str = "meshtap_tls_attach_failures";
    pub const PLAINTEXT_EVENTS: &str = "meshtap_tls_plaintext_events";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LibraryLabels {
    pub library: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// The TLS probes' self-metrics.
#[derive(Default, Clone)]
pub struct TlsMetrics {
    pub libraries_probed: Family<LibraryLabels, Gauge>,
    pub attach_failures: Family<ReasonLabels, Counter>,
    pub plaintext_events: Family<LibraryLabels, Counter>,
}

impl TlsMetrics {
    pub fn new(registry: &Registry) -> Self {
        let m = TlsMetrics::default();
        registry.register(
            name::LIBRARIES_PROBED,
            "TLS library files whose read and write functions carry meshtap's uprobes (OpenSSL's SSL_read/SSL_write, Go's crypto/tls), by file name",
            m.libraries_probed.clone(),
        );
        registry.register(
            name::ATTACH_FAILURES,
            "TLS library files not probed, by reason: permission (uprobes refused: CAP_SYS_ADMIN missing), limit (64 files probed already), unsupported (a Go executable older than Go 1.17, not x86-64, or without a *net.TCPConn itab), unreadable (the file's symbols could not be read), attach (the kernel refused the uprobe otherwise)",
            m.attach_failures.clone(),
        );
        registry.register(
            name::PLAINTEXT_EVENTS,
            "Plaintext events the TLS probes sent (each SSL_read/SSL_write or Go crypto/tls Read/Write that moved bytes on a tracked connection), by library file name",
            m.plaintext_events.clone(),
        );
        m
    }
}

/// File identity: device and inode.
type FileId = (u64, u64);

/// What became of a file examined for TLS symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Examined {
    /// Probed, with this index in `libraries`.
    Probed,
    /// Not a TLS library (no `SSL_read`/`SSL_write`), or could not be probed.
    Skipped,
}

/// One probed file.
#[derive(Debug)]
pub struct Library {
    /// The file name (`libssl.so.3`, `node`): the `library` label.
    pub name: String,
}

/// Why a file could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum TlsAttachError {
    #[error(
        "attaching uprobes to {path} was refused ({source}): TLS plaintext needs CAP_SYS_ADMIN"
    )]
    Permission {
        path: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching uprobes to {path} failed: {source}")]
    Attach {
        path: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("program {program} is missing from the eBPF object")]
    MissingProgram { program: &'static str },
}

/// The TLS libraries found and probed, and what is known about the processes already looked at.
pub struct TlsProbes {
    proc_root: PathBuf,
    /// Index + 1 is the attach cookie (0: none).
    libraries: Vec<Library>,
    examined: HashMap<FileId, Examined>,
    /// Processes looked at, with the identity of the executable they ran then.
    processes: HashMap<u32, FileId>,
    scans: u32,
    /// Set once the kernel refused a uprobe for lack of privileges: no more attempts.
    refused: bool,
    metrics: TlsMetrics,
    /// Kernel counters of plaintext events per library index, last values read.
    plaintext_seen: Vec<u64>,
}

impl TlsProbes {
    pub fn new(proc_root: &Path, metrics: TlsMetrics) -> Self {
        TlsProbes {
            proc_root: proc_root.to_path_buf(),
            libraries: Vec::new(),
            examined: HashMap::new(),
            processes: HashMap::new(),
            scans: 0,
            refused: false,
            metrics,
            plaintext_seen: Vec::new(),
        }
    }

    pub fn libraries(&self) -> &[Library] {
        &self.libraries
    }

    /// Whether the kernel refused uprobes (no privilege): TLS plaintext is off.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// The first scan: the system's library directories and every process.
    pub fn start(&mut self, ebpf: &mut Ebpf) {
        // The host's file system through pid 1 (a DaemonSet with the host's pid namespace), else
        // the agent's own (pid 1's root can be closed to a root without CAP_SYS_PTRACE).
        let mut host = self.proc_root.join("1/root");
        if fs::read_dir(&host).is_err() {
            host = self.proc_root.join("self/root");
        }
        for dir in LIBRARY_DIRS {
            let Ok(entries) = fs::read_dir(host.join(dir.trim_start_matches('/'))) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|e| is_libssl(&e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect();
            paths.sort();
            for path in paths {
                self.consider(ebpf, &path, false);
            }
        }
        self.scan(ebpf);
    }

    /// One periodic scan: processes not seen before (or that executed another program since),
    /// every process each [`FULL_SCAN_EVERY`] scans.
    pub fn scan(&mut self, ebpf: &mut Ebpf) {
        if self.refused {
            return;
        }
        if self.scans.is_multiple_of(FULL_SCAN_EVERY) {
            self.processes.clear();
        }
        self.scans = self.scans.wrapping_add(1);
        let Ok(entries) = fs::read_dir(&self.proc_root) else {
            return;
        };
        let mut alive = HashMap::with_capacity(self.processes.len());
        for entry in entries.filter_map(|e| e.ok()) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            let dir = entry.path();
            let Ok(exe) = fs::metadata(dir.join("exe")) else {
                continue;
            };
            let exe_id = (exe.dev(), exe.ino());
            if self.processes.get(&pid) != Some(&exe_id) {
                self.scan_process(ebpf, &dir);
            }
            alive.insert(pid, exe_id);
            if self.refused {
                return;
            }
        }
        self.processes = alive;
    }

    /// The libraries a process maps, and its executable if it exports OpenSSL's symbols.
    fn scan_process(&mut self, ebpf: &mut Ebpf, dir: &Path) {
        self.consider(ebpf, &dir.join("exe"), true);
        let Ok(maps) = fs::read_to_string(dir.join("maps")) else {
            return;
        };
        let root = dir.join("root");
        let mut seen = Vec::new();
        for line in maps.lines() {
            // address perms offset dev inode path
            let Some(path) = line.split_whitespace().nth(5) else {
                continue;
            };
            let Some(file) = path.rsplit('/').next() else {
                continue;
            };
            if !is_libssl(file) || !path.starts_with('/') || seen.contains(&path) {
                continue;
            }
            seen.push(path);
            self.consider(ebpf, &root.join(path.trim_start_matches('/')), false);
        }
    }

    /// Probes the file at `path` if it is new and holds OpenSSL's read and write.
    fn consider(&mut self, ebpf: &mut Ebpf, path: &Path, executable: bool) {
        if self.refused {
            return;
        }
        let Ok(meta) = fs::metadata(path) else {
            return;
        };
        let id = (meta.dev(), meta.ino());
        if self.examined.contains_key(&id) {
            return;
        }
        if self.examined.len() >= MAX_EXAMINED {
            self.examined.retain(|_, e| *e == Examined::Probed);
        }
        if meta.len() > MAX_FILE_BYTES || meta.len() == 0 {
            self.examined.insert(id, Examined::Skipped);
            return;
        }
        // Opened once: examined and attached through the same open file, so that a process
        // that exits meanwhile (its /proc/<pid>/exe gone) does not matter.
        let opened = fs::File::open(path).and_then(|file| {
            let plan = plan(MappedFile::open(&file)?.bytes(), executable);
            Ok((file, plan))
        });
        let (file, plan) = match opened {
            Ok((file, Ok(plan))) => (file, plan),
            Ok((_, Err(NotProbed::Unsupported(why)))) => {
                log::info!("TLS plaintext: not probing {}: {why}", path.display());
                self.fail("unsupported");
                self.examined.insert(id, Examined::Skipped);
                return;
            }
            Ok((_, Err(NotProbed::NoTls))) => {
                self.examined.insert(id, Examined::Skipped);
                return;
            }
            Err(e) => {
                if !executable {
                    log::debug!("cannot read {}: {e}", path.display());
                    self.fail("unreadable");
                }
                self.examined.insert(id, Examined::Skipped);
                return;
            }
        };
        if self.libraries.len() + 1 >= MAX_TLS_LIBRARIES as usize {
            self.fail("limit");
            self.examined.insert(id, Examined::Skipped);
            return;
        }
        let cookie = self.libraries.len() as u64 + 1;
        // By its path (which tools such as `bpftool perf` then show); through the open file if
        // the path is gone (the process whose /proc entry named it exited meanwhile).
        if let Some(hash) = plan.go_tcp_itab_hash
            && let Err(e) = set_go_itab_hash(ebpf, cookie as u32, hash)
        {
            log::warn!("TLS plaintext: not probing {}: {e}", path.display());
            self.fail("attach");
            self.examined.insert(id, Examined::Skipped);
            return;
        }
        let mut attached = attach(ebpf, path, path, &plan.points, cookie);
        if matches!(&attached, Err(TlsAttachError::Attach { source, .. }) if has_errno(source, &[libc::ENOENT]))
        {
            let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            attached = attach(ebpf, &by_fd, path, &plan.points, cookie);
        }
        drop(file);
        match attached {
            Ok(uprobes) => {
                let name = library_name(path);
                log::info!(
                    "TLS plaintext: probing {} ({}: {} functions, {uprobes} uprobes)",
                    path.display(),
                    plan.library,
                    plan.functions
                );
                self.metrics
                    .libraries_probed
                    .get_or_create(&LibraryLabels {
                        library: name.clone(),
                    })
                    .inc();
                self.libraries.push(Library { name });
                self.examined.insert(id, Examined::Probed);
            }
            Err(e @ TlsAttachError::Permission { .. }) => {
                log::warn!(
                    "{}; running without TLS plaintext (TLS connections count bytes only)",
                    with_sources(&e)
                );
                self.fail("permission");
                self.refused = true;
            }
            Err(e) => {
                log::warn!("{}", with_sources(&e));
                self.fail("attach");
                self.examined.insert(id, Examined::Skipped);
            }
        }
    }

    fn fail(&self, reason: &str) {
        self.metrics
            .attach_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The kernel's plaintext counters per library into `meshtap_tls_plaintext_events_total`.
    pub fn refresh_metrics(&mut self, ebpf: &Ebpf) {
        let Some(map) = ebpf.map("TLS_PLAINTEXT") else {
            return;
        };
        let Ok(counters) = PerCpuArray::<_, u64>::try_from(map) else {
            return;
        };
        self.plaintext_seen.resize(self.libraries.len() + 1, 0);
        for (i, library) in self.libraries.iter().enumerate() {
            let index = i as u32 + 1;
            let total: u64 = counters.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0);
            let seen = &mut self.plaintext_seen[index as usize];
            let delta = total.saturating_sub(*seen);
            *seen = total;
            if delta > 0 {
                self.metrics
                    .plaintext_events
                    .get_or_create(&LibraryLabels {
                        library: library.name.clone(),
                    })
                    .inc_by(delta);
            }
        }
    }
}

/// The `library` label of the file at `path`: its file name, or that of the file a symbolic
/// link names (`libssl.so` -> `libssl.so.3`, `/proc/<pid>/exe` -> `node`).
fn library_name(path: &Path) -> String {
    let target = fs::read_link(path).ok();
    target
        .as_deref()
        .unwrap_or(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A file mapped read-only: its symbol tables are read from the page cache, without copying
/// the file (Node's executable is some 100 MB) into the agent's memory.
struct MappedFile {
    ptr: *mut libc::c_void,
    len: usize,
}

impl MappedFile {
    fn open(file: &fs::File) -> std::io::Result<Self> {
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // SAFETY: a private read-only mapping of an open file, `len` bytes from offset 0; the
        // result is checked against MAP_FAILED. The fd may close after mmap returns.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MappedFile { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes until `drop`. A file truncated
        // meanwhile would fault (SIGBUS): library and executable files are replaced by renaming,
        // not truncated in place, by package managers and image layers.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`, no longer borrowed.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// `libssl.so`, `libssl.so.3`, `libssl.so.1.1`, ...
fn is_libssl(file: &str) -> bool {
    file.starts_with("libssl.so")
}

/// What to attach to one file.
#[derive(Debug)]
struct Plan {
    /// `OpenSSL` or `Go crypto/tls`, for the log.
    library: &'static str,
    /// Functions found.
    functions: usize,
    /// Each uprobe: its program and the file offset of its instruction.
    points: Vec<(&'static str, u64)>,
    /// A Go executable: the type hash of `*net.TCPConn` in its `net.Conn` itab (see
    /// `agent-ebpf/src/go_tls.rs`).
    go_tcp_itab_hash: Option<u32>,
}

/// Why a file gets no probes.
#[derive(Debug, PartialEq, Eq)]
enum NotProbed {
    /// Neither OpenSSL's `SSL_read`/`SSL_write` nor Go's `crypto/tls` (or not an ELF file).
    NoTls,
    /// A TLS implementation the probes cannot read, and why (an old Go, another architecture).
    Unsupported(String),
}

/// The probes for the file `data`: OpenSSL's functions, or (`executable`) Go's `crypto/tls`.
fn plan(data: &[u8], executable: bool) -> Result<Plan, NotProbed> {
    let file = object::File::parse(data).map_err(|_| NotProbed::NoTls)?;
    if let Some(offsets) = symbol_offsets(&file) {
        let mut points = Vec::with_capacity(offsets.len() * 2);
        for (_, entry, offset) in &offsets {
            points.push((*entry, *offset));
            if *entry != FREE_PROGRAM {
                points.push((RETURN_PROGRAM, *offset));
            }
        }
        return Ok(Plan {
            library: "OpenSSL",
            functions: offsets.len(),
            points,
            go_tcp_itab_hash: None,
        });
    }
    if executable {
        return go::plan(&file);
    }
    Err(NotProbed::NoTls)
}

/// The file offset of the code at virtual address `address` in `section`.
fn file_offset(address: u64, section: &object::Section<'_, '_>) -> Option<u64> {
    use object::ObjectSection as _;
    let (section_offset, _) = section.file_range()?;
    match UProbeAttachLocation::from_virtual_address(address, section.address(), section_offset) {
        Ok(UProbeAttachLocation::AbsoluteOffset(offset)) => Some(offset),
        _ => None,
    }
}

/// The file offsets of the probed functions an ELF file defines, if it defines at least
/// `SSL_read` and `SSL_write` (its dynamic symbols first, then its full symbol table).
fn symbol_offsets(file: &object::File<'_>) -> Option<Vec<(&'static str, &'static str, u64)>> {
    use object::{Object as _, ObjectSymbol as _};
    let mut found: Vec<(&'static str, &'static str, u64)> = Vec::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if symbol.is_undefined() || symbol.address() == 0 {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        // `SSL_read@@OPENSSL_3.0.0` in some tables: the version is not part of the name.
        let name = name.split('@').next().unwrap_or(name);
        let Some((function, program)) = FUNCTIONS.iter().find(|(f, _)| *f == name) else {
            continue;
        };
        if found.iter().any(|(f, _, _)| f == function) {
            continue;
        }
        let Some(section) = symbol
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
        else {
            continue;
        };
        let Some(offset) = file_offset(symbol.address(), &section) else {
            continue;
        };
        found.push((function, program, offset));
    }
    let has = |f: &str| found.iter().any(|(name, _, _)| *name == f);
    (has("SSL_read") && has("SSL_write")).then_some(found)
}

/// Writes `hash` at `index` of `GO_TCP_ITAB_HASH`.
fn set_go_itab_hash(ebpf: &mut Ebpf, index: u32, hash: u32) -> Result<(), String> {
    let map = ebpf
        .map_mut(go::ITAB_HASH_MAP)
        .ok_or_else(|| format!("map {} is missing from the eBPF object", go::ITAB_HASH_MAP))?;
    let mut array = aya::maps::Array::<_, u32>::try_from(map).map_err(|e| e.to_string())?;
    array
        .set(index, hash, 0)
        .map_err(|e| format!("writing {}: {e}", go::ITAB_HASH_MAP))
}

/// Attaches each program at its file offset in the file at `target` (reported as `path`), with
/// `cookie`; returns how many uprobes it attached. On failure the attachments made for this file
/// are undone.
fn attach(
    ebpf: &mut Ebpf,
    target: &Path,
    path: &Path,
    points: &[(&'static str, u64)],
    cookie: u64,
) -> Result<usize, TlsAttachError> {
    let mut made: Vec<(&'static str, aya::programs::uprobe::UProbeLinkId)> = Vec::new();
    let mut result = Ok(0);
    for &(program, offset) in points {
        let prog: &mut UProbe = match ebpf.program_mut(program).and_then(|p| p.try_into().ok()) {
            Some(p) => p,
            None => {
                result = Err(TlsAttachError::MissingProgram { program });
                break;
            }
        };
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: Some(cookie),
        };
        match prog.attach(point, target, UProbeScope::AllProcesses) {
            Ok(link) => made.push((program, link)),
            Err(source) => {
                let denied = is_permission_error(&source);
                let source = Box::new(source);
                let path = path.to_path_buf();
                result = Err(if denied {
                    TlsAttachError::Permission { path, source }
                } else {
                    TlsAttachError::Attach { path, source }
                });
                break;
            }
        }
    }
    if result.is_err() {
        for (program, link) in made {
            if let Some(prog) = ebpf
                .program_mut(program)
                .and_then(|p| <&mut UProbe>::try_from(p).ok())
            {
                let _ = prog.detach(link);
            }
        }
        return result;
    }
    Ok(made.len())
}

/// An error and its sources, `: `-separated (aya's attach errors name the call; the errno is
/// in their source).
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// Whether a uprobe attach failed for lack of privileges (EPERM/EACCES from
/// `perf_event_open`).
fn is_permission_error(error: &ProgramError) -> bool {
    has_errno(error, &[libc::EPERM, libc::EACCES])
}

/// Whether an I/O error with one of `errnos` is in `error`'s chain of sources.
fn has_errno(error: &ProgramError, errnos: &[i32]) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|n| errnos.contains(&n))
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_names() {
        assert!(is_libssl("libssl.so.3"));
        assert!(is_libssl("libssl.so.1.1"));
        assert!(is_libssl("libssl.so"));
        assert!(!is_libssl("libcrypto.so.3"));
        assert!(!is_libssl("libssl3.so"));
    }

    #[test]
    fn symbols_of_a_file_without_openssl() {
        // This test binary does not define SSL_read.
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(plan(&exe, true).unwrap_err(), NotProbed::NoTls);
        assert_eq!(
            plan(b"not an ELF file", true).unwrap_err(),
            NotProbed::NoTls
        );
    }

    #[test]
    fn symbols_of_the_system_libssl() {
        // Installed with curl by `cargo xtask setup`.
        let data = std::fs::read("/usr/lib/x86_64-linux-gnu/libssl.so.3").unwrap();
        let file = object::File::parse(&*data).unwrap();
        let found = symbol_offsets(&file).expect("libssl.so.3 defines SSL_read and SSL_write");
        for f in [
            "SSL_read",
            "SSL_write",
            "SSL_read_ex",
            "SSL_write_ex",
            "SSL_do_handshake",
            "SSL_free",
        ] {
            assert!(
                found.iter().any(|(name, _, off)| *name == f && *off > 0),
                "{f}"
            );
        }
    }
}
