//! TLS plaintext: uprobes on a TLS library's read and write calls (OpenSSL's `SSL_read`,
//! `SSL_write`, `SSL_read_ex`, `SSL_write_ex`, `SSL_write_ex2`, and `SSL_do_handshake` for the
//! socket alone).
//!
//! The entry probe parks the call's arguments per thread (`TLS_CALLS`); a socket syscall made
//! while the call runs (the library reading or writing its records) names the call's socket
//! ([`note_socket`], from the syscall exit programs) and marks the connection
//! [`flags::TLS_PROBED`]: its syscall events keep counting the ciphertext's bytes and carry no
//! payload. The return probe remembers `SSL *` -> socket (`TLS_SOCKETS`: a read served from
//! the library's buffer makes no syscall) and sends the plaintext as a data event of that
//! connection (syscall [`syscall::TLS_READ`] / `TLS_WRITE`), with its own sequence numbers and
//! no byte accounting. Plaintext whose socket is unknown is counted, not sent; plaintext on a
//! socket past TCP_CLOSE (the peer hung up) is sent without a connection id, as the syscalls'
//! late bytes are.
//!
//! A library fed from memory (Node's `TLSWrap`) makes its socket syscalls between its calls:
//! its `SSL *` is tied to its socket at the handshake, when a server's ClientHello read and the
//! first call on a new `SSL`, or a client's first call on a new `SSL` and its ClientHello
//! write, come back to back on one thread (see [`outside_call`]).
//!
//! A connection whose plaintext starts with the HTTP/2 client preface is marked
//! [`flags::HTTP2`]: from then on each call's plaintext is sent whole, the first chunk by the
//! return program and the rest by `tls_continue` (tail-called, the same body as the syscalls'
//! `data_continue`, its per-CPU state naming the call's flat buffer).
//!
//! `SSL_free` takes the `SSL *` out of `TLS_SOCKETS`.
//!
//! One program per entry point and one return program for all: each attachment's cookie is
//! the library's index in the agent's table, copied into the events.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_probe_read_user as probe_read_user_raw},
    },
    macros::{map, uprobe, uretprobe},
    maps::{LruHashMap, PerCpuArray, ProgramArray},
    programs::{ProbeContext, RetProbeContext},
};
use meshtap_common::{
    ConnState, IoArgs, MAX_CAPTURE, MAX_TLS_LIBRARIES, TlsCall, Tuple, direction, flags, kind,
    map_id, role, stat, syscall, tls_call,
};

use crate::{
    maps::{CONNS, CONTINUATION, DATA_SCRATCH, count, global},
    probes::{
        HTTP2_PREFACE, continue_capture, copy_words, end_uncaptured, is_http2_preface, now,
        send_data,
    },
    sock::{current_identity, in_scope, sock_tuple},
};

/// TLS calls in flight, keyed by pid_tgid. LRU: a thread that died inside a call leaves its
/// entry to be evicted.
#[map]
pub static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// `SSL *` -> `struct sock *` of the last syscall made inside a call on it.
#[map]
pub static TLS_SOCKETS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// Plaintext events sent, per library index (the attach cookie).
#[map]
pub static TLS_PLAINTEXT: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_TLS_LIBRARIES, 0);

/// Nonzero when the agent attached TLS probes (written at load time): the syscall programs
/// then look for a TLS call in flight on their thread.
#[unsafe(no_mangle)]
pub static TLS_ENABLED: u32 = 0;

/// Where a data syscall on a tracked connection ran, as far as the TLS probes know.
pub enum Thread {
    /// Inside a probed TLS call: the call's socket is this syscall's.
    InsideCall,
    /// Outside any: with the thread's pending tie if it has one (`tls_call::HELLO_READ`,
    /// `tls_call::UNTIED_RETURN`).
    Outside(Option<TlsCall>),
}

