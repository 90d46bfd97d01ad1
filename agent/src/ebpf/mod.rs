//! Loading the eBPF object: pre-flight checks, load-time globals, map sizes, the attach table,
//! and the handles the rest of the agent reads (ring buffer, counters, map occupancy).

pub mod btf;
pub mod offsets;
pub mod reader;
pub mod tracefs;

use std::path::PathBuf;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{RawTracePoint, TracePoint},
};
use meshtap_common::{ConnState, ConnectArgs, KernelOffsets, ProbeConfig, stat};

use crate::config::Config;

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

/// Raw tracepoints: (program, tracepoint). The two `inet_sock_set_state` programs must be
/// attached in this order (the backup runs after the first, see agent-ebpf).
const RAW_ATTACH: &[(&str, &str)] = &[
    ("inet_sock_set_state", "inet_sock_set_state"),
    ("inet_sock_set_state_backup", "inet_sock_set_state"),
    ("tcp_retransmit_skb", "tcp_retransmit_skb"),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "missing privileges ({missing}): run meshtap as root, or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
    )]
    Privileges { missing: String },
    #[error(
        "kernel {release} is too old: meshtap needs Linux 5.8 or newer (BPF ring buffer, CAP_BPF)"
    )]
    KernelTooOld { release: String },
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
    #[error("verifier rejected program {program}: {source}")]
    Verify {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
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
    let release = kernel_release();
    let (major, minor) = parse_release(&release);
    if (major, minor) < (5, 8) {
        return Err(LoadError::KernelTooOld { release });
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

fn parse_release(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The loaded, attached programs and the maps the agent reads. Dropping it detaches and unloads
/// everything (nothing is pinned).
pub struct Probes {
    /// Owns programs and links; kept alive until shutdown.
    _ebpf: Ebpf,
    pub attached: usize,
}

/// Maps read periodically by the agent.
pub struct KernelMaps {
    pub stats: PerCpuArray<MapData, u64>,
    pub conns: HashMap<MapData, u64, ConnState>,
    pub connect_args: HashMap<MapData, u64, ConnectArgs>,
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

pub fn load(
    config: &Config,
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
    };
    raise_memlock_limit();
    let mut ebpf = EbpfLoader::new()
        .override_global("OFFSETS", offsets, true)
        .override_global("CONFIG", &probe_config, true)
        .map_max_entries("EVENTS", config.ring_buffer_bytes)
        .map_max_entries("CONNS", config.max_connections)
        .load(OBJECT)
        .map_err(|e| LoadError::Load(Box::new(e)))?;

    let mut attached = 0;
    for (program, category, names) in ATTACH {
        let prog: &mut TracePoint = ebpf
            .program_mut(program)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram { program })?;
        prog.load().map_err(|source| LoadError::Verify {
            program,
            source: Box::new(source),
        })?;
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
    let maps = KernelMaps {
        stats: take!("STATS"),
        conns: take!("CONNS"),
        connect_args: take!("CONNECT_ARGS"),
    };
    Ok((
        Probes {
            _ebpf: ebpf,
            attached,
        },
        ring,
        maps,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_parsing() {
        assert_eq!(parse_release("6.18.44-fc-v782"), (6, 18));
        assert_eq!(parse_release("5.4.0-150-generic"), (5, 4));
        assert_eq!(parse_release(""), (0, 0));
    }
}
