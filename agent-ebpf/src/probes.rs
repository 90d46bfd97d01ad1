//! Tracepoint programs. Entry points are thin: `match try_x(ctx) { Ok(r) | Err(r) => r }`.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_probe_read_user as probe_read_user_raw, bpf_ringbuf_output},
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use meshtap_common::{
    AF_INET, AF_INET6, ConnEvent, ConnState, ConnectArgs, DataEventHeader, HTTP2_CHUNKS, IoArgs,
    MAX_CAPTURE, MAX_IOV, Tuple, direction, flags, kind, map_id, role, stat, syscall,
};

use crate::{
    maps::{
        CONNECT_ARGS, CONNS, CONTINUATION, DATA_SCRATCH, EVENTS, RETRANSMIT_DONE, SET_STATE_DONE,
        TAIL, count, global, mark_handled, next_conn_id, pending_bytes, take_handled,
        wakes_for_new_process, wakeup_flags_for,
    },
    sock::{
        FdSocket, current_identity, in_scope, is_tcp, sock_err, sock_netns, sock_of_fd,
        sock_protocol, sock_sport, sock_state, sock_tuple, syscall_arg3, syscall_args,
        tcp_first_seq, tcp_sock_of_fd,
    },
};

// include/net/tcp_states.h
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const IPPROTO_TCP: u16 = 6;

const EINPROGRESS: i64 = 115;
/// include/linux/socket.h
const MSG_PEEK: u64 = 2;

/// Syscall tracepoint layout (`/sys/kernel/tracing/events/syscalls/*/format`): the arguments of
/// `sys_enter_*` start at 16, 8 bytes each; the return value of `sys_exit_*` is at 16.
const SYSCALL_ARGS: usize = 16;
const SYSCALL_RET: usize = 16;

/// Reads 8 bytes at `off` of the tracepoint record. A plain load: the verifier checks it against
/// the context's bounds, where `read_at` would make a `bpf_probe_read_kernel` call.
#[inline(always)]
fn record_u64(ctx: &TracePointContext, off: usize) -> u64 {
    // SAFETY: `off` is one of the 8-aligned offsets above, inside the record of every syscall
    // tracepoint (the stable syscall ABI, and checked against tracefs at start-up).
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(off).cast::<u64>()) }
}

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> Result<u64, u32> {
    Ok(record_u64(ctx, SYSCALL_ARGS + 8 * n))
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> Result<i64, u32> {
    Ok(record_u64(ctx, SYSCALL_RET) as i64)
}

#[inline(always)]
fn is_agent() -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == global!(CONFIG.agent_tgid)
}

