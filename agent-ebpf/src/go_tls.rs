//! Go's `crypto/tls`: uprobes on `(*Conn).Read`, `(*Conn).Write`, `(*Conn).clientHandshake` and
//! `(*Conn).serverHandshake` in an executable built with Go 1.17 or newer on x86-64 (the register ABI).
//!
//! Go moves goroutine stacks, so a uretprobe (which rewrites the return address on the stack)
//! would break the program: the agent attaches [`go_tls_return`] at each `RET` instruction of
//! `Read` and `Write` instead, found by decoding their machine code. A goroutine can move to
//! another thread while it waits inside `Read`, so the call in flight is keyed by process and
//! goroutine (`g`, which the register ABI keeps in R14), not by thread.
//!
//! The connection comes from the `*tls.Conn` itself, not from the syscalls the call makes (a
//! `Read` served from Go's record buffer makes none, and a goroutine parked on the poller
//! makes its syscall on whatever thread resumes it): `tls.Conn.conn` (a `net.Conn` interface,
//! the struct's first field) holds a `*net.TCPConn`, whose first word is its `*net.netFD`,
//! whose first field is a `poll.FD` with `Sysfd` at offset 16 (a `fdMutex` of 16 bytes before
//! it). Those layouts have not changed since Go 1.9. The interface's dynamic type is checked
//! first: its `itab`'s type hash (offset 16) must be that of `*net.TCPConn` in this executable
//! (`GO_TCP_ITAB_HASH`, read by the agent from the `go:itab.*net.TCPConn,net.Conn` symbol), so
//! that a `tls.Conn` over anything else (a Unix socket, a wrapper) is never read as one. The
//! file descriptor then leads to the socket through the task's file table, as for a syscall.
//!
//! `clientHandshake` and `serverHandshake` run once per connection, before its first handshake
//! byte moves: they mark the connection [`flags::TLS`] | [`flags::TLS_PROBED`], so that its
//! ciphertext only counts bytes from the first record on, as OpenSSL's calls do. (Not
//! `handshakeContext`, which every `Read` and `Write` calls: a uprobe costs a trap.)

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::{Array, LruHashMap},
    programs::ProbeContext,
};
use meshtap_common::{MAX_TLS_LIBRARIES, TlsCall, flags, map_id, stat, tls_call};

use crate::{
    maps::{CONNS, count},
    sock::tcp_sock_of_fd,
    tls::send_plaintext,
};

/// `crypto/tls` calls in flight, keyed by `[tgid, g]`. LRU: a goroutine that never returns (its
/// program exited inside a call) leaves its entry to be evicted.
#[map]
pub static GO_CALLS: LruHashMap<[u64; 2], TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// Per executable (the attach cookie): the type hash in `*net.TCPConn`'s `net.Conn` itab, 0 when
/// the executable has no such itab symbol (then no `tls.Conn` of it is read as a TCP one).
#[map]
pub static GO_TCP_ITAB_HASH: Array<u32> = Array::with_max_entries(MAX_TLS_LIBRARIES, 0);

/// `poll.FD.Sysfd`, behind its `fdMutex` (`state uint64; rsema, wsema uint32`).
const SYSFD_OFFSET: u64 = 16;
/// `itab.hash`, after `inter` and `_type`.
const ITAB_HASH_OFFSET: u64 = 16;

/// The registers of the Go register ABI (x86-64) this module reads.
struct GoRegs {
    /// RAX: the receiver (`*tls.Conn`) at entry, the first result (`n int`) at return.
    rax: u64,
    /// RBX: the slice's data pointer at entry.
    rbx: u64,
    /// RCX: the slice's length at entry.
    rcx: u64,
    /// R14: the current goroutine, `g`.
    r14: u64,
}

#[inline(always)]
fn regs(ctx: &ProbeContext) -> GoRegs {
    // SAFETY: the context of a uprobe program is the task's saved user registers; the verifier
    // allows reading its fields directly.
    unsafe {
        let r = &*ctx.regs;
        GoRegs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            r14: r.r14,
        }
    }
}

/// The attach cookie: the executable's index in the agent's table of probed files.
#[inline(always)]
fn library(ctx: &ProbeContext) -> u16 {
    // SAFETY: helper without preconditions on a uprobe context (0 when no cookie was set).
    unsafe { aya_ebpf::helpers::generated::bpf_get_attach_cookie(ctx.as_ptr()) as u16 }
}

