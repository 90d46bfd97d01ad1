//! Loading the eBPF object: pre-flight checks, load-time globals, map sizes, the attach table,
//! and the handles the rest of the agent reads (ring buffer, counters, map occupancy).

pub mod btf;
pub mod offsets;
pub mod reader;
pub mod telemetry;
pub mod tls;
pub mod tracefs;

use std::{
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{RawTracePoint, TracePoint, UProbe},
};
use meshtap_common::{ConnState, ConnectArgs, KernelOffsets, ProbeConfig, stat};

/// Every program and the tracepoints it is attached to.
const ATTACH: &[(&str, &str, &[&str])] = &[
    ("sys_enter_connect", "syscalls", &["sys_enter_connect"]),
    ("sys_exit_connect", "syscalls", &["sys_exit_connect"]),
    (
        "sys_exit_accept",
        "syscalls",
        &["sys_exit_accept", "sys_exit_accept4"],
    ),
    ("sched_process_exit", "sched", &["sched_process_exit"]),
    ("sys_exit_read", "syscalls", &["sys_exit_read"]),
    ("sys_exit_write", "syscalls", &["sys_exit_write"]),
    ("sys_exit_readv", "syscalls", &["sys_exit_readv"]),
    ("sys_exit_writev", "syscalls", &["sys_exit_writev"]),
    ("sys_exit_recvfrom", "syscalls", &["sys_exit_recvfrom"]),
    ("sys_exit_sendto", "syscalls", &["sys_exit_sendto"]),
    ("sys_exit_recvmsg", "syscalls", &["sys_exit_recvmsg"]),
    ("sys_exit_sendmsg", "syscalls", &["sys_exit_sendmsg"]),
    ("sys_exit_sendfile64", "syscalls", &["sys_exit_sendfile64"]),
];

/// Raw tracepoints: (program, tracepoint). Each backup must be attached after its first
/// program (it runs after it, see agent-ebpf).
const RAW_ATTACH: &[(&str, &str)] = &[
    ("inet_sock_set_state", "inet_sock_set_state"),
    ("inet_sock_set_state_backup", "inet_sock_set_state"),
    ("tcp_retransmit_skb", "tcp_retransmit_skb"),
    ("tcp_retransmit_skb_backup", "tcp_retransmit_skb"),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "missing privileges ({missing}): run meshtap as root, or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
    )]
    Privileges { missing: String },
    #[error(
        "kernel {release} lacks {feature}: meshtap needs Linux 5.15 or newer (or a distribution kernel with these BPF features backported)"
    )]
    KernelTooOld {
        release: String,
        feature: &'static str,
    },
    #[error(
        "kernel BTF not found at {path}: use a kernel built with CONFIG_DEBUG_INFO_BTF=y, or pass --btf with a BTF file for this kernel"
    )]
    NoBtf { path: PathBuf },
    #[error(
        "syscall tracepoint syscalls:{event} does not have `{field}` where meshtap reads it; this kernel is not supported"
    )]
    SyscallLayout {
        event: &'static str,
        field: &'static str,
    },
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetsError),
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {program} is missing from the eBPF object")]
    MissingProgram { program: &'static str },
    #[error("map {map} is missing from the eBPF object or has the wrong type")]
    MissingMap { map: &'static str },
    #[error(
        "--ebpf-stats: turning on BPF run-time statistics failed ({source}): it needs CAP_SYS_ADMIN; without it, leave --ebpf-stats off and set sysctl kernel.bpf_stats_enabled=1 on the node instead"
    )]
    RunTimeStats {
        #[source]
        source: std::io::Error,
    },
    #[error("verifier rejected program {program}: {source}")]
    Verify {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("scoping the programs to network namespace {inode} failed: {source}")]
    Scope {
        inode: u32,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("installing {program} as a tail-call target failed: {source}")]
    TailCall {
        program: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("attaching {program} to tracepoint {category}:{name} failed: {source}")]
    Attach {
        program: &'static str,
        category: &'static str,
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

/// Loads (verifies) the tracepoint program `program` of the object.
fn load_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut TracePoint, LoadError> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .and_then(|p| p.try_into().ok())
        .ok_or(LoadError::MissingProgram { program })?;
    prog.load().map_err(|source| LoadError::Verify {
        program,
        source: Box::new(source),
    })?;
    Ok(prog)
}

