//! Types shared by the eBPF programs (`meshtap-ebpf`) and the userspace agent (`meshtap`).
//!
//! Every type here crosses the kernel/user boundary as raw bytes, so each one is `#[repr(C)]`,
//! made of fixed-width integers only, has no implicit padding, and carries a size assertion.
#![no_std]

use core::mem::size_of;

/// Largest payload prefix one data event can carry (bytes). Power of two: the eBPF side masks
/// offsets with `MAX_CAPTURE - 1` so that the verifier can bound every copy.
pub const MAX_CAPTURE: usize = 4096;
/// Default payload prefix captured per read/write (bytes); `--capture-bytes` changes it.
pub const DEFAULT_CAPTURE: u32 = 1024;
/// How many iovecs of one `readv`/`writev`/`recvmsg`/`sendmsg` are walked for payload. Byte counts
/// always come from the syscall's return value, so iovecs past this bound only lose payload bytes
/// that would not fit in the capture anyway once `MAX_CAPTURE` is reached.
pub const MAX_IOV: u32 = 64;

/// TLS library files the agent probes at most (each one's index, from 1, is its uprobes'
/// attach cookie and sizes the per-library plaintext counters).
pub const MAX_TLS_LIBRARIES: u32 = 64;

/// Network namespaces one agent can be scoped to at most (`--netns`): the entries of the
/// kernel's `NETNS_ALLOWED` map.
pub const MAX_NETNS: u32 = 64;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Event kinds, the first byte of every ring-buffer record.
pub mod kind {
    /// A TCP connection reached ESTABLISHED (client, from `connect`), was accepted (server), or was
    /// first seen mid-stream (flag [`super::flags::PRE_EXISTING`]).
    pub const CONN_OPEN: u8 = 1;
    /// A `connect` failed: synchronously (errno from the syscall) or SYN_SENT -> CLOSE (sk_err).
    pub const CONN_FAIL: u8 = 2;
    /// A tracked connection reached TCP_CLOSE; carries the kernel's exact per-connection totals.
    pub const CONN_CLOSE: u8 = 3;
    /// A read or write of `bytes` bytes on a TCP socket, with a payload prefix.
    pub const DATA: u8 = 4;
    /// `tcp:tcp_retransmit_skb` on a tracked connection.
    pub const RETRANSMIT: u8 = 5;
    /// A socket entered LISTEN.
    pub const LISTEN: u8 = 6;
    /// A listening socket was closed.
    pub const LISTEN_CLOSE: u8 = 7;
    /// One past the largest kind; sizes the per-kind counters.
    pub const COUNT: u8 = 8;
}

pub mod role {
    pub const UNKNOWN: u8 = 0;
    pub const CLIENT: u8 = 1;
    pub const SERVER: u8 = 2;
}

pub mod direction {
    /// Bytes the observed process wrote (sent).
    pub const EGRESS: u8 = 0;
    /// Bytes the observed process read (received).
    pub const INGRESS: u8 = 1;
}

pub mod flags {
    /// The connection was already open when the agent first saw it (no connect/accept observed).
    pub const PRE_EXISTING: u8 = 1;
    /// The connection's first bytes were a TLS record: its later data events carry no payload
    /// (nothing in them can be parsed without the keys), only their byte counts.
    pub const TLS: u8 = 2;
    /// The connection carries HTTP/2 (its client preface was seen): its header blocks must be
    /// seen whole to keep HPACK in step, so each of its syscalls (on a TLS connection whose
    /// library is probed, each TLS call's plaintext) is captured whole, in up to
    /// [`super::HTTP2_CHUNKS`] events of up to [`super::MAX_CAPTURE`] bytes.
    pub const HTTP2: u8 = 4;
    /// Event flag: more events carrying the same syscall's following bytes come next.
    pub const MORE: u8 = 8;
    /// Event flag: this event carries the bytes of the previous event's syscall from
    /// `captured` onwards; its `bytes` are those left of the syscall from its first byte, and
    /// were already counted by the first event.
    pub const CONTINUATION: u8 = 16;
    /// The connection's ciphertext moved inside a call of a probed TLS library: its plaintext
    /// comes in plaintext events (syscall [`super::syscall::TLS_READ`] / `TLS_WRITE`), and its
    /// syscall data events only count bytes.
    pub const TLS_PROBED: u8 = 32;
}

/// Most events one syscall of an HTTP/2 connection is captured in (see [`flags::HTTP2`]):
/// 128 KiB. The chunks after the first are sent by a chain of tail calls, which the kernel
/// bounds at 33.
pub const HTTP2_CHUNKS: u32 = 32;

