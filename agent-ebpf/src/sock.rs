//! Reading kernel structures at offsets the agent resolved from BTF (see `maps::OFFSETS`).

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
    generated::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_current_task_btf, bpf_task_pt_regs,
    },
};
use meshtap_common::{AF_INET6, Identity, Tuple};

use crate::maps::global;

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

/// The `struct sock *` behind file descriptor `fd` of the current task, if it is an IPv4/IPv6
/// TCP socket: `task->files->fdt->fd[fd]`, checked to be a socket inode, then
/// `file->private_data` (`struct socket`) `->sk`. Works for sockets opened before the agent.
///
/// This runs on every read and write of every process, so it makes as few probe reads as it
/// can (each is a helper call): `fdtable.max_fds` and `fdtable.fd` are read together, and so are
/// `sock.sk_type` and `sock.sk_protocol`, when the kernel lays them out next to each other (the
/// checks are on load-time constants). The address family is not read: a SOCK_STREAM socket
/// whose protocol is IPPROTO_TCP exists only in AF_INET and AF_INET6 (the other families refuse
/// protocol 6 at socket()).
#[inline(always)]
pub fn tcp_sock_of_fd(fd: u64) -> Option<u64> {
    sock_of_fd(fd).filter(|&sk| is_tcp(sk))
}

/// The `struct sock *` behind file descriptor `fd`, of any socket type (see [`tcp_sock_of_fd`]).
/// The data programs look the socket up among the tracked connections first, which are all
/// TCP, and check the type only of one they do not know.
#[inline(always)]
pub fn sock_of_fd(fd: u64) -> Option<u64> {
    // SAFETY: helper without preconditions; the result is only dereferenced via probe reads.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, global!(OFFSETS.task_files))?;
    let fdt: u64 = read(files, global!(OFFSETS.files_fdt))?;
    let (max_fds, fd_array) = if global!(OFFSETS.fdt_fd) == global!(OFFSETS.fdt_max_fds) + 8 {
        // `unsigned int max_fds` (then 4 bytes of padding), `struct file **fd`.
        let pair: [u64; 2] = read(fdt, global!(OFFSETS.fdt_max_fds))?;
        (pair[0] as u32, pair[1])
    } else {
        (
            read::<u32>(fdt, global!(OFFSETS.fdt_max_fds))?,
            read::<u64>(fdt, global!(OFFSETS.fdt_fd))?,
        )
    };
    if fd >= max_fds as u64 {
        return None;
    }
    let file: u64 = read(fd_array, (fd * 8) as u32)?;
    if file == 0 {
        return None;
    }
    let inode: u64 = read(file, global!(OFFSETS.file_inode))?;
    let mode: u16 = read(inode, global!(OFFSETS.inode_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: u64 = read(file, global!(OFFSETS.file_private_data))?;
    let sk: u64 = read(socket, global!(OFFSETS.socket_sk))?;
    (sk != 0).then_some(sk)
}

/// Whether `sk` is a TCP socket (SOCK_STREAM, IPPROTO_TCP).
#[inline(always)]
pub fn is_tcp(sk: u64) -> bool {
    let kind = if global!(OFFSETS.sk_protocol) == global!(OFFSETS.sk_type) + 2 {
        read::<u32>(sk, global!(OFFSETS.sk_type)).map(|both| (both as u16, (both >> 16) as u16))
    } else {
        read::<u16>(sk, global!(OFFSETS.sk_type)).zip(read::<u16>(sk, global!(OFFSETS.sk_protocol)))
    };
    kind == Some((SOCK_STREAM, IPPROTO_TCP))
}

/// The first three arguments of the current syscall, from the user registers the task saved on
/// entry (`task_pt_regs`): a `sys_exit_*` program gets them without a `sys_enter_*` program
/// parking them in a map. The kernel does not change these saved registers during a syscall;
/// only the return value register is written on exit.
#[inline(always)]
pub fn syscall_args() -> Option<[u64; 3]> {
    // SAFETY: helpers without preconditions; `bpf_task_pt_regs` takes the BTF task pointer the
    // first one returns, and its result is only read with probe reads.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return None;
    }
    let (a0, a1, a2) = (
        global!(OFFSETS.regs_arg0),
        global!(OFFSETS.regs_arg1),
        global!(OFFSETS.regs_arg2),
    );
    if a1 == a2 + 8 && a0 == a1 + 8 {
        // x86_64 saves dx, si, di in that order: one read.
        let [dx, si, di]: [u64; 3] = read(regs, a2)?;
        Some([di, si, dx])
    } else {
        Some([read(regs, a0)?, read(regs, a1)?, read(regs, a2)?])
    }
}

/// `sk->sk_state` (TCP_* values from include/net/tcp_states.h).
#[inline(always)]
pub fn sock_state(sk: u64) -> u8 {
    read(sk, global!(OFFSETS.sk_state)).unwrap_or(0)
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
    // SAFETY: helpers without preconditions.
    let task = unsafe { bpf_get_current_task() };
    who.start_ns = read::<u64>(task, global!(OFFSETS.task_group_leader))
        .and_then(|leader| read::<u64>(leader, global!(OFFSETS.task_start_boottime)))
        .unwrap_or(0);
    // SAFETY: as above.
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