/// Puts `program` (loaded, its fd `fd`) in slot 0 of the program array `map`.
fn install_tail_call(
    ebpf: &mut Ebpf,
    map: &'static str,
    program: &'static str,
    fd: &aya::programs::ProgramFd,
) -> Result<(), LoadError> {
    let mut tail: ProgramArray<&mut MapData> = ebpf
        .map_mut(map)
        .and_then(|m| m.try_into().ok())
        .ok_or(LoadError::MissingMap { map })?;
    tail.set(0, fd, 0).map_err(|source| LoadError::TailCall {
        program,
        source: Box::new(source),
    })
}

/// Checks what the kernel and our privileges must offer, with one actionable error for each.
pub fn preflight(btf: &std::path::Path) -> Result<PathBuf, LoadError> {
    let caps = effective_capabilities();
    const CAP_BPF: u32 = 39;
    const CAP_PERFMON: u32 = 38;
    const CAP_SYS_ADMIN: u32 = 21;
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        return Err(LoadError::Privileges {
            missing: "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)".to_string(),
        });
    }
    // What the programs use, probed rather than read off the version number: distribution
    // kernels backport BPF features.
    if let Some(feature) = missing_kernel_feature() {
        return Err(LoadError::KernelTooOld {
            release: kernel_release(),
            feature,
        });
    }
    if !btf.is_file() {
        return Err(LoadError::NoBtf {
            path: btf.to_path_buf(),
        });
    }
    let root = tracefs::ensure_mounted()?;
    check_syscall_layout(&root)?;
    Ok(root)
}

/// The syscall programs read argument `n` at `16 + 8 * n` and the return value at 16
/// (include/trace/syscall.h: `struct syscall_trace_enter { ent; int nr; unsigned long args[] }`).
/// Verified here against the kernel's own description rather than trusted.
fn check_syscall_layout(root: &std::path::Path) -> Result<(), LoadError> {
    let offset = |event: &'static str, field: &'static str| -> Result<u32, LoadError> {
        tracefs::fields(root, "syscalls", event)?
            .get(field)
            .map(|f| f.offset)
            .ok_or(LoadError::SyscallLayout { event, field })
    };
    let checks = [
        ("sys_enter_connect", "fd", 16),
        ("sys_enter_connect", "uservaddr", 24),
        ("sys_exit_read", "ret", 16),
    ];
    for (event, field, expected) in checks {
        if offset(event, field)? != expected {
            return Err(LoadError::SyscallLayout { event, field });
        }
    }
    Ok(())
}

/// The first BPF feature the programs need that this kernel does not offer, probed by loading
/// tiny programs and maps (as libbpf does). A probe that cannot decide counts as present: the
/// load itself then says what is wrong.
fn missing_kernel_feature() -> Option<&'static str> {
    use aya::{
        maps::MapType,
        programs::ProgramType,
        sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
    };
    if !is_map_supported(MapType::RingBuf).unwrap_or(true) {
        return Some("the BPF ring buffer (Linux 5.8)");
    }
    if !is_program_supported(ProgramType::RawTracePoint).unwrap_or(true) {
        return Some("raw tracepoint programs (Linux 4.17)");
    }
    let helpers = [
        (
            BpfHelper::BPF_FUNC_get_current_task_btf,
            "the bpf_get_current_task_btf helper (Linux 5.11)",
        ),
        (
            BpfHelper::BPF_FUNC_task_pt_regs,
            "the bpf_task_pt_regs helper (Linux 5.15)",
        ),
    ];
    helpers.into_iter().find_map(|(helper, feature)| {
        (!is_helper_supported(ProgramType::TracePoint, helper).unwrap_or(true)).then_some(feature)
    })
}

fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The loaded, attached programs and the maps the agent reads. Dropping it (or [`Probes::unload`])
/// detaches and unloads everything (nothing is pinned), the TLS uprobes included.
pub struct Probes {
    /// Owns programs and links; kept until shutdown.
    ebpf: Option<Ebpf>,
    pub attached: usize,
    /// The TLS libraries probed, when TLS plaintext is on.
    tls: Option<tls::TlsProbes>,
}

