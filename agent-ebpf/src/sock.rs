//! Reading kernel structures at offsets the agent resolved from BTF (see `maps::OFFSETS`).

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
    generated::{bpf_get_current_cgroup_id, bpf_get_current_task_btf, bpf_task_pt_regs},
};
use meshtap_common::{AF_INET6, Identity, Tuple};

use crate::maps::{NETNS_ALLOWED, global};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;
const IPPROTO_TCP: u16 = 6;

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
fn read<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copes with any address: a bad one returns an error.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// Loads a `T` at `base + off`, where `base` is a BTF-typed kernel pointer: the current task
/// from `bpf_get_current_task_btf`, its saved registers from `bpf_task_pt_regs`, or a pointer
/// member loaded from one of those with this function. `off` is a load-time constant (a frozen
/// `.rodata` global), so the verifier checks the access against the kernel's BTF and the JIT
/// emits one guarded load (a fault reads as zero) instead of a `bpf_probe_read_kernel` call.
/// Members that are not pointers to structs (`fdtable.fd`, `file.private_data`) load as plain
/// numbers; what they point to is read with [`read`].
#[inline(always)]
fn load<T: Copy>(base: u64, off: u32) -> T {
    // SAFETY: see above; the verifier rejects the program if `base` is not a BTF pointer or the
    // access does not match a member of its type, and the JIT guards the load against faults.
    unsafe { core::ptr::read_volatile((base as *const u8).add(off as usize).cast::<T>()) }
}

/// The current task as a BTF-typed pointer (see [`load`]).
#[inline(always)]
fn current_task() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task_btf() as u64 }
}

/// The `struct sock *` behind file descriptor `fd` of the current task, if it is an IPv4/IPv6
/// TCP socket: `task->files->fdt->fd[fd]`, checked to be a socket inode, then
/// `file->private_data` (`struct socket`) `->sk`. Works for sockets opened before the agent.
/// The address family is not read: a SOCK_STREAM socket whose protocol is IPPROTO_TCP exists
/// only in AF_INET and AF_INET6 (the other families refuse protocol 6 at socket()).
#[inline(always)]
pub fn tcp_sock_of_fd(fd: u64) -> Option<u64> {
    sock_of_fd(fd)
        .filter(|s| s.is_socket_inode() && is_tcp(s.sk))
        .map(|s| s.sk)
}

/// What [`sock_of_fd`] found behind a file descriptor.
#[derive(Clone, Copy)]
pub struct FdSocket {
    /// `socket->sk`.
    pub sk: u64,
    /// `file->f_inode`, for [`FdSocket::is_socket_inode`].
    inode: u64,
}

impl FdSocket {
    /// Whether the file's inode is a socket inode: the definite test, one probe read.
    /// [`sock_of_fd`] only checks the socket's back-pointer to the file, which is enough to look
    /// the socket up among the tracked connections (all TCP sockets) but not to start tracking.
    #[inline(always)]
    pub fn is_socket_inode(&self) -> bool {
        read::<u16>(self.inode, global!(OFFSETS.inode_mode))
            .is_some_and(|mode| mode & S_IFMT == S_IFSOCK)
    }
}