/// Called by the syscall exit programs for every data syscall on a tracked connection: if the
/// thread is inside a probed TLS call, that call's socket is `sk`, and the connection's
/// plaintext comes from the probes.
#[inline(always)]
pub fn note_socket(sk: u64, state: &mut ConnState) -> Thread {
    // SAFETY: a valid static; volatile keeps the loader's value from being folded away.
    if unsafe { core::ptr::read_volatile(&TLS_ENABLED) } == 0 {
        return Thread::InsideCall;
    }
    let Some(call) = TLS_CALLS.get_ptr_mut(&bpf_get_current_pid_tgid()) else {
        return Thread::Outside(None);
    };
    // SAFETY: valid map value pointer for the duration of the program.
    let call = unsafe { &mut *call };
    if call.op == tls_call::HELLO_READ || call.op == tls_call::UNTIED_RETURN {
        return Thread::Outside(Some(*call));
    }
    call.sk = sk;
    state.flags |= flags::TLS | flags::TLS_PROBED;
    Thread::InsideCall
}

/// A data syscall made outside any TLS call on connection `sk`: ties a library that works from
/// memory (Node's `TLSWrap`, Python's `SSLObject`: the socket I/O happens between the calls)
/// to its connection at the handshake, when the order on one thread says which `SSL` is whose:
/// a server reads a new connection's ClientHello and next makes the first call on a new `SSL`;
/// a client makes the first call on a new `SSL` (which puts its ClientHello in memory) and next
/// writes a new connection's first bytes. Only those two events back to back tie; anything
/// else in between (another connection's syscall, another call) ends the chance, and that
/// `SSL`'s plaintext stays untied (counted), never tied to a wrong connection. After the tie
/// the `SSL *` names its socket (`TLS_SOCKETS`) for every later call, however the event loop
/// interleaves connections. `hello`: this is the connection's first data event and a TLS
/// handshake record.
#[inline(always)]
pub fn outside_call(sk: u64, dir: u8, hello: bool, pending: Option<TlsCall>) {
    let key = bpf_get_current_pid_tgid();
    match pending {
        None => {
            if hello && dir == direction::INGRESS {
                expect_call(key, sk);
            }
        }
        Some(pending) => {
            if pending.op == tls_call::UNTIED_RETURN && hello && dir == direction::EGRESS {
                tie(pending.ssl, sk, role::CLIENT);
            }
            if pending.op == tls_call::UNTIED_RETURN && hello && dir == direction::INGRESS {
                expect_call(key, sk);
            } else {
                let _ = TLS_CALLS.remove(&key);
            }
        }
    }
}

/// Parks `tls_call::HELLO_READ` for connection `sk` on thread `key`.
#[inline(always)]
fn expect_call(key: u64, sk: u64) {
    let hello = TlsCall {
        ssl: 0,
        buf: 0,
        count_ptr: 0,
        sk,
        op: tls_call::HELLO_READ,
        _pad: 0,
        library: 0,
        _pad2: 0,
    };
    if TLS_CALLS.insert(&key, &hello, 0).is_err() {
        count(stat::MAP_FAIL_BASE + map_id::TLS_CALLS);
    }
}

/// Ties `ssl` to connection `sk` if neither is tied yet and the connection's role is `want`.
#[inline(always)]
fn tie(ssl: u64, sk: u64, want: u8) {
    if TLS_SOCKETS.get_ptr(&ssl).is_some() {
        return;
    }
    let Some(state) = CONNS.get_ptr_mut(&sk) else {
        return;
    };
    // SAFETY: valid map value pointer for the duration of the program.
    let state = unsafe { &mut *state };
    if state.role != want || state.flags & flags::TLS_PROBED != 0 {
        return;
    }
    if TLS_SOCKETS.insert(&ssl, &sk, 0).is_err() {
        count(stat::MAP_FAIL_BASE + map_id::TLS_SOCKETS);
        return;
    }
    state.flags |= flags::TLS | flags::TLS_PROBED;
}

macro_rules! entry_program {
    ($name:ident, $op:expr, $count_arg:expr) => {
        #[uprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            match try_enter(&ctx, $op, $count_arg) {
                Ok(r) | Err(r) => r,
            }
        }
    };
}