impl Probes {
    /// Finds the TLS libraries on the node and attaches the TLS uprobes to them. Returns false
    /// when the kernel refused uprobes (no privilege): TLS plaintext is then off.
    pub fn start_tls(&mut self, proc_root: &std::path::Path, metrics: tls::TlsMetrics) -> bool {
        let Some(ebpf) = self.ebpf.as_mut() else {
            return false;
        };
        let mut probes = tls::TlsProbes::new(proc_root, metrics);
        probes.start(ebpf);
        let refused = probes.refused();
        self.tls = Some(probes);
        !refused
    }

    /// The periodic look for new TLS libraries (processes started or executed since the last),
    /// and the TLS counters.
    pub fn scan_tls(&mut self) {
        if let (Some(ebpf), Some(tls)) = (self.ebpf.as_mut(), self.tls.as_mut()) {
            tls.scan(ebpf);
            tls.refresh_metrics(ebpf);
        }
    }

    /// The TLS library files probed.
    pub fn tls_libraries(&self) -> usize {
        self.tls.as_ref().map_or(0, |t| t.libraries().len())
    }

    /// Detaches and unloads every program now.
    pub fn unload(&mut self) {
        self.tls = None;
        self.ebpf = None;
    }
}

/// What the agent reads from the kernel periodically: maps, and its programs' counters.
pub struct KernelMaps {
    pub stats: PerCpuArray<MapData, u64>,
    pub conns: HashMap<MapData, u64, ConnState>,
    pub connect_args: HashMap<MapData, u64, ConnectArgs>,
    /// Every loaded program, sorted by name.
    pub programs: Vec<LoadedProgram>,
}

/// A loaded program: its name and its own duplicate of the program's fd (whose
/// `/proc/self/fdinfo` entry holds the kernel's counters for it), with the counters last read.
pub struct LoadedProgram {
    pub name: String,
    pub fd: OwnedFd,
    pub seen: ProgramCounters,
}

/// The kernel's counters of one program, from `/proc/self/fdinfo/<prog fd>`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProgramCounters {
    /// Runs the kernel skipped because a BPF program was already running on that CPU
    /// (`recursion_misses`, Linux 5.12+; `None` before).
    pub misses: Option<u64>,
    /// Runs and their total time: counted only while BPF run-time statistics are on.
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgramCounters {
    /// Parses the fdinfo text of a BPF program fd (`key:\tvalue` lines).
    pub fn parse(fdinfo: &str) -> Self {
        let field = |key: &str| {
            fdinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k == key).then(|| v.trim().parse::<u64>().ok())?
            })
        };
        ProgramCounters {
            misses: field("recursion_misses"),
            runs: field("run_cnt").unwrap_or(0),
            run_time_ns: field("run_time_ns").unwrap_or(0),
        }
    }

    /// Reads the counters of the program behind `fd`, one of this process's fds.
    pub fn read(fd: &OwnedFd) -> Option<Self> {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
            .ok()
            .map(|text| Self::parse(&text))
    }
}

/// BPF run-time statistics (`run_cnt`, `run_time_ns` of every program on the node), on while
/// this value lives: the kernel keeps them on as long as one `BPF_ENABLE_STATS` fd is open.
/// They cost two clock reads per program run.
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> Result<Self, LoadError> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr { struct { __u32 type; } enable_stats; }: BPF_STATS_RUN_TIME is 0.
        let attr: [u32; 2] = [0, 0];
        // SAFETY: bpf(2) BPF_ENABLE_STATS reads `size_of_val(&attr)` bytes from `attr`, which
        // lives across the call; it returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd < 0 {
            return Err(LoadError::RunTimeStats {
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { _fd: fd })
    }
}