/// The `struct sock *` behind file descriptor `fd`, if the file's `private_data` is a
/// `struct socket` pointing back at the file (see [`FdSocket::is_socket_inode`] for the
/// definite test, and [`tcp_sock_of_fd`]).
///
/// This runs on every read and write of every process. The first links of the walk (task,
/// files, fdtable) are BTF loads; the rest are three probe reads: the file pointer, then
/// `private_data` and `f_inode` together, then the socket's `file` and `sk` together, when the
/// kernel lays them out next to each other (checked on load-time constants).
#[inline(always)]
pub fn sock_of_fd(fd: u64) -> Option<FdSocket> {
    let files: u64 = load(current_task(), global!(OFFSETS.task_files));
    let fdt: u64 = load(files, global!(OFFSETS.files_fdt));
    // `files_struct.fdt` is `__rcu`: where the kernel's BTF carries that tag, the verifier
    // wants the loaded pointer checked for NULL before it is offset.
    if fdt == 0 {
        return None;
    }
    let max_fds: u32 = load(fdt, global!(OFFSETS.fdt_max_fds));
    if fd >= max_fds as u64 {
        return None;
    }
    let fd_array: u64 = load(fdt, global!(OFFSETS.fdt_fd));
    let file: u64 = read(fd_array, (fd * 8) as u32)?;
    if file == 0 {
        return None;
    }
    let (private_data, inode) = pair(
        file,
        global!(OFFSETS.file_private_data),
        global!(OFFSETS.file_inode),
    )?;
    let (back, sk) = pair(
        private_data,
        global!(OFFSETS.socket_file),
        global!(OFFSETS.socket_sk),
    )?;
    (back == file && sk != 0).then_some(FdSocket { sk, inode })
}

/// Two pointer members of the struct at `base`: one probe read when they are adjacent.
#[inline(always)]
fn pair(base: u64, first: u32, second: u32) -> Option<(u64, u64)> {
    if second == first + 8 {
        let [a, b]: [u64; 2] = read(base, first)?;
        Some((a, b))
    } else if first == second + 8 {
        let [b, a]: [u64; 2] = read(base, second)?;
        Some((a, b))
    } else {
        Some((read(base, first)?, read(base, second)?))
    }
}

/// Whether `sk` is a TCP socket (SOCK_STREAM, IPPROTO_TCP).
#[inline(always)]
pub fn is_tcp(sk: u64) -> bool {
    let (type_off, protocol_off) = (global!(OFFSETS.sk_type), global!(OFFSETS.sk_protocol));
    // Both are u16: read them together when they share a 4-byte word (either order).
    let kind = if protocol_off == type_off + 2 {
        read::<u32>(sk, type_off).map(|both| (both as u16, (both >> 16) as u16))
    } else if type_off == protocol_off + 2 {
        read::<u32>(sk, protocol_off).map(|both| ((both >> 16) as u16, both as u16))
    } else {
        read::<u16>(sk, type_off).zip(read::<u16>(sk, protocol_off))
    };
    kind == Some((SOCK_STREAM, IPPROTO_TCP))
}

/// The first three arguments of the current syscall, from the user registers the task saved on
/// entry (`task_pt_regs`): a `sys_exit_*` program gets them without a `sys_enter_*` program
/// parking them in a map. The kernel does not change these saved registers during a syscall;
/// only the return value register is written on exit. The last item is where the registers
/// are, for [`syscall_arg3`].
#[inline(always)]
pub fn syscall_args() -> Option<([u64; 3], u64)> {
    // SAFETY: `bpf_task_pt_regs` takes the BTF task pointer and returns a BTF `pt_regs`
    // pointer, read with `load`.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return None;
    }
    Some((
        [
            load(regs, global!(OFFSETS.regs_arg0)),
            load(regs, global!(OFFSETS.regs_arg1)),
            load(regs, global!(OFFSETS.regs_arg2)),
        ],
        regs,
    ))
}

/// The fourth argument of the current syscall (`recvfrom`'s flags), from the registers
/// [`syscall_args`] found.
#[inline(always)]
pub fn syscall_arg3(regs: u64) -> u64 {
    load(regs, global!(OFFSETS.regs_arg3))
}

/// `sk->sk_state` (TCP_* values from include/net/tcp_states.h).
#[inline(always)]
pub fn sock_state(sk: u64) -> u8 {
    read(sk, global!(OFFSETS.sk_state)).unwrap_or(0)
}

