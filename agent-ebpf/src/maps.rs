//! Maps and globals. Every map is bounded; the agent may resize `EVENTS` and `CONNS` at load time.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use meshtap_common::{
    ConnState, ConnectArgs, DataEvent, IoArgs, KernelOffsets, MAX_CAPTURE, MAX_NETNS, ProbeConfig,
    stat,
};

/// All events, in production order.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Tracked TCP connections keyed by `struct sock *`. LRU so that a socket whose TCP_CLOSE we
/// never saw (dropped tracepoint, agent restart) cannot pin an entry forever; removed on close.
#[map]
pub static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(65536, 0);

/// `connect` arguments between enter and exit, keyed by pid_tgid.
#[map]
pub static CONNECT_ARGS: LruHashMap<u64, ConnectArgs> = LruHashMap::with_max_entries(4096, 0);

/// Processes that opened a connection lately: tgid -> process start time. The first
/// connection of a process not in it wakes the reader at once (see `wakes_for_new_process`).
/// LRU: a process pushed out only costs one more early wake-up.
#[map]
pub static PROCESSES_SEEN: LruHashMap<u32, u64> =
    LruHashMap::with_max_entries(PROCESSES_SEEN_ENTRIES, 0);

/// Size of [`PROCESSES_SEEN`]: more processes opening connections within the same short span
/// than a node runs at once.
pub const PROCESSES_SEEN_ENTRIES: u32 = 8192;

/// Counters of what the kernel side could not deliver or store (see `meshtap_common::stat`).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// The last events the first `inet_sock_set_state` program handled on this CPU, for its backup.
#[map]
pub static SET_STATE_DONE: PerCpuArray<Handled> = PerCpuArray::with_max_entries(1, 0);

/// The same for `tcp_retransmit_skb` and its backup.
#[map]
pub static RETRANSMIT_DONE: PerCpuArray<Handled> = PerCpuArray::with_max_entries(1, 0);

/// The last few events a first program of a pair handled on this CPU, each a 16-byte key. The
/// backup runs right after the first for every event and skips the event if its key is here
/// (taking it out). More than one slot because a softirq can run a whole nested pair between
/// the first's mark and the backup's check: with one slot the nested event's mark would
/// overwrite the outer one's and the backup would handle the outer event a second time.
#[repr(C)]
pub struct Handled {
    keys: [[u64; 2]; HANDLED_SLOTS],
    next: u64,
}

const HANDLED_SLOTS: usize = 4;

/// Records `key` as handled by the first program of a pair.
#[inline(always)]
pub fn mark_handled(map: &PerCpuArray<Handled>, key: [u64; 2]) {
    if let Some(handled) = map.get_ptr_mut(0) {
        // SAFETY: per-CPU value; a nested pair on this CPU runs to completion before this
        // program resumes, so the worst interleaving overwrites a slot the nested backup
        // already took.
        unsafe {
            let i = ((*handled).next as usize) & (HANDLED_SLOTS - 1);
            (*handled).keys[i] = key;
            (*handled).next += 1;
        }
    }
}

/// Whether the first program of a pair handled `key`; takes it out if so.
#[inline(always)]
pub fn take_handled(map: &PerCpuArray<Handled>, key: [u64; 2]) -> bool {
    let Some(handled) = map.get_ptr_mut(0) else {
        return false;
    };
    let mut i = 0;
    while i < HANDLED_SLOTS {
        // SAFETY: per-CPU value, as above; `i` < HANDLED_SLOTS.
        unsafe {
            if (*handled).keys[i] == key {
                (*handled).keys[i] = [0, 0];
                return true;
            }
        }
        i += 1;
    }
    false
}

/// Per-CPU connection id counter (index 0).
#[map]
pub static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for one data event. The slack after the payload lets the verifier accept a copy
/// of up to `MAX_CAPTURE` bytes at any offset below `MAX_CAPTURE`.
#[repr(C)]
pub struct DataScratch {
    pub event: DataEvent,
    pub slack: [u8; MAX_CAPTURE],
}

#[map]
pub static DATA_SCRATCH: PerCpuArray<DataScratch> = PerCpuArray::with_max_entries(1, 0);

/// Where the capture of an HTTP/2 syscall stands between the tail calls of `data_continue`,
/// which sends it chunk by chunk (the data event header stays in `DATA_SCRATCH`).
#[repr(C)]
pub struct Continuation {
    pub args: IoArgs,
    pub bytes: u64,
    pub offset: u64,
    /// Where `offset` is in a vectored syscall's iovecs (see `probes::IovAt`).
    pub iov_index: u64,
    pub iov_skip: u64,
    pub chunk: u32,
    pub flags: u8,
    pub _pad: [u8; 3],
}