/// The syscall a data event came from.
pub mod syscall {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const READV: u8 = 2;
    pub const WRITEV: u8 = 3;
    pub const RECVFROM: u8 = 4;
    pub const SENDTO: u8 = 5;
    pub const RECVMSG: u8 = 6;
    pub const SENDMSG: u8 = 7;
    pub const SENDFILE: u8 = 8;
    /// Plaintext a TLS library returned from a read (`SSL_read`, `SSL_read_ex`): not bytes on
    /// the wire (the ciphertext's syscalls count those), the payload the protocols parse.
    pub const TLS_READ: u8 = 9;
    /// Plaintext handed to a TLS library's write (`SSL_write`, `SSL_write_ex`).
    pub const TLS_WRITE: u8 = 10;
}

/// Indices into the per-CPU `STATS` array.
pub mod stat {
    use super::kind;
    /// `LOST_BASE + kind`: events of that kind the ring buffer could not take.
    pub const LOST_BASE: u32 = 0;
    /// `MAP_FAIL_BASE + map`: failed inserts into that map (see [`super::map_id`]).
    pub const MAP_FAIL_BASE: u32 = kind::COUNT as u32;
    /// Retransmits on sockets that were never tracked (opened before the agent, no data since).
    pub const RETRANSMIT_UNTRACKED: u32 = MAP_FAIL_BASE + super::map_id::COUNT;
    /// Data events of TLS connections sent without their payload (see [`super::flags::TLS`]).
    pub const TLS_PAYLOAD_SKIPPED: u32 = RETRANSMIT_UNTRACKED + 1;
    /// An HTTP/2 syscall whose next chunk could not be sent: the tail call failed, or its
    /// bytes could not be read.
    pub const CONTINUATION_FAILED: u32 = TLS_PAYLOAD_SKIPPED + 1;
    /// Plaintext of TLS library calls tied to no tracked connection (no socket syscall seen in
    /// a call on that `SSL *` nor a handshake tie, see `tls_call::HELLO_READ`, or its
    /// connection no longer tracked): not reported.
    pub const TLS_UNTIED: u32 = CONTINUATION_FAILED + 1;
    /// TLS library calls whose return was seen without their entry (the entry's map was full,
    /// or the probes were attached during the call).
    pub const TLS_UNMATCHED_RETURN: u32 = TLS_UNTIED + 1;
    pub const COUNT: u32 = TLS_UNMATCHED_RETURN + 1;
}

/// Maps that count failed inserts.
pub mod map_id {
    pub const CONNS: u32 = 0;
    pub const CONNECT_ARGS: u32 = 1;
    pub const TLS_CALLS: u32 = 2;
    pub const TLS_SOCKETS: u32 = 3;
    pub const GO_CALLS: u32 = 4;
    pub const COUNT: u32 = 5;
    pub const NAMES: [&str; COUNT as usize] = [
        "conns",
        "connect_args",
        "tls_calls",
        "tls_sockets",
        "go_calls",
    ];
}

/// A TCP 4-tuple as seen from the observed socket: `local` is this socket's end.
/// 8-aligned (every struct holding one has it at a multiple of 8 already) so that the eBPF side
/// can copy it as five words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    /// Local address; an IPv4 address occupies the first 4 bytes.
    pub local_addr: [u8; 16],
    /// Remote address; an IPv4 address occupies the first 4 bytes.
    pub remote_addr: [u8; 16],
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// `AF_INET` or `AF_INET6` (IPv4-mapped IPv6 is normalised to IPv4 in userspace).
    pub family: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<Tuple>() == 40);

impl Tuple {
    /// All zeros: no addresses, no ports, no family yet.
    pub const ZERO: Tuple = Tuple {
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: 0,
        remote_port: 0,
        family: 0,
        _pad: 0,
    };
}

/// Who did it: the thread and process that made the syscall (or that owned the connection, for
/// events raised in softirq context).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub tgid: u32,
    pub tid: u32,
    /// Process (thread-group leader) start time, ns since boot (`task->start_boottime`). With
    /// `tgid` it names a process uniquely even when the pid is reused.
    pub start_ns: u64,
    /// cgroup v2 id (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    /// Thread command name, NUL-padded. In a data event of the process that opened the
    /// connection, the name of the thread that opened it (copied from the connection state).
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<Identity>() == 40);