// `count_arg`: the argument where an `_ex` call writes its byte count (`size_t *`), 0 when the
// call returns it.
// int SSL_read(SSL *ssl, void *buf, int num)
entry_program!(tls_read_enter, tls_call::READ, 0);
// int SSL_write(SSL *ssl, const void *buf, int num)
entry_program!(tls_write_enter, tls_call::WRITE, 0);
// int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)
entry_program!(tls_read_ex_enter, tls_call::READ, 3);
// int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)
entry_program!(tls_write_ex_enter, tls_call::WRITE, 3);
// int SSL_write_ex2(SSL *s, const void *buf, size_t num, uint64_t flags, size_t *written)
// (OpenSSL 3.3 and newer)
entry_program!(tls_write_ex2_enter, tls_call::WRITE, 4);
// int SSL_do_handshake(SSL *s)
entry_program!(tls_handshake_enter, tls_call::HANDSHAKE, 0);

#[inline(always)]
fn try_enter(ctx: &ProbeContext, op: u8, count_arg: usize) -> Result<u32, u32> {
    let ssl: u64 = ctx.arg(0).ok_or(0u32)?;
    let buf: u64 = if op == tls_call::HANDSHAKE {
        0
    } else {
        ctx.arg(1).ok_or(0u32)?
    };
    let count_ptr: u64 = if count_arg != 0 {
        ctx.arg(count_arg).ok_or(0u32)?
    } else {
        0
    };
    // SAFETY: helper without preconditions on a uprobe context (0 when no cookie was set).
    let library = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u16;
    let call = TlsCall {
        ssl,
        buf,
        count_ptr,
        sk: 0,
        op,
        _pad: 0,
        library,
        _pad2: 0,
    };
    let key = bpf_get_current_pid_tgid();
    // The thread's last event was a server connection's ClientHello, read outside any call:
    // this is the first call on its `SSL` if that `SSL` is tied to nothing yet.
    // SAFETY: the value is copied out at once.
    if let Some(prev) = unsafe { TLS_CALLS.get(&key) }.copied()
        && prev.op == tls_call::HELLO_READ
    {
        tie(ssl, prev.sk, role::SERVER);
    }
    if TLS_CALLS.insert(&key, &call, 0).is_err() {
        count(stat::MAP_FAIL_BASE + map_id::TLS_CALLS);
    }
    Ok(0)
}

/// `void SSL_free(SSL *ssl)`: the `SSL *` is forgotten, so that a later `SSL` object at the
/// same address (a memory-BIO one, say, whose calls make no syscalls) is not tied to this one's
/// socket.
#[uprobe]
pub fn tls_free_enter(ctx: ProbeContext) -> u32 {
    if let Some(ssl) = ctx.arg::<u64>(0) {
        let _ = TLS_SOCKETS.remove(&ssl);
    }
    0
}