impl KernelMaps {
    /// Sum over CPUs of every `STATS` slot.
    pub fn stats(&self) -> Vec<u64> {
        (0..stat::COUNT)
            .map(|i| {
                self.stats
                    .get(&i, 0)
                    .map(|values| values.iter().sum())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Entries in `CONNS` and in `CONNECT_ARGS` now, walking their keys: a syscall per entry,
    /// so the caller does it every 10 s, not every second. `BPF_MAP_LOOKUP_BATCH` would take one
    /// syscall per 1,024 entries, but it holds the CPU's `bpf_prog_active` across runs of empty
    /// buckets (most of a mostly empty map): on a preemptible kernel, a task scheduled on that
    /// CPU meanwhile would have its syscall tracepoint programs skipped (`recursion_misses`).
    pub fn entries(&self) -> [(&'static str, usize); 2] {
        [
            ("conns", self.conns.keys().count()),
            ("connect_args", self.connect_args.keys().count()),
        ]
    }

    /// Whether the kernel still tracks `sk` as connection `conn_id`.
    pub fn tracks(&self, sk: u64, conn_id: u64) -> bool {
        self.conns
            .get(&sk, 0)
            .map(|state| state.conn_id == conn_id)
            .unwrap_or(false)
    }
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/meshtap-ebpf"));

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (often 64 KiB or 8 MiB) rather than
/// to the memory cgroup: lift it where allowed (root, or CAP_SYS_RESOURCE in a container).
/// Best effort: on newer kernels the limit does not matter, and if it does and cannot be
/// raised, the map creation error that follows says so.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not lift RLIMIT_MEMLOCK ({}); only kernels before 5.11 need it",
            std::io::Error::last_os_error()
        );
    }
}

/// What loading the programs needs to know (taken from the agent's config by the app).
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Payload prefix copied per read/write.
    pub capture_bytes: u32,
    /// Kernel ring buffer size, a power of two.
    pub ring_buffer_bytes: u32,
    /// Entries of the kernel's connection map.
    pub max_connections: u32,
    /// Load the TLS uprobe programs (attached later, per library file, by
    /// [`Probes::start_tls`]).
    pub tls_plaintext: bool,
    /// Network namespace inodes the programs are scoped to (`--netns`, at most
    /// `MAX_NETNS`); empty: every namespace.
    pub netns: Vec<u32>,
    /// Data events carry their TCP sequence number (cross-node trace links).
    pub request_keys: bool,
}

pub fn load(
    config: &LoadOptions,
    offsets: &KernelOffsets,
) -> Result<(Probes, RingBuf<MapData>, KernelMaps), LoadError> {
    let probe_config = ProbeConfig {
        agent_tgid: std::process::id(),
        capture_bytes: config.capture_bytes,
        // Wake the reader once a quarter of the ring is pending; the timer covers the rest.
        wakeup_bytes: u64::from(config.ring_buffer_bytes / 4),
        // A sixteenth of the ring (256 KiB of the default 4 MiB, some 1,500 connection events)
        // is kept for connection events.
        data_limit_bytes: u64::from(config.ring_buffer_bytes - config.ring_buffer_bytes / 16),
        netns_filter: u32::from(!config.netns.is_empty()),
        request_keys: u32::from(config.request_keys),
    };
    raise_memlock_limit();
    let mut ebpf = EbpfLoader::new()
        .override_global("OFFSETS", offsets, true)
        .override_global("CONFIG", &probe_config, true)
        .override_global("TLS_ENABLED", &u32::from(config.tls_plaintext), true)
        .map_max_entries("EVENTS", config.ring_buffer_bytes)
        .map_max_entries("CONNS", config.max_connections)
        .load(OBJECT)
        .map_err(|e| LoadError::Load(Box::new(e)))?;
    // The scope is in place before any program runs.
    if !config.netns.is_empty() {
        let mut allowed: HashMap<&mut MapData, u32, u8> = ebpf
            .map_mut("NETNS_ALLOWED")
            .and_then(|m| m.try_into().ok())
            .ok_or(LoadError::MissingMap {
                map: "NETNS_ALLOWED",
            })?;
        for &inode in &config.netns {
            allowed
                .insert(inode, 1, 0)
                .map_err(|source| LoadError::Scope {
                    inode,
                    source: Box::new(source),
                })?;
        }
    }

    let mut attached = 0;
    for (program, category, names) in ATTACH {
        let prog = load_tracepoint(&mut ebpf, program)?;
        for name in *names {
            prog.attach(category, name)
                .map_err(|source| LoadError::Attach {
                    program,
                    category,
                    name,
                    source: Box::new(source),
                })?;
            attached += 1;
        }
    }

    // The tail-call target that sends the rest of an HTTP/2 syscall: loaded, not attached.
    {
        let program = "data_continue";
        let verify = |source| LoadError::Verify {
            program,
            source: Box::new(source),
        };
        let fd = load_tracepoint(&mut ebpf, program)?
            .fd()
            .map_err(verify)?
            .try_clone()
            .map_err(|e| verify(aya::programs::ProgramError::from(e)))?;
        install_tail_call(&mut ebpf, "TAIL", program, &fd)?;
    }

    // Softirq-side hooks are raw tracepoints (per-program recursion guard, see agent-ebpf).
    for (program, tracepoint) in RAW_ATTACH {
        let prog: &mut RawTracePoint = ebpf
            .program_mut(program)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram { program })?;
        prog.load().map_err(|source| LoadError::Verify {
            program,
            source: Box::new(source),
        })?;
        prog.attach(tracepoint)
            .map_err(|source| LoadError::Attach {
                program,
                category: "raw_tp",
                name: tracepoint,
                source: Box::new(source),
            })?;
        attached += 1;
    }