/// The head of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u8,
    /// One of [`role`]: the role of the observed socket's owner.
    pub role: u8,
    /// Bits of [`flags`].
    pub flags: u8,
    pub _pad: u8,
    /// Network namespace inode of the socket (`sk->__sk_common.skc_net->ns.inum`); 0 on data
    /// events (the connection's open event carries it).
    pub netns: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Stable connection id assigned by the kernel side; 0 for events on no connection.
    pub conn_id: u64,
    /// Kernel address of the `struct sock` (identity while the socket lives).
    pub sk: u64,
    pub who: Identity,
    pub tuple: Tuple,
}
const _: () = assert!(size_of::<EventHeader>() == 112);

/// Connection lifecycle events: open, fail, close, retransmit, listen, listen-close.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub header: EventHeader,
    /// Open: connect latency (SYN_SENT -> ESTABLISHED) in ns, 0 for accepted sockets.
    /// Fail: time from SYN_SENT to the failure, 0 when it failed synchronously.
    pub duration_ns: u64,
    /// Fail: positive errno (ECONNREFUSED, ETIMEDOUT, ...).
    pub errno: u32,
    pub _pad: u32,
    /// Close: exact totals kept by the kernel for the connection's whole tracked life.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Close: data events produced for this connection, and how many of them the ring buffer lost.
    pub data_events: u64,
    pub data_events_lost: u64,
    pub retransmits: u64,
}
const _: () = assert!(size_of::<ConnEvent>() == 112 + 56);

/// A read or write on a TCP socket. Only `size_of::<DataEventHeader>() + captured` bytes are sent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEventHeader {
    pub header: EventHeader,
    /// Bytes the syscall returned (the exact count moved).
    pub bytes: u64,
    /// Per-connection sequence number of this data event (gaps mean lost events).
    pub seq: u64,
    /// Payload bytes following this header.
    pub captured: u32,
    /// One of [`direction`].
    pub direction: u8,
    /// One of [`syscall`].
    pub syscall: u8,
    /// Plaintext events: the TLS library's index in the agent's table of probed libraries (the
    /// attach cookie); 0 for syscall events.
    pub library: u16,
    /// TCP sequence number of the syscall's first byte (`tcp_sock.write_seq` after a write,
    /// `tcp_sock.copied_seq` after a read, minus the bytes moved): the same number at both ends
    /// of a connection, through NAT, for the same byte. 0 in plaintext events.
    pub tcp_seq: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<DataEventHeader>() == 112 + 32);

/// The full data event as built in the per-CPU scratch buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub head: DataEventHeader,
    pub payload: [u8; MAX_CAPTURE],
}
const _: () = assert!(size_of::<DataEvent>() == 144 + MAX_CAPTURE);

/// Kernel structure member offsets (bytes), resolved by the agent from `/sys/kernel/btf/vmlinux`
/// at load time and written into the programs as a global, because Rust eBPF gets no CO-RE
/// relocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
    /// `socket.file`: the socket's back-pointer to its file, which tells a socket's
    /// `private_data` from another file's without reading the inode.
    pub socket_file: u32,
    pub sk_family: u32,
    pub sk_state: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_type: u32,
    pub sk_protocol: u32,
    pub sk_err: u32,
    /// `sock.__sk_common.skc_net` (a `possible_net_t` whose first member is `struct net *`).
    pub sk_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `inet_sock.inet_sport` (big endian): unlike `skc_num` it survives `inet_put_port`, which
    /// runs before the LISTEN -> CLOSE transition is traced.
    pub inet_sport: u32,
    /// `pt_regs` members holding a syscall's first three arguments (x86_64: `di`, `si`, `dx`),
    /// read at `sys_exit_*` from the registers the task saved on entry.
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    pub regs_arg2: u32,
    /// `tcp_sock.write_seq` (the sequence number of the next byte queued) and
    /// `tcp_sock.copied_seq` (of the next byte to be read).
    pub tcp_write_seq: u32,
    pub tcp_copied_seq: u32,
    /// The fourth argument's register (x86_64: `r10`): `recvfrom`'s flags, for `MSG_PEEK`.
    pub regs_arg3: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 31 * 4);