/// `*dst = *src` as 8-byte loads and stores. A plain assignment of a 40-byte struct compiles to
/// a call of compiler-builtins' `memmove`, which on BPF copies one byte per loop iteration
/// (some 300 instructions for a tuple or an identity, on every data event).
#[inline(always)]
pub(crate) fn copy_words<T: Copy>(dst: &mut T, src: &T) {
    const {
        assert!(size_of::<T>() % 8 == 0 && core::mem::align_of::<T>() >= 8);
    }
    let (d, s) = (
        (dst as *mut T).cast::<u64>(),
        (src as *const T).cast::<u64>(),
    );
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: both point to a whole `T`, 8-aligned (asserted above), of `size_of::<T>() / 8`
        // words; `T` is plain integers, so any bit pattern copied word by word is a valid `T`.
        // Volatile keeps LLVM from turning the loop back into a `memmove` call.
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Reserves a connection event, fills the header from `state` (or the current task when `state`
/// is `None`) and lets `fill` complete it. Counts the event as lost when the ring is full.
#[inline(always)]
fn emit_conn(
    event_kind: u8,
    sk: u64,
    state: Option<&ConnState>,
    tuple: &Tuple,
    event_role: u8,
    fill: impl FnOnce(&mut ConnEvent),
) {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(stat::LOST_BASE + event_kind as u32);
        return;
    };
    let ev: &mut MaybeUninit<ConnEvent> = &mut entry;
    // SAFETY: the reservation is exactly size_of::<ConnEvent>() bytes; zeroing makes every field
    // (all integers) initialised before we write the interesting ones.
    let ev = unsafe {
        core::ptr::write_bytes(ev.as_mut_ptr(), 0, 1);
        ev.assume_init_mut()
    };
    let header = &mut ev.header;
    header.kind = event_kind;
    header.role = event_role;
    header.ts_ns = now();
    header.sk = sk;
    header.netns = if sk != 0 { sock_netns(sk) } else { 0 };
    copy_words(&mut header.tuple, tuple);
    match state {
        Some(state) => {
            header.conn_id = state.conn_id;
            header.flags = state.flags;
            copy_words(&mut header.who, &state.owner);
        }
        None => current_identity(&mut header.who),
    }
    let wake_now = event_kind == kind::CONN_OPEN
        && header.who.tgid != 0
        && wakes_for_new_process(header.who.tgid, header.who.start_ns);
    fill(ev);
    if wake_now {
        entry.submit(BPF_RB_FORCE_WAKEUP as u64);
        return;
    }
    // The reservation is already counted in the pending bytes.
    let pending = pending_bytes();
    entry.submit(wakeup_flags_for(
        pending.saturating_sub(size_of::<ConnEvent>() as u64),
        pending,
    ));
}

/// Starts tracking `sk`; returns the stored state.
#[inline(always)]
fn track(sk: u64, conn_role: u8, conn_flags: u8, tuple: &Tuple) -> Option<ConnState> {
    let mut state = ConnState {
        conn_id: next_conn_id(),
        owner: meshtap_common::Identity {
            tgid: 0,
            tid: 0,
            start_ns: 0,
            cgroup_id: 0,
            comm: [0; 16],
        },
        tuple: *tuple,
        opened_ns: now(),
        bytes_sent: 0,
        bytes_received: 0,
        data_events: 0,
        data_events_lost: 0,
        retransmits: 0,
        role: conn_role,
        flags: conn_flags,
        announced: 0,
        _pad: 0,
        plaintext_events: 0,
    };
    current_identity(&mut state.owner);
    if CONNS.insert(&sk, &state, 0).is_err() {
        count(stat::MAP_FAIL_BASE + map_id::CONNS);
        return None;
    }
    Some(state)
}

// ---------------------------------------------------------------------------------------------
// connect / accept

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    match try_enter_connect(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_enter_connect(ctx: &TracePointContext) -> Result<u32, u32> {
    if is_agent() {
        return Ok(0);
    }
    let Some(sk) = tcp_sock_of_fd(arg(ctx, 0)?).filter(|&sk| in_scope(sk)) else {
        return Ok(0);
    };
    let uaddr = arg(ctx, 1)?;
    // struct sockaddr_in / sockaddr_in6: family at 0, port (big endian) at 2, the IPv4 address
    // at 4, the IPv6 address at 8.
    // SAFETY: probe reads of user memory fail cleanly on bad pointers.
    let family: u16 = unsafe { bpf_probe_read_user(uaddr as *const u16) }.map_err(|_| 0u32)?;
    // SAFETY: as above.
    let port: u16 = unsafe { bpf_probe_read_user((uaddr + 2) as *const u16) }.map_err(|_| 0u32)?;
    let mut args = ConnectArgs {
        sk,
        remote_addr: [0; 16],
        remote_port: u16::from_be(port),
        family,
        saw_syn_sent: 0,
        _pad: [0; 3],
    };
    if family == AF_INET {
        // SAFETY: as above.
        let a: [u8; 4] =
            unsafe { bpf_probe_read_user((uaddr + 4) as *const [u8; 4]) }.map_err(|_| 0u32)?;
        args.remote_addr[..4].copy_from_slice(&a);
    } else if family == AF_INET6 {
        // SAFETY: as above.
        args.remote_addr =
            unsafe { bpf_probe_read_user((uaddr + 8) as *const [u8; 16]) }.map_err(|_| 0u32)?;
    } else {
        return Ok(0);
    }
    if CONNECT_ARGS
        .insert(&bpf_get_current_pid_tgid(), &args, 0)
        .is_err()
    {
        count(stat::MAP_FAIL_BASE + map_id::CONNECT_ARGS);
    }
    Ok(0)
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    match try_exit_connect(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// errno values that mean "this connection attempt failed" (not EINTR, EALREADY, EISCONN, ...).
#[inline(always)]
fn is_connect_failure(errno: i64) -> bool {
    matches!(
        errno,
        1      // EPERM: refused by a firewall or a cgroup/BPF hook
        | 13   // EACCES
        | 99   // EADDRNOTAVAIL
        | 101  // ENETUNREACH
        | 104  // ECONNRESET
        | 110  // ETIMEDOUT
        | 111  // ECONNREFUSED
        | 113 // EHOSTUNREACH
    )
}

fn try_exit_connect(ctx: &TracePointContext) -> Result<u32, u32> {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(args) = (unsafe { CONNECT_ARGS.get(&key) }).copied() else {
        return Ok(0);
    };
    let _ = CONNECT_ARGS.remove(&key);
    let rc = ret(ctx)?;
    // A connect that reached SYN_SENT is reported by the state machine (ESTABLISHED or
    // SYN_SENT -> CLOSE with sk_err); only failures before SYN_SENT are reported here.
    if rc >= 0 || rc == -EINPROGRESS || args.saw_syn_sent != 0 || !is_connect_failure(-rc) {
        return Ok(0);
    }
    let mut tuple = Tuple {
        local_addr: [0; 16],
        remote_addr: args.remote_addr,
        local_port: 0,
        remote_port: args.remote_port,
        family: args.family,
        _pad: 0,
    };
    if tuple.family == 0 {
        tuple.family = AF_INET;
    }
    emit_conn(kind::CONN_FAIL, args.sk, None, &tuple, role::CLIENT, |ev| {
        ev.errno = (-rc) as u32;
    });
    Ok(0)
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    match try_exit_accept(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_exit_accept(ctx: &TracePointContext) -> Result<u32, u32> {
    if is_agent() {
        return Ok(0);
    }
    let fd = ret(ctx)?;
    if fd < 0 {
        return Ok(0);
    }
    let Some(sk) = tcp_sock_of_fd(fd as u64).filter(|&sk| in_scope(sk)) else {
        return Ok(0);
    };
    let mut tuple = Tuple::ZERO;
    sock_tuple(sk, &mut tuple);
    let Some(mut state) = track(sk, role::SERVER, 0, &tuple) else {
        return Ok(0);
    };
    state.announced = 1;
    if let Some(stored) = CONNS.get_ptr_mut(&sk) {
        // SAFETY: valid map value pointer for the duration of the program.
        unsafe { (*stored).announced = 1 };
    }
    emit_conn(
        kind::CONN_OPEN,
        sk,
        Some(&state),
        &tuple,
        role::SERVER,
        |_| {},
    );
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// TCP state machine

/// A raw tracepoint, not a regular one: regular tracepoint programs share the per-CPU
/// `bpf_prog_active` guard, so a state change in softirq that interrupts any other BPF program
/// on the CPU (a syscall hook, say) is silently skipped (`recursion_misses`). Raw tracepoints
/// are guarded per program (kernel/trace/bpf_trace.c, `__bpf_trace_run`).
///
/// The per-program guard still skips a state change in softirq that interrupts this very
/// program on the same CPU (seen as `recursion_misses`: a few closes in thousands). So a second
/// copy is attached to the same tracepoint: it runs right after the first for every event, and
/// handles the event only if the first did not (the first marks what it handled per CPU, see
/// `maps::Handled`). A nested event skipped by one copy is handled by the other.
macro_rules! program_pair {
    ($tracepoint:literal, $first:ident, $backup:ident, $done:ident, $key:ident, $handle:ident) => {
        #[raw_tracepoint(tracepoint = $tracepoint)]
        pub fn $first(ctx: RawTracePointContext) -> i32 {
            let r = match $handle(&ctx) {
                Ok(r) | Err(r) => r as i32,
            };
            mark_handled(&$done, $key(&ctx));
            r
        }

        #[raw_tracepoint(tracepoint = $tracepoint)]
        pub fn $backup(ctx: RawTracePointContext) -> i32 {
            if take_handled(&$done, $key(&ctx)) {
                return 0;
            }
            match $handle(&ctx) {
                Ok(r) | Err(r) => r as i32,
            }
        }
    };
}

program_pair!(
    "inet_sock_set_state",
    inet_sock_set_state,
    inet_sock_set_state_backup,
    SET_STATE_DONE,
    event_key,
    try_set_state
);

/// (sk, newstate): one state change (a socket never changes to the state it is in).
#[inline(always)]
fn event_key(ctx: &RawTracePointContext) -> [u64; 2] {
    [ctx.arg::<u64>(0), ctx.arg::<u64>(2)]
}

fn try_set_state(ctx: &RawTracePointContext) -> Result<u32, u32> {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let sk: u64 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    if sock_protocol(sk) != IPPROTO_TCP {
        return Ok(0);
    }
    let mut tuple = Tuple::ZERO;
    sock_tuple(sk, &mut tuple);
    if tuple.family != AF_INET && tuple.family != AF_INET6 {
        return Ok(0);
    }

    if new == TCP_SYN_SENT {
        // connect(): tcp_v4_connect/tcp_v6_connect run in the caller's context.
        if is_agent() || !in_scope(sk) {
            return Ok(0);
        }
        if let Some(args) = CONNECT_ARGS.get_ptr_mut(&bpf_get_current_pid_tgid()) {
            // SAFETY: valid map value pointer for the duration of the program.
            unsafe { (*args).saw_syn_sent = 1 };
        }
        let _ = track(sk, role::CLIENT, 0, &tuple);
        return Ok(0);
    }
    if new == TCP_LISTEN || old == TCP_LISTEN {
        tuple.local_port = sock_sport(sk);
        if !in_scope(sk) {
            return Ok(0);
        }
    }
    if new == TCP_LISTEN && old == TCP_CLOSE {
        emit_conn(kind::LISTEN, sk, None, &tuple, role::SERVER, |_| {});
        return Ok(0);
    }
    if old == TCP_LISTEN && new == TCP_CLOSE {
        emit_conn(kind::LISTEN_CLOSE, sk, None, &tuple, role::SERVER, |_| {});
        return Ok(0);
    }
    let Some(state) = CONNS.get_ptr_mut(&sk) else {
        return Ok(0);
    };
    if new == TCP_ESTABLISHED && old == TCP_SYN_SENT {
        // SAFETY: valid map value pointer for the duration of the program.
        let state = unsafe { &mut *state };
        if state.announced == 0 {
            state.announced = 1;
            state.tuple = tuple;
            let latency = now().saturating_sub(state.opened_ns);
            emit_conn(
                kind::CONN_OPEN,
                sk,
                Some(state),
                &tuple,
                role::CLIENT,
                |ev| ev.duration_ns = latency,
            );
        }
        return Ok(0);
    }
    if new == TCP_CLOSE {
        // SAFETY: valid map value pointer; copied before the entry is removed.
        let state = unsafe { *state };
        let _ = CONNS.remove(&sk);
        let elapsed = now().saturating_sub(state.opened_ns);
        if old == TCP_SYN_SENT && state.announced == 0 {
            let errno = sock_err(sk);
            emit_conn(
                kind::CONN_FAIL,
                sk,
                Some(&state),
                &tuple,
                role::CLIENT,
                |ev| {
                    ev.errno = errno;
                    ev.duration_ns = elapsed;
                },
            );
        } else {
            let tuple = if state.tuple.local_port != 0 {
                state.tuple
            } else {
                tuple
            };
            emit_conn(
                kind::CONN_CLOSE,
                sk,
                Some(&state),
                &tuple,
                state.role,
                |ev| {
                    ev.duration_ns = elapsed;
                    ev.bytes_sent = state.bytes_sent;
                    ev.bytes_received = state.bytes_received;
                    ev.data_events = state.data_events;
                    ev.data_events_lost = state.data_events_lost;
                    ev.retransmits = state.retransmits;
                },
            );
        }
    }
    Ok(0)
}

// Raw for the same reason as `inet_sock_set_state`: retransmits fire in softirq (the
// retransmit timer, or ACK processing) and in process context (ACKs processed on the socket
// backlog at `release_sock`), so one can nest into another on the same CPU. Hence a backup,
// as for `inet_sock_set_state`: a retransmit skipped by one copy is handled by the other.
program_pair!(
    "tcp_retransmit_skb",
    tcp_retransmit_skb,
    tcp_retransmit_skb_backup,
    RETRANSMIT_DONE,
    retransmit_key,
    try_retransmit
);

/// (sk, skb): one retransmit attempt. The same skb can be retransmitted again later; the
/// backup takes out each key it matched, so only a key left behind by a skipped backup (a
/// nested event while the backup itself ran) could stand for a later attempt.
#[inline(always)]
fn retransmit_key(ctx: &RawTracePointContext) -> [u64; 2] {
    [ctx.arg::<u64>(0), ctx.arg::<u64>(1)]
}

fn try_retransmit(ctx: &RawTracePointContext) -> Result<u32, u32> {
    // TP_PROTO(const struct sock *sk, const struct sk_buff *skb, int err): the tracepoint
    // also fires for attempts that did not go out (e.g. -EBUSY while the segment is still
    // queued in the host); only err == 0 is a retransmit on the wire.
    let sk: u64 = ctx.arg(0);
    if ctx.arg::<u64>(2) as i32 != 0 {
        return Ok(0);
    }
    let Some(state) = CONNS.get_ptr_mut(&sk) else {
        if in_scope(sk) {
            count(stat::RETRANSMIT_UNTRACKED);
        }
        return Ok(0);
    };
    // SAFETY: valid map value pointer for the duration of the program.
    let state = unsafe { &mut *state };
    state.retransmits += 1;
    let tuple = state.tuple;
    emit_conn(
        kind::RETRANSMIT,
        sk,
        Some(state),
        &tuple,
        state.role,
        |_| {},
    );
    Ok(0)
}

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    // A thread killed inside connect() never reaches sys_exit: drop what it parked.
    let _ = CONNECT_ARGS.remove(&bpf_get_current_pid_tgid());
    0
}

// ---------------------------------------------------------------------------------------------
// data

/// Where a data syscall's arguments say the user buffer is.
#[derive(Clone, Copy)]
enum Buffer {
    /// `(fd, buf, len)`: read, write, recvfrom, sendto.
    Flat,
    /// `(fd, iov, iovcnt)`: readv, writev.
    Vector,
    /// `(fd, msghdr, flags)`: recvmsg, sendmsg.
    Message,
    /// `(out_fd, in_fd, ...)`: sendfile; counted, no payload.
    None,
}

/// The arguments of the data syscall that just returned, if its fd is a socket (of any type:
/// `try_exit_io` checks that it is a socket, and TCP, only when it is not a tracked connection).
#[inline(always)]
fn io_args(call: u8, dir: u8, buffer: Buffer) -> Option<(IoArgs, FdSocket)> {
    let ([fd, a1, a2], regs) = syscall_args()?;
    // A peek (`MSG_PEEK`) returns bytes that stay queued: the read that takes them counts and
    // parses them, the peek neither (nginx peeks at each new connection's first byte on a TLS
    // listener, `ngx_http_ssl_handshake`).
    let recv_flags = match call {
        syscall::RECVFROM => syscall_arg3(regs),
        syscall::RECVMSG => a2,
        _ => 0,
    };
    if recv_flags & MSG_PEEK != 0 {
        return None;
    }
    let socket = sock_of_fd(fd)?;
    let mut args = IoArgs {
        sk: socket.sk,
        buf: 0,
        iovcnt: 0,
        syscall: call,
        direction: dir,
        _pad: [0; 6],
    };
    match buffer {
        Buffer::Flat => args.buf = a1,
        Buffer::Vector => {
            args.buf = a1;
            args.iovcnt = a2;
        }
        Buffer::Message => {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24 (include/linux/socket.h).
            // SAFETY: probe reads of user memory fail cleanly on bad pointers.
            let [iov, iovlen] =
                unsafe { bpf_probe_read_user((a1 + 16) as *const [u64; 2]) }.unwrap_or([0, 0]);
            args.buf = iov;
            args.iovcnt = iovlen;
        }
        Buffer::None => {}
    }
    Some((args, socket))
}

/// One exit program per data syscall: it knows which syscall it is attached to, and reads the
/// arguments from the saved registers (no entry program, no map between the two).
macro_rules! exit_program {
    ($name:ident, $call:expr, $dir:expr, $buffer:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            match try_exit_io(&ctx, $call, $dir, $buffer) {
                Ok(r) | Err(r) => r,
            }
        }
    };
}

exit_program!(
    sys_exit_read,
    syscall::READ,
    direction::INGRESS,
    Buffer::Flat
);
exit_program!(
    sys_exit_write,
    syscall::WRITE,
    direction::EGRESS,
    Buffer::Flat
);
exit_program!(
    sys_exit_readv,
    syscall::READV,
    direction::INGRESS,
    Buffer::Vector
);
exit_program!(
    sys_exit_writev,
    syscall::WRITEV,
    direction::EGRESS,
    Buffer::Vector
);
exit_program!(
    sys_exit_recvfrom,
    syscall::RECVFROM,
    direction::INGRESS,
    Buffer::Flat
);
exit_program!(
    sys_exit_sendto,
    syscall::SENDTO,
    direction::EGRESS,
    Buffer::Flat
);
exit_program!(
    sys_exit_recvmsg,
    syscall::RECVMSG,
    direction::INGRESS,
    Buffer::Message
);
exit_program!(
    sys_exit_sendmsg,
    syscall::SENDMSG,
    direction::EGRESS,
    Buffer::Message
);
exit_program!(
    sys_exit_sendfile64,
    syscall::SENDFILE,
    direction::EGRESS,
    Buffer::None
);

const HEADER: usize = size_of::<DataEventHeader>();

#[inline(always)]
fn try_exit_io(ctx: &TracePointContext, call: u8, dir: u8, buffer: Buffer) -> Result<u32, u32> {
    let rc = ret(ctx)?;
    if rc <= 0 || is_agent() {
        return Ok(0);
    }
    let Some((args, socket)) = io_args(call, dir, buffer) else {
        return Ok(0);
    };
    let bytes = rc as u64;
    let sk = args.sk;

    let scratch = DATA_SCRATCH.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: per-CPU scratch value, valid for the whole program run and not shared.
    let scratch = unsafe { &mut *scratch };
    let head = &mut scratch.event.head;
    head.header.kind = kind::DATA;
    head.header.flags = 0;
    head.header._pad = 0;
    head.header.netns = 0;
    head.header.ts_ns = now();
    head.header.sk = sk;
    head.bytes = bytes;
    head.direction = args.direction;
    head.syscall = args.syscall;
    head.library = 0;

    // Per-connection bookkeeping: exact byte totals even if this event is lost.
    let state_ptr = match CONNS.get_ptr_mut(&sk) {
        Some(p) => Some(p),
        None => {
            // Not a connection we track: a socket of another kind, or the first sight of a
            // TCP connection opened before the agent (or whose open we missed).
            if !socket.is_socket_inode() || !is_tcp(sk) || !in_scope(sk) {
                return Ok(0);
            }
            let mut tuple = Tuple::ZERO;
            sock_tuple(sk, &mut tuple);
            if sock_state(sk) as i32 != TCP_CLOSE
                && let Some(mut state) = track(sk, role::UNKNOWN, flags::PRE_EXISTING, &tuple)
            {
                state.announced = 1;
                emit_conn(
                    kind::CONN_OPEN,
                    sk,
                    Some(&state),
                    &tuple,
                    role::UNKNOWN,
                    |_| {},
                );
                CONNS.get_ptr_mut(&sk)
            } else {
                // Untracked (already closed, or the map is full): still report the bytes.
                current_identity(&mut head.header.who);
                head.header.conn_id = 0;
                head.header.role = role::UNKNOWN;
                head.header.tuple = tuple;
                head.seq = 0;
                None
            }
        }
    };
    head.tcp_seq = 0;
    head._pad = 0;
    let mut thread = crate::tls::Thread::InsideCall;
    if let Some(state) = state_ptr {
        // SAFETY: valid map value pointer for the duration of the program.
        let state = unsafe { &mut *state };
        if global!(CONFIG.request_keys) != 0 {
            head.tcp_seq = tcp_first_seq(sk, args.direction == direction::EGRESS, bytes);
        }
        state.announced = 1;
        thread = crate::tls::note_socket(sk, state);
        if args.direction == direction::EGRESS {
            state.bytes_sent += bytes;
        } else {
            state.bytes_received += bytes;
        }
        head.seq = state.data_events;
        state.data_events += 1;
        head.header.conn_id = state.conn_id;
        head.header.role = state.role;
        head.header.flags = state.flags;
        copy_words(&mut head.header.tuple, &state.tuple);
        // The process that opened the connection is almost always the one using it: then its
        // identity is copied from the connection (four helper calls fewer per event); only the
        // thread is the current one. Another process (a forked worker, a passed fd) gets its own.
        let pid_tgid = bpf_get_current_pid_tgid();
        if state.owner.tgid == (pid_tgid >> 32) as u32 {
            copy_words(&mut head.header.who, &state.owner);
            head.header.who.tid = pid_tgid as u32;
        } else {
            current_identity(&mut head.header.who);
        }
    }

    // TLS: nothing after the first record can be parsed, so nothing is copied (the first
    // event still carries its bytes, for the agent to see it is not a protocol it parses).
    let skip = scratch.event.head.header.flags & flags::TLS != 0;
    let mut http2 = scratch.event.head.header.flags & flags::HTTP2 != 0;
    // Where the first copy stopped in a vectored syscall's iovecs: the next chunk resumes there.
    let mut iov_at = IovAt::default();
    let captured = if skip {
        count(stat::TLS_PAYLOAD_SKIPPED);
        0
    } else {
        let cap = if http2 {
            MAX_CAPTURE as u64
        } else {
            global!(CONFIG.capture_bytes) as u64
        };
        copy_from(scratch, &args, bytes, 0, cap, &mut iov_at)
    };
    scratch.event.head.captured = captured as u32;
    let hello = !skip
        && scratch.event.head.seq == 0
        && scratch.event.head.header.flags & flags::PRE_EXISTING == 0
        && scratch.event.head.header.conn_id != 0
        && captured >= 3
        && is_tls_record(&scratch.event.payload);
    if hello && let Some(state) = CONNS.get_ptr_mut(&sk) {
        // SAFETY: valid map value pointer for the duration of the program.
        unsafe { (*state).flags |= flags::TLS };
    }
    if let crate::tls::Thread::Outside(pending) = thread {
        crate::tls::outside_call(sk, args.direction, hello, pending);
    }
    if !skip
        && !http2
        && captured >= HTTP2_PREFACE.len()
        && scratch.event.head.header.conn_id != 0
        && is_http2_preface(&scratch.event.payload)
        && let Some(state) = CONNS.get_ptr_mut(&sk)
    {
        // SAFETY: valid map value pointer for the duration of the program.
        unsafe { (*state).flags |= flags::HTTP2 };
        scratch.event.head.header.flags |= flags::HTTP2;
        http2 = true;
    }
    let more = http2 && captured > 0 && (captured as u64) < bytes;
    if more {
        scratch.event.head.header.flags |= flags::MORE;
    }
    if !emit_data(scratch, sk, captured) || !more {
        return Ok(0);
    }
    // The rest of an HTTP/2 syscall, chunk by chunk, in `data_continue` (a tail call: its copy
    // loop verified once, not once per chunk): header blocks anywhere in it stay whole.
    let Some(cont) = CONTINUATION.get_ptr_mut(0) else {
        return Ok(0);
    };
    // SAFETY: per-CPU value, valid for the whole program run and not shared.
    let cont = unsafe { &mut *cont };
    cont.args = args;
    cont.bytes = bytes;
    cont.offset = captured as u64;
    cont.iov_index = iov_at.index;
    cont.iov_skip = iov_at.skip;
    cont.chunk = 1;
    cont.flags = scratch.event.head.header.flags & !flags::MORE;
    // SAFETY: a tail call replaces this program with `data_continue` on the same CPU, which
    // finds the state above; it returns only if the slot is empty (counted).
    unsafe { TAIL.tail_call(ctx, 0) };
    // Only reached when the tail call failed.
    end_uncaptured(scratch, sk, cont.flags, bytes - captured as u64);
    Ok(0)
}

/// The rest of an HTTP/2 syscall (or TLS call) is not copied (it could not be, or the ring is
/// filling): one last event without payload says how many bytes moved unseen, so that the parser
/// skips them by count (its framing is lost, and counted, only if a frame header was among them).
#[inline(always)]
pub(crate) fn end_uncaptured(
    scratch: &mut crate::maps::DataScratch,
    sk: u64,
    base_flags: u8,
    rest: u64,
) {
    count(stat::CONTINUATION_FAILED);
    let head = &mut scratch.event.head;
    head.header.flags = base_flags | flags::CONTINUATION;
    head.bytes = rest;
    head.captured = 0;
    let plaintext = is_plaintext(head.syscall);
    if let Some(state) = CONNS.get_ptr_mut(&sk) {
        // SAFETY: valid map value pointer for the duration of the program.
        head.seq = next_seq(unsafe { &mut *state }, plaintext);
    }
    deliver(scratch, sk, 0, plaintext);
}

/// Whether a data event's syscall is a TLS library call (plaintext, numbered apart).
#[inline(always)]
fn is_plaintext(call: u8) -> bool {
    call == syscall::TLS_READ || call == syscall::TLS_WRITE
}

/// The sequence number of the connection's next data event: plaintext events have their own
/// numbering (`ConnState::plaintext_events`), apart from the syscalls'.
#[inline(always)]
fn next_seq(state: &mut ConnState, plaintext: bool) -> u64 {
    if plaintext {
        let seq = u64::from(state.plaintext_events);
        state.plaintext_events = state.plaintext_events.wrapping_add(1);
        seq
    } else {
        let seq = state.data_events;
        state.data_events += 1;
        seq
    }
}

/// Sends a syscall's event as [`emit_data`] does, a plaintext event as [`send_data`] does (the
/// connection's loss count is the syscalls'; a lost plaintext event shows as a gap in its own
/// numbering).
#[inline(always)]
fn deliver(
    scratch: &mut crate::maps::DataScratch,
    sk: u64,
    captured: usize,
    plaintext: bool,
) -> bool {
    if plaintext {
        let library = scratch.event.head.library;
        let sent = send_data(scratch, captured);
        if sent {
            crate::tls::count_plaintext(library);
        }
        sent
    } else {
        emit_data(scratch, sk, captured)
    }
}

/// Sends the next chunk of an HTTP/2 syscall whose first event `try_exit_io` sent, then tail-
/// calls itself for the next one (see `flags::HTTP2`).
#[tracepoint]
pub fn data_continue(ctx: TracePointContext) -> u32 {
    match continue_capture(&ctx, &TAIL) {
        Ok(r) | Err(r) => r,
    }
}

/// The body of the continuation programs: `data_continue` for syscalls (a tracepoint program,
/// tail-called through `TAIL`) and `tls::tls_continue` for TLS calls (a uprobe program, through
/// its own program array: a program array holds programs of one type only). The state is in
/// `CONTINUATION`; for a TLS call its `args` name a flat buffer (the call's plaintext) and
/// syscall `TLS_READ`/`TLS_WRITE`.
#[inline(always)]
pub(crate) fn continue_capture<C: EbpfContext>(
    ctx: &C,
    tail: &aya_ebpf::maps::ProgramArray,
) -> Result<u32, u32> {
    let cont = CONTINUATION.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: per-CPU value, valid for the whole program run and not shared.
    let cont = unsafe { &mut *cont };
    let scratch = DATA_SCRATCH.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: as above; it still holds the header of the syscall's first event.
    let scratch = unsafe { &mut *scratch };
    let (bytes, offset, sk) = (cont.bytes, cont.offset, cont.args.sk);
    if cont.chunk >= HTTP2_CHUNKS || offset >= bytes {
        return Ok(0);
    }
    // Back-pressure: when the next chunk would not fit the ring's data share, the rest of the
    // syscall goes uncaptured (one small event says how much) instead of being lost as events.
    // A lost event loses both header tables' state; uncaptured bytes are mostly DATA payload,
    // which the parser skips by count anyway (if a frame header is among them, the parser
    // counts its framing lost).
    if pending_bytes() + (2 * HEADER + MAX_CAPTURE) as u64 > global!(CONFIG.data_limit_bytes) {
        end_uncaptured(scratch, sk, cont.flags, bytes - offset);
        return Ok(0);
    }
    let args = cont.args;
    let plaintext = is_plaintext(args.syscall);
    let mut iov_at = IovAt {
        index: cont.iov_index,
        skip: cont.iov_skip,
    };
    let n = copy_from(
        scratch,
        &args,
        bytes,
        offset,
        MAX_CAPTURE as u64,
        &mut iov_at,
    );
    if n == 0 {
        end_uncaptured(scratch, sk, cont.flags, bytes - offset);
        return Ok(0);
    }
    let more = offset + (n as u64) < bytes && cont.chunk + 1 < HTTP2_CHUNKS;
    let head = &mut scratch.event.head;
    head.header.flags = cont.flags | flags::CONTINUATION;
    if more {
        head.header.flags |= flags::MORE;
    }
    head.bytes = bytes - offset;
    head.captured = n as u32;
    if let Some(state) = CONNS.get_ptr_mut(&sk) {
        // SAFETY: valid map value pointer for the duration of the program.
        head.seq = next_seq(unsafe { &mut *state }, plaintext);
    }
    if !deliver(scratch, sk, n, plaintext) || !more {
        return Ok(0);
    }
    cont.offset = offset + n as u64;
    cont.iov_index = iov_at.index;
    cont.iov_skip = iov_at.skip;
    cont.chunk += 1;
    // SAFETY: see `try_exit_io`.
    unsafe { tail.tail_call(ctx, 0) };
    // Only reached when the tail call failed.
    end_uncaptured(scratch, sk, cont.flags, bytes - cont.offset);
    Ok(0)
}

/// Sends the scratch data event with `captured` payload bytes; counts it lost (node-wide and on
/// its connection) if the ring, or its data share, is full. Returns whether it was sent.
#[inline(always)]
fn emit_data(scratch: &mut crate::maps::DataScratch, sk: u64, captured: usize) -> bool {
    if send_data(scratch, captured) {
        return true;
    }
    if let Some(state) = CONNS.get_ptr_mut(&sk) {
        // SAFETY: valid map value pointer for the duration of the program.
        unsafe { (*state).data_events_lost += 1 };
    }
    false
}

/// Sends the scratch data event with `captured` payload bytes, or counts it lost node-wide if
/// the ring, or its data share, is full. Returns whether it was sent.
#[inline(always)]
pub(crate) fn send_data(scratch: &mut crate::maps::DataScratch, captured: usize) -> bool {
    let len = (HEADER + (captured & (MAX_CAPTURE * 2 - 1))) as u64;
    if len > (HEADER + MAX_CAPTURE) as u64 {
        return false;
    }
    // The last part of the ring is kept for connection events (see `ProbeConfig`): past the
    // limit a data event is lost exactly as if the ring were full.
    let pending = pending_bytes();
    let rc = if pending + len > global!(CONFIG.data_limit_bytes) {
        -1
    } else {
        // SAFETY: `len` is at most HEADER + MAX_CAPTURE, inside the scratch value; the ring
        // buffer copies it out before this program returns.
        unsafe {
            bpf_ringbuf_output(
                &EVENTS as *const _ as *mut _,
                scratch as *mut _ as *mut _,
                len,
                wakeup_flags_for(pending, pending + len),
            )
        }
    };
    if rc != 0 {
        count(stat::LOST_BASE + kind::DATA as u32);
        return false;
    }
    true
}

/// The first line of the HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const HTTP2_PREFACE: &[u8; 16] = b"PRI * HTTP/2.0\r\n";

/// Whether `payload` starts with the HTTP/2 client preface.
#[inline(always)]
pub(crate) fn is_http2_preface(payload: &[u8; MAX_CAPTURE]) -> bool {
    let mut i = 0;
    while i < HTTP2_PREFACE.len() {
        if payload[i] != HTTP2_PREFACE[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `payload` starts like a TLS handshake record: content type 22, version 3.x
/// (SSL 3.0 to TLS 1.3, whose records say 3.1 or 3.3). No plaintext protocol the agent parses
/// starts with byte 22.
#[inline(always)]
fn is_tls_record(payload: &[u8; MAX_CAPTURE]) -> bool {
    payload[0] == 0x16 && payload[1] == 0x03 && payload[2] <= 0x04
}

/// Where a vectored syscall's copy stands in its iovecs: the next iovec and the bytes to pass
/// over from it (possibly more than it holds). Each chunk of an HTTP/2 syscall resumes there, so
/// that every chunk can walk `MAX_IOV` more iovecs.
#[derive(Clone, Copy, Default)]
pub struct IovAt {
    pub index: u64,
    pub skip: u64,
}

/// Copies up to `cap` (at most `MAX_CAPTURE`) bytes of the payload, from byte `offset` of what
/// the syscall moved (vectored syscalls: from `iov_at`, which it advances), into the scratch
/// event; returns the count.
#[inline(always)]
pub(crate) fn copy_from(
    scratch: &mut crate::maps::DataScratch,
    args: &IoArgs,
    bytes: u64,
    offset: u64,
    cap: u64,
    iov_at: &mut IovAt,
) -> usize {
    let mut cap = cap;
    if cap > MAX_CAPTURE as u64 {
        cap = MAX_CAPTURE as u64;
    }
    if offset >= bytes {
        return 0;
    }
    if cap > bytes - offset {
        cap = bytes - offset;
    }
    if cap == 0 || args.buf == 0 {
        return 0;
    }
    let base = scratch.event.payload.as_mut_ptr();
    match args.syscall {
        // A TLS call's plaintext buffer is flat too (the continuation of an HTTP/2 connection's
        // plaintext, see `tls`).
        syscall::READ
        | syscall::WRITE
        | syscall::RECVFROM
        | syscall::SENDTO
        | syscall::TLS_READ
        | syscall::TLS_WRITE => {
            let n = cap as u32 & (MAX_CAPTURE as u32 * 2 - 1);
            if n as u64 > cap {
                return 0;
            }
            // SAFETY: `n <= MAX_CAPTURE` bytes into the payload array; a bad user pointer makes
            // the helper fail without side effects.
            let rc =
                unsafe { probe_read_user_raw(base as *mut _, n, (args.buf + offset) as *const _) };
            if rc == 0 { n as usize } else { 0 }
        }
        syscall::READV | syscall::WRITEV | syscall::RECVMSG | syscall::SENDMSG => {
            let mut done: u64 = 0;
            let mut i = iov_at.index;
            let mut skip = iov_at.skip;
            let mut steps: u32 = 0;
            while steps < MAX_IOV {
                if i >= args.iovcnt || done >= cap {
                    break;
                }
                steps += 1;
                // struct iovec { void *iov_base; size_t iov_len; }: one read for both.
                let iov = args.buf + 16 * i;
                // SAFETY: probe reads of user memory fail cleanly on bad pointers.
                let Ok([iov_base, iov_len]) =
                    (unsafe { bpf_probe_read_user(iov as *const [u64; 2]) })
                else {
                    break;
                };
                i += 1;
                if skip >= iov_len {
                    skip -= iov_len;
                    continue;
                }
                let mut n = cap - done;
                if iov_len - skip < n {
                    n = iov_len - skip;
                }
                let off = (done as u32) & (MAX_CAPTURE as u32 - 1);
                let n = (n as u32) & (MAX_CAPTURE as u32 * 2 - 1);
                if n > MAX_CAPTURE as u32 {
                    break;
                }
                if n > 0 {
                    // SAFETY: off < MAX_CAPTURE and n <= MAX_CAPTURE: the write stays inside
                    // payload + slack of the scratch value.
                    let rc = unsafe {
                        probe_read_user_raw(
                            base.add(off as usize) as *mut _,
                            n,
                            (iov_base + skip) as *const _,
                        )
                    };
                    if rc != 0 {
                        break;
                    }
                }
                done += n as u64;
                // Resume in this iovec, past what was copied of it (a next chunk passes over
                // it to the next iovec if nothing is left).
                iov_at.index = i - 1;
                iov_at.skip = skip + n as u64;
                skip = 0;
            }
            if done > cap {
                cap as usize
            } else {
                done as usize
            }
        }
        _ => 0,
    }
}