#[map]
pub static CONTINUATION: PerCpuArray<Continuation> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: `data_continue`, installed by the agent at load time.
#[map]
pub static TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Written by the agent at load time (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    task_files: 0,
    task_group_leader: 0,
    task_start_boottime: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    file_private_data: 0,
    inode_mode: 0,
    socket_sk: 0,
    socket_file: 0,
    sk_family: 0,
    sk_state: 0,
    sk_daddr: 0,
    sk_rcv_saddr: 0,
    sk_dport: 0,
    sk_num: 0,
    sk_v6_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_type: 0,
    sk_protocol: 0,
    sk_err: 0,
    sk_net: 0,
    net_inum: 0,
    inet_sport: 0,
    regs_arg0: 0,
    regs_arg1: 0,
    regs_arg2: 0,
    tcp_write_seq: 0,
    tcp_copied_seq: 0,
    regs_arg3: 0,
};

#[unsafe(no_mangle)]
pub static CONFIG: ProbeConfig = ProbeConfig {
    agent_tgid: 0,
    capture_bytes: 0,
    wakeup_bytes: 0,
    data_limit_bytes: 0,
    netns_filter: 0,
    request_keys: 0,
};

/// The network namespaces (inode -> 1) whose sockets are tracked, when `CONFIG.netns_filter` is
/// on (`--netns`); written by the agent before the programs are attached.
#[map]
pub static NETNS_ALLOWED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_NETNS, 0);

/// Reads one field of a load-time global. `read_volatile` keeps the compiler from folding the
/// zero initialiser into the code: the loader rewrites `.rodata` before the verifier sees it.
macro_rules! global {
    ($global:ident . $field:ident) => {
        // SAFETY: the global is a valid, aligned static; volatile only forbids constant folding.
        unsafe { core::ptr::read_volatile(&$crate::maps::$global.$field) }
    };
}
pub(crate) use global;

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: a valid, 8-byte aligned per-CPU map value. Atomic (BPF_ATOMIC | BPF_ADD)
        // because a raw tracepoint in softirq can interrupt a syscall program on the same CPU;
        // the BPF target has no Rust atomics, hence the instruction itself.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({0} + 0) += {1}",
                in(reg) counter,
                in(reg) 1u64,
            )
        };
    }
}

/// Ring-buffer submit flags for a record that takes the pending bytes from `before` to `after`:
/// wake the reader only when the record crosses a multiple of `wakeup_bytes`. A busy node then
/// costs one wake-up per batch, not one per record: every forced wake-up queues an irq_work,
/// which a VM pays for with an interrupt to itself, and a reader that takes a while to be
/// scheduled used to draw one per record written meanwhile (about 4,500 a second at 90k
/// requests a second, against some 80 reader wake-ups). Records from two CPUs can both miss a
/// crossing; the next multiple (the ring holds four) or the reader's poll timer covers it.
#[inline(always)]
pub fn wakeup_flags_for(before: u64, after: u64) -> u64 {
    let every = global!(CONFIG.wakeup_bytes);
    if every == 0 || before / every != after / every {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Whether the connection event of process `tgid` (started at `start_ns`) must wake the reader
/// at once: the process's first connection the kernel side has seen. The agent names a process
/// from `/proc/<pid>` (its `OTEL_SERVICE_NAME` in its environment, its executable): a
/// short-lived one (a cron job, a CLI, a one-request client) exits within milliseconds of its
/// request, before a batched wake-up or the reader's poll (20 ms) would bring the event, and
/// would go by its command name. One extra wake-up per process, none per connection after.
#[inline(always)]
pub fn wakes_for_new_process(tgid: u32, start_ns: u64) -> bool {
    // SAFETY: a plain value read of a map entry.
    if unsafe { PROCESSES_SEEN.get(&tgid) }.is_some_and(|&seen| seen == start_ns) {
        return false;
    }
    // A full LRU evicts its oldest: the insert cannot fail for lack of room.
    let _ = PROCESSES_SEEN.insert(&tgid, &start_ns, 0);
    true
}

/// Bytes written to the ring buffer and not yet consumed.
#[inline(always)]
pub fn pending_bytes() -> u64 {
    EVENTS.query(BPF_RB_AVAIL_DATA as u64)
}

/// A new connection id: the CPU number in the top bits, a per-CPU sequence below. Unique for the
/// life of the loaded programs without any cross-CPU atomics.
#[inline(always)]
pub fn next_conn_id() -> u64 {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { aya_ebpf::helpers::generated::bpf_get_smp_processor_id() } as u64;
    match CONN_SEQ.get_ptr_mut(0) {
        Some(seq) => {
            // SAFETY: per-CPU slot. Only process-context programs (connect, accept, the first
            // data on a socket) take ids, and they cannot interrupt each other on one CPU.
            let n = unsafe {
                *seq += 1;
                *seq
            };
            ((cpu + 1) << 48) | (n & 0xffff_ffff_ffff)
        }
        None => 0,
    }
}