/// Run-time settings written into the programs as a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeConfig {
    /// The agent's own tgid: its syscalls are never traced.
    pub agent_tgid: u32,
    /// Payload prefix to capture per data event, at most `MAX_CAPTURE`.
    pub capture_bytes: u32,
    /// Wake the reader only when the bytes pending in the ring buffer cross a multiple of this;
    /// the reader also drains on a timer, so nothing waits longer than its poll interval.
    pub wakeup_bytes: u64,
    /// Data events are written only while fewer bytes than this are pending in the ring buffer:
    /// the rest is kept for connection events (open, close with its byte totals), so that a
    /// reader falling behind loses payloads, counted, but not the totals that keep byte counts
    /// exact.
    pub data_limit_bytes: u64,
    /// Nonzero when the agent is scoped to network namespaces (`--netns`): a socket starts being
    /// tracked only if its namespace's inode is a key of `NETNS_ALLOWED`.
    pub netns_filter: u32,
    /// Nonzero when traces are linked across nodes (`--peer`, `--peers-from-kubernetes`):
    /// data events of tracked sockets carry the TCP sequence number of their first byte
    /// (`DataEventHeader::tcp_seq`), else 0 and the socket's fields are not read.
    pub request_keys: u32,
}
const _: () = assert!(size_of::<ProbeConfig>() == 32);

/// Per-connection state the kernel keeps in the `CONNS` map, keyed by `struct sock *`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnState {
    pub conn_id: u64,
    pub owner: Identity,
    pub tuple: Tuple,
    /// SYN_SENT time (client) or accept time (server), `bpf_ktime_get_ns`.
    pub opened_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub data_events: u64,
    pub data_events_lost: u64,
    pub retransmits: u64,
    pub role: u8,
    pub flags: u8,
    /// 1 once CONN_OPEN was emitted (client: at ESTABLISHED).
    pub announced: u8,
    pub _pad: u8,
    /// Plaintext events produced for this connection: the sequence of the next one (the
    /// plaintext has its own numbering, apart from the syscalls' `data_events`).
    pub plaintext_events: u32,
}
const _: () = assert!(size_of::<ConnState>() == 8 + 40 + 40 + 8 * 6 + 8);

/// In-flight `connect` arguments, keyed by pid_tgid between sys_enter and sys_exit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectArgs {
    pub sk: u64,
    pub remote_addr: [u8; 16],
    pub remote_port: u16,
    pub family: u16,
    /// Set by `inet_sock_set_state` when this call moved the socket to SYN_SENT: the state
    /// machine then reports the outcome, and the syscall's own error is not counted twice.
    pub saw_syn_sent: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ConnectArgs>() == 32);

/// A data syscall's arguments, as the exit program reads them from the saved registers.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IoArgs {
    pub sk: u64,
    /// User buffer (read/write/recvfrom/sendto; a TLS call's plaintext) or iovec array
    /// (readv/writev/recvmsg/sendmsg).
    pub buf: u64,
    /// iovec count for vectored calls.
    pub iovcnt: u64,
    pub syscall: u8,
    pub direction: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<IoArgs>() == 32);

/// TLS library calls: what the entry probe saw, kept per thread until the return.
pub mod tls_call {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    /// `SSL_do_handshake`: no plaintext, but the socket it moves bytes on is the `SSL *`'s.
    pub const HANDSHAKE: u8 = 2;
    /// Not a call: the thread's last data syscall, outside any TLS call, read a server
    /// connection's first bytes, a TLS handshake record (`sk`). If the thread's next event is
    /// the first call on an `SSL *` tied to no socket, that `SSL` is this connection's (a
    /// library fed from memory, Node's: it reads the ClientHello, then hands it to the `SSL`).
    pub const HELLO_READ: u8 = 3;
    /// Not a call: a call on an `SSL *` tied to no socket returned without a socket syscall
    /// (`ssl`). If the thread's next event is a client connection's first write, a TLS
    /// handshake record, that connection is this `SSL`'s (its ClientHello, from memory).
    pub const UNTIED_RETURN: u8 = 4;
}

/// A TLS library call in flight on one thread, keyed by pid_tgid in `TLS_CALLS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsCall {
    /// The `SSL *`.
    pub ssl: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// `_ex` calls: where the library writes the byte count (`size_t *`); 0 for the others,
    /// which return it.
    pub count_ptr: u64,
    /// The socket a syscall inside this call moved bytes on (0: none yet).
    pub sk: u64,
    /// One of [`tls_call`].
    pub op: u8,
    pub _pad: u8,
    /// The library's index (attach cookie).
    pub library: u16,
    pub _pad2: u32,
}
const _: () = assert!(size_of::<TlsCall>() == 40);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is #[repr(C)], made only of integers and integer arrays, with the
    // padding spelled out as explicit fields (checked by the size assertions above), so every
    // bit pattern is a valid value.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnectArgs {}
}