/// The TCP sequence number of the first of the `bytes` a syscall that just returned moved:
/// `tcp_sk(sk)->write_seq` after a write (the next byte to queue), `copied_seq` after a read
/// (the next byte to read), minus `bytes`. 0 if it cannot be read.
#[inline(always)]
pub fn tcp_first_seq(sk: u64, egress: bool, bytes: u64) -> u32 {
    let off = if egress {
        global!(OFFSETS.tcp_write_seq)
    } else {
        global!(OFFSETS.tcp_copied_seq)
    };
    read::<u32>(sk, off).map_or(0, |next| next.wrapping_sub(bytes as u32))
}

/// `inet_sk(sk)->inet_sport`, host order.
#[inline(always)]
pub fn sock_sport(sk: u64) -> u16 {
    u16::from_be(read(sk, global!(OFFSETS.inet_sport)).unwrap_or(0))
}

/// `sk->sk_protocol`.
#[inline(always)]
pub fn sock_protocol(sk: u64) -> u16 {
    read(sk, global!(OFFSETS.sk_protocol)).unwrap_or(0)
}

/// `sk->sk_err`, the error a failed connect leaves behind (set before TCP_CLOSE by
/// tcp_done_with_error, net/ipv4/tcp_input.c).
#[inline(always)]
pub fn sock_err(sk: u64) -> u32 {
    read::<i32>(sk, global!(OFFSETS.sk_err)).unwrap_or(0) as u32
}

/// The socket's 4-tuple, local end first.
#[inline(always)]
pub fn sock_tuple(sk: u64, tuple: &mut Tuple) {
    let family: u16 = read(sk, global!(OFFSETS.sk_family)).unwrap_or(0);
    tuple.family = family;
    tuple.local_port = read(sk, global!(OFFSETS.sk_num)).unwrap_or(0);
    tuple.remote_port = u16::from_be(read(sk, global!(OFFSETS.sk_dport)).unwrap_or(0));
    if family == AF_INET6 {
        tuple.local_addr = read(sk, global!(OFFSETS.sk_v6_rcv_saddr)).unwrap_or([0; 16]);
        tuple.remote_addr = read(sk, global!(OFFSETS.sk_v6_daddr)).unwrap_or([0; 16]);
    } else {
        let local: [u8; 4] = read(sk, global!(OFFSETS.sk_rcv_saddr)).unwrap_or([0; 4]);
        let remote: [u8; 4] = read(sk, global!(OFFSETS.sk_daddr)).unwrap_or([0; 4]);
        tuple.local_addr = [0; 16];
        tuple.remote_addr = [0; 16];
        tuple.local_addr[..4].copy_from_slice(&local);
        tuple.remote_addr[..4].copy_from_slice(&remote);
    }
}

/// The current thread and its process.
#[inline(always)]
pub fn current_identity(who: &mut Identity) {
    let pid_tgid = bpf_get_current_pid_tgid();
    who.tgid = (pid_tgid >> 32) as u32;
    who.tid = pid_tgid as u32;
    let leader: u64 = load(current_task(), global!(OFFSETS.task_group_leader));
    who.start_ns = load(leader, global!(OFFSETS.task_start_boottime));
    // SAFETY: helper without preconditions.
    who.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    who.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// The network namespace inode of the socket (`sk->skc_net.net->ns.inum`).
#[inline(always)]
pub fn sock_netns(sk: u64) -> u32 {
    read::<u64>(sk, global!(OFFSETS.sk_net))
        .and_then(|net| read::<u32>(net, global!(OFFSETS.net_inum)))
        .unwrap_or(0)
}

/// Whether `sk` belongs to the agent's scope: always when no `--netns` was given (one load of a
/// frozen global and one branch, which the verifier folds away), else when the socket's network
/// namespace is one of `NETNS_ALLOWED`. Checked where a socket would start being tracked or
/// reported without being tracked; tracked sockets were checked when they were first seen.
#[inline(always)]
pub fn in_scope(sk: u64) -> bool {
    if global!(CONFIG.netns_filter) == 0 {
        return true;
    }
    let netns = sock_netns(sk);
    // SAFETY: the value is only tested for presence, never read.
    unsafe { NETNS_ALLOWED.get(&netns) }.is_some()
}