/// The TCP socket under a `*tls.Conn` of executable `library` (see the module's doc), 0 if none.
#[inline(always)]
fn conn_socket(conn: u64, library: u16) -> u64 {
    let Some(&want) = GO_TCP_ITAB_HASH.get(u32::from(library)) else {
        return 0;
    };
    if want == 0 {
        return 0;
    }
    // SAFETY (all reads below): probe reads of user memory fail cleanly on bad pointers.
    let Ok(itab) = (unsafe { bpf_probe_read_user(conn as *const u64) }) else {
        return 0;
    };
    if itab == 0 {
        return 0;
    }
    let Ok(hash) = (unsafe { bpf_probe_read_user((itab + ITAB_HASH_OFFSET) as *const u32) }) else {
        return 0;
    };
    if hash != want {
        return 0;
    }
    let Ok(tcp_conn) = (unsafe { bpf_probe_read_user((conn + 8) as *const u64) }) else {
        return 0;
    };
    if tcp_conn == 0 {
        return 0;
    }
    let Ok(net_fd) = (unsafe { bpf_probe_read_user(tcp_conn as *const u64) }) else {
        return 0;
    };
    if net_fd == 0 {
        return 0;
    }
    let Ok(fd) = (unsafe { bpf_probe_read_user((net_fd + SYSFD_OFFSET) as *const i64) }) else {
        return 0;
    };
    if fd < 0 {
        return 0;
    }
    tcp_sock_of_fd(fd as u64).unwrap_or(0)
}

/// Marks tracked connection `sk` as one whose plaintext comes from the probes.
#[inline(always)]
fn mark_probed(sk: u64) -> bool {
    match CONNS.get_ptr_mut(&sk) {
        Some(state) => {
            // SAFETY: valid map value pointer for the duration of the program.
            unsafe { (*state).flags |= flags::TLS | flags::TLS_PROBED };
            true
        }
        None => false,
    }
}

// func (c *Conn) Read(b []byte) (int, error)
#[uprobe]
pub fn go_tls_read_enter(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    let library = library(&ctx);
    let sk = conn_socket(r.rax, library);
    if sk != 0 {
        mark_probed(sk);
    }
    let call = TlsCall {
        ssl: r.rax,
        buf: r.rbx,
        count_ptr: 0,
        sk,
        op: tls_call::READ,
        _pad: 0,
        library,
        _pad2: 0,
    };
    let key = [bpf_get_current_pid_tgid() >> 32, r.r14];
    if GO_CALLS.insert(&key, &call, 0).is_err() {
        count(stat::MAP_FAIL_BASE + map_id::GO_CALLS);
    }
    0
}

/// `func (c *Conn) Write(b []byte) (int, error)`: the plaintext is sent at the entry, whole
/// (`Write` writes all of `b` or fails the connection). At the return it would race the reply:
/// the goroutine reading the connection can get the peer's answer, and send it, before the
/// writing goroutine reaches its `RET`, and a reply seen before its request pairs with nothing.
#[uprobe]
pub fn go_tls_write_enter(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    let library = library(&ctx);
    let sk = conn_socket(r.rax, library);
    if r.rcx == 0 || r.rcx > i64::MAX as u64 {
        return 0;
    }
    if sk == 0 {
        count(stat::TLS_UNTIED);
        return 0;
    }
    mark_probed(sk);
    match send_plaintext(&ctx, sk, tls_call::WRITE, r.rbx, library, r.rcx) {
        Ok(r) | Err(r) => r,
    }
}

// func (c *Conn) clientHandshake(ctx context.Context) (err error)
// func (c *Conn) serverHandshake(ctx context.Context) error
#[uprobe]
pub fn go_tls_handshake_enter(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    let sk = conn_socket(r.rax, library(&ctx));
    if sk != 0 {
        mark_probed(sk);
    }
    0
}

/// Attached at every `RET` of `Read`: `n` is in RAX.
#[uprobe]
pub fn go_tls_return(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    let key = [bpf_get_current_pid_tgid() >> 32, r.r14];
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { GO_CALLS.get(&key) }).copied() else {
        count(stat::TLS_UNMATCHED_RETURN);
        return 0;
    };
    let _ = GO_CALLS.remove(&key);
    let n = r.rax as i64;
    if n <= 0 {
        return 0;
    }
    if call.sk == 0 {
        count(stat::TLS_UNTIED);
        return 0;
    }
    match send_plaintext(&ctx, call.sk, call.op, call.buf, call.library, n as u64) {
        Ok(r) | Err(r) => r,
    }
}