/// The return of every probed call.
#[uretprobe]
pub fn tls_return(ctx: RetProbeContext) -> u32 {
    match try_return(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_return(ctx: &RetProbeContext) -> Result<u32, u32> {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { TLS_CALLS.get(&key) }).copied() else {
        count(stat::TLS_UNMATCHED_RETURN);
        return Ok(0);
    };
    let _ = TLS_CALLS.remove(&key);
    let rc = ctx.ret::<u64>() as i32;

    let mut sk = call.sk;
    if sk != 0 {
        if TLS_SOCKETS.insert(&call.ssl, &sk, 0).is_err() {
            count(stat::MAP_FAIL_BASE + map_id::TLS_SOCKETS);
        }
    } else if let Some(known) = TLS_SOCKETS.get_ptr(&call.ssl) {
        // SAFETY: valid map value pointer for the duration of the program.
        sk = unsafe { *known };
    } else {
        // No socket syscall inside and none known: a library working from memory, whose
        // client may write this `SSL`'s ClientHello next (see `outside_call`).
        let untied = TlsCall {
            op: tls_call::UNTIED_RETURN,
            ..call
        };
        if TLS_CALLS.insert(&key, &untied, 0).is_err() {
            count(stat::MAP_FAIL_BASE + map_id::TLS_CALLS);
        }
    }
    if call.op == tls_call::HANDSHAKE {
        return Ok(0);
    }
    let bytes: u64 = if call.count_ptr != 0 {
        if rc != 1 {
            return Ok(0);
        }
        // SAFETY: probe reads of user memory fail cleanly on bad pointers.
        unsafe { bpf_probe_read_user(call.count_ptr as *const u64) }.unwrap_or(0)
    } else if rc > 0 {
        rc as u64
    } else {
        0
    };
    if bytes == 0 {
        return Ok(0);
    }
    if sk == 0 {
        count(stat::TLS_UNTIED);
        return Ok(0);
    }
    send_plaintext(ctx, sk, call.op, call.buf, call.library, bytes)
}

/// Sends `bytes` of plaintext that a call (`op`, one of [`tls_call`]) on library `library` read
/// into or wrote from `buf`, as a data event of connection `sk` (see the module's doc).
#[inline(always)]
pub(crate) fn send_plaintext<C: EbpfContext>(
    ctx: &C,
    sk: u64,
    op: u8,
    buf: u64,
    library: u16,
    bytes: u64,
) -> Result<u32, u32> {
    let key = bpf_get_current_pid_tgid();
    let state = CONNS.get_ptr_mut(&sk);
    // A socket that is not tracked is reported only when it is in the agent's scope.
    if state.is_none() && !in_scope(sk) {
        return Ok(0);
    }

    let scratch = DATA_SCRATCH.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: per-CPU scratch value, valid for the whole program run and not shared (a uprobe
    // runs in process context, like the syscall programs, which it cannot interrupt).
    let scratch = unsafe { &mut *scratch };
    let head = &mut scratch.event.head;
    head.header.kind = kind::DATA;
    head.header._pad = 0;
    head.header.netns = 0;
    head.header.ts_ns = now();
    head.header.sk = sk;
    match state {
        Some(state) => {
            // SAFETY: valid map value pointer for the duration of the program.
            let state = unsafe { &mut *state };
            state.flags |= flags::TLS | flags::TLS_PROBED;
            head.header.role = state.role;
            head.header.flags = state.flags;
            head.header.conn_id = state.conn_id;
            copy_words(&mut head.header.tuple, &state.tuple);
            if state.owner.tgid == (key >> 32) as u32 {
                copy_words(&mut head.header.who, &state.owner);
                head.header.who.tid = key as u32;
            } else {
                current_identity(&mut head.header.who);
            }
            head.seq = u64::from(state.plaintext_events);
            state.plaintext_events = state.plaintext_events.wrapping_add(1);
        }
        None => {
            // The connection reached TCP_CLOSE (its peer hung up) while its process still
            // writes or reads: sent without a connection id, as the syscalls' late bytes are;
            // the agent ties it by socket to the connection's wait after its close.
            head.header.role = role::UNKNOWN;
            head.header.flags = flags::TLS | flags::TLS_PROBED;
            head.header.conn_id = 0;
            let mut tuple = Tuple::ZERO;
            sock_tuple(sk, &mut tuple);
            copy_words(&mut head.header.tuple, &tuple);
            current_identity(&mut head.header.who);
            head.seq = 0;
        }
    }
    head.bytes = bytes;
    let (dir, call_kind) = if op == tls_call::WRITE {
        (direction::EGRESS, syscall::TLS_WRITE)
    } else {
        (direction::INGRESS, syscall::TLS_READ)
    };
    head.direction = dir;
    head.syscall = call_kind;
    head.library = library;
    head.tcp_seq = 0;
    head._pad = 0;

    // An HTTP/2 connection's plaintext is captured whole, as its syscalls are on a plain
    // connection (see `flags::HTTP2`): the first event up to MAX_CAPTURE, the rest in
    // continuation events sent by `tls_continue`.
    let mut http2 = head.header.flags & flags::HTTP2 != 0;
    let mut cap = if http2 {
        MAX_CAPTURE as u64
    } else {
        global!(CONFIG.capture_bytes) as u64
    };
    if cap > MAX_CAPTURE as u64 {
        cap = MAX_CAPTURE as u64;
    }
    if cap > bytes {
        cap = bytes;
    }
    let n = cap as u32 & (MAX_CAPTURE as u32 * 2 - 1);
    let captured = if n == 0 || n as u64 > cap {
        0
    } else {
        // SAFETY: `n <= MAX_CAPTURE` bytes into the payload array; a bad user pointer makes the
        // helper fail without side effects.
        let rc = unsafe {
            probe_read_user_raw(
                scratch.event.payload.as_mut_ptr() as *mut _,
                n,
                buf as *const _,
            )
        };
        if rc == 0 { n } else { 0 }
    };
    scratch.event.head.captured = captured;
    // The client preface in the plaintext (the client's first write, the server's first read
    // after ALPN chose `h2`): from now on the connection's plaintext is captured whole.
    if !http2
        && captured as usize >= HTTP2_PREFACE.len()
        && scratch.event.head.header.conn_id != 0
        && is_http2_preface(&scratch.event.payload)
        && let Some(state) = CONNS.get_ptr_mut(&sk)
    {
        // SAFETY: valid map value pointer for the duration of the program.
        unsafe { (*state).flags |= flags::HTTP2 };
        scratch.event.head.header.flags |= flags::HTTP2;
        http2 = true;
    }
    let more = http2 && captured > 0 && u64::from(captured) < bytes;
    if more {
        scratch.event.head.header.flags |= flags::MORE;
    }

    // A lost event is counted by `send_data`.
    if !send_data(scratch, captured as usize) {
        return Ok(0);
    }
    count_plaintext(library);
    if !more {
        return Ok(0);
    }
    // The rest of an HTTP/2 connection's plaintext, chunk by chunk, in `tls_continue`.
    let Some(cont) = CONTINUATION.get_ptr_mut(0) else {
        return Ok(0);
    };
    // SAFETY: per-CPU value, valid for the whole program run and not shared.
    let cont = unsafe { &mut *cont };
    cont.args = IoArgs {
        sk,
        buf,
        iovcnt: 0,
        syscall: call_kind,
        direction: dir,
        _pad: [0; 6],
    };
    cont.bytes = bytes;
    cont.offset = u64::from(captured);
    cont.iov_index = 0;
    cont.iov_skip = 0;
    cont.chunk = 1;
    cont.flags = scratch.event.head.header.flags & !flags::MORE;
    // SAFETY: a tail call replaces this program with `tls_continue` on the same CPU, which
    // finds the state above; it returns only if the slot is empty (counted).
    unsafe { TLS_TAIL.tail_call(ctx, 0) };
    // Only reached when the tail call failed.
    end_uncaptured(scratch, sk, cont.flags, bytes - u64::from(captured));
    Ok(0)
}

/// Counts one plaintext event sent for library `library` (the attach cookie).
#[inline(always)]
pub(crate) fn count_plaintext(library: u16) {
    if let Some(counter) = TLS_PLAINTEXT.get_ptr_mut(u32::from(library)) {
        // SAFETY: a valid per-CPU map value; uprobes run in process context and cannot nest on
        // one CPU with another run of these programs.
        unsafe { *counter += 1 };
    }
}

/// Slot 0: `tls_continue`, installed by the agent at load time. Apart from the syscalls'
/// `TAIL`: a program array holds programs of one type (these are uprobe programs).
#[map]
pub static TLS_TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Sends the next chunk of an HTTP/2 connection's plaintext whose first event `tls_return`
/// sent, then tail-calls itself for the next one (the same body as the syscalls'
/// `data_continue`).
#[uprobe]
pub fn tls_continue(ctx: ProbeContext) -> u32 {
    match continue_capture(&ctx, &TLS_TAIL) {
        Ok(r) | Err(r) => r,
    }
}