    if config.tls_plaintext {
        for program in tls::PROGRAMS {
            let prog: &mut UProbe = ebpf
                .program_mut(program)
                .and_then(|p| p.try_into().ok())
                .ok_or(LoadError::MissingProgram { program })?;
            prog.load().map_err(|source| LoadError::Verify {
                program,
                source: Box::new(source),
            })?;
        }
        // The tail-call target that sends the rest of an HTTP/2 connection's plaintext.
        let program = tls::CONTINUE_PROGRAM;
        let verify = |source| LoadError::Verify {
            program,
            source: Box::new(source),
        };
        let prog: &mut UProbe = ebpf
            .program_mut(program)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram { program })?;
        prog.load().map_err(verify)?;
        let fd = prog
            .fd()
            .map_err(verify)?
            .try_clone()
            .map_err(|e| verify(aya::programs::ProgramError::from(e)))?;
        install_tail_call(&mut ebpf, "TLS_TAIL", program, &fd)?;
    }

    let ring = RingBuf::try_from(
        ebpf.take_map("EVENTS")
            .ok_or(LoadError::MissingMap { map: "EVENTS" })?,
    )
    .map_err(|_| LoadError::MissingMap { map: "EVENTS" })?;
    macro_rules! take {
        ($name:literal) => {
            ebpf.take_map($name)
                .and_then(|m| m.try_into().ok())
                .ok_or(LoadError::MissingMap { map: $name })?
        };
    }
    let mut programs = Vec::new();
    for (name, program) in ebpf.programs() {
        // A duplicate: the loader's own fd closes with `Probes`, and the reader of the counters
        // lives on its own schedule.
        if let Ok(fd) = program.fd().and_then(|fd| {
            fd.as_fd()
                .try_clone_to_owned()
                .map_err(aya::programs::ProgramError::from)
        }) {
            programs.push(LoadedProgram {
                name: name.to_string(),
                fd,
                seen: ProgramCounters::default(),
            });
        }
    }
    programs.sort_by(|a, b| a.name.cmp(&b.name));
    let maps = KernelMaps {
        stats: take!("STATS"),
        conns: take!("CONNS"),
        connect_args: take!("CONNECT_ARGS"),
        programs,
    };
    Ok((
        Probes {
            ebpf: Some(ebpf),
            attached,
            tls: None,
        },
        ring,
        maps,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_counters_from_fdinfo() {
        // /proc/self/fdinfo of a program fd, Linux 6.18.
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t26\nprog_type:\t5\n\
                    prog_jited:\t1\nprog_tag:\tf08ef31bae24a923\nmemlock:\t4096\n\
                    prog_id:\t8955\nrun_time_ns:\t123456789\nrun_cnt:\t4242\n\
                    recursion_misses:\t7\nverified_insns:\t390\n";
        assert_eq!(
            ProgramCounters::parse(text),
            ProgramCounters {
                misses: Some(7),
                runs: 4242,
                run_time_ns: 123_456_789,
            }
        );
        // Linux 5.8-5.11: no recursion_misses; before 5.1 no run-time statistics at all.
        let old = "pos:\t0\nprog_type:\t5\nrun_time_ns:\t10\nrun_cnt:\t1\n";
        assert_eq!(
            ProgramCounters::parse(old),
            ProgramCounters {
                misses: None,
                runs: 1,
                run_time_ns: 10,
            }
        );
        assert_eq!(ProgramCounters::parse(""), ProgramCounters::default());
        assert_eq!(
            ProgramCounters::parse("run_cnt:\tmany\nrecursion_misses:\n"),
            ProgramCounters::default()
        );
    }
}
