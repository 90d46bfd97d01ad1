//! Resolves [`KernelOffsets`]: every kernel struct member the eBPF programs read, looked up at
//! load time in this kernel's BTF, with each size checked.
//!
//! The programs read these members with `bpf_probe_read_kernel` at the offsets given here and a
//! size fixed in their code; a member that changed size or became a bitfield would be misread
//! silently, so a mismatch fails loading with the member's name instead.

use meshtap_common::KernelOffsets;

use super::btf::{BtfError, KernelBtf};

/// Kernel pointers as the eBPF programs read them (BPF is a 64-bit machine).
const POINTER: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("cannot resolve kernel member `{path}`")]
    Member {
        path: &'static str,
        #[source]
        source: BtfError,
    },
    #[error(
        "kernel member `{path}` is {actual} bytes where meshtap reads {expected}; this kernel's layout is not supported"
    )]
    MemberSize {
        path: &'static str,
        expected: u32,
        actual: u32,
    },
    #[error(
        "kernel member `{path}` is a {bits}-bit bitfield where meshtap reads a {expected}-byte field; this kernel's layout is not supported"
    )]
    MemberBitfield {
        path: &'static str,
        bits: u32,
        expected: u32,
    },
}

/// Fills every field of [`KernelOffsets`] from `btf`.
pub fn resolve(btf: &KernelBtf) -> Result<KernelOffsets, OffsetsError> {
    let member = |path, size| member(btf, path, size);
    // No `..Default::default()`: a field added to `KernelOffsets` must fail to compile here
    // rather than reach the programs as offset 0.
    Ok(KernelOffsets {
        // From the current task to a socket's 4-tuple: task->files->fdt->fd[fd] -> file
        // ->private_data (struct socket) -> sk -> __sk_common. Structs from include/linux/
        // {sched,fdtable,fs,net}.h and include/net/sock.h.
        task_files: member("task_struct.files", POINTER)?,
        task_group_leader: member("task_struct.group_leader", POINTER)?,
        task_start_boottime: member("task_struct.start_boottime", 8)?,
        files_fdt: member("files_struct.fdt", POINTER)?,
        fdt_max_fds: member("fdtable.max_fds", 4)?,
        fdt_fd: member("fdtable.fd", POINTER)?,
        file_inode: member("file.f_inode", POINTER)?,
        file_private_data: member("file.private_data", POINTER)?,
        inode_mode: member("inode.i_mode", 2)?,
        socket_sk: member("socket.sk", POINTER)?,
        socket_file: member("socket.file", POINTER)?,
        sk_family: member("sock.__sk_common.skc_family", 2)?,
        sk_state: member("sock.__sk_common.skc_state", 1)?,
        sk_daddr: member("sock.__sk_common.skc_daddr", 4)?,
        sk_rcv_saddr: member("sock.__sk_common.skc_rcv_saddr", 4)?,
        sk_dport: member("sock.__sk_common.skc_dport", 2)?,
        sk_num: member("sock.__sk_common.skc_num", 2)?,
        sk_v6_daddr: member("sock.__sk_common.skc_v6_daddr", 16)?,
        sk_v6_rcv_saddr: member("sock.__sk_common.skc_v6_rcv_saddr", 16)?,
        // sk_type and sk_protocol were bitfields of one u32 before Linux 5.6 (include/net/sock.h);
        // the size and bitfield checks turn such a kernel into a clear error.
        sk_type: member("sock.sk_type", 2)?,
        sk_protocol: member("sock.sk_protocol", 2)?,
        sk_err: member("sock.sk_err", 4)?,
        // `possible_net_t` wraps the `struct net *` only with CONFIG_NET_NS (include/net/
        // net_namespace.h); naming its `net` member makes a kernel without it fail here.
        sk_net: member("sock.__sk_common.skc_net.net", POINTER)?,
        net_inum: member("net.ns.inum", 4)?,
        inet_sport: member("inet_sock.inet_sport", 2)?,
        // The syscall argument registers as saved on entry (arch/x86/include/asm/ptrace.h;
        // the x86_64 syscall ABI passes arguments 0-3 in rdi, rsi, rdx, r10).
        regs_arg0: member("pt_regs.di", 8)?,
        regs_arg1: member("pt_regs.si", 8)?,
        regs_arg2: member("pt_regs.dx", 8)?,
        // include/linux/tcp.h; a `struct sock *` of a TCP socket is its `tcp_sock`.
        tcp_write_seq: member("tcp_sock.write_seq", 4)?,
        tcp_copied_seq: member("tcp_sock.copied_seq", 4)?,
        regs_arg3: member("pt_regs.r10", 8)?,
    })
}

/// Offset of the member at `path`, which must be a plain (non-bitfield) `size`-byte field.
fn member(btf: &KernelBtf, path: &'static str, size: u32) -> Result<u32, OffsetsError> {
    let member = btf
        .member(path)
        .map_err(|source| OffsetsError::Member { path, source })?;
    if let Some(bits) = member.bitfield_bits {
        return Err(OffsetsError::MemberBitfield {
            path,
            bits,
            expected: size,
        });
    }
    if member.size != size {
        return Err(OffsetsError::MemberSize {
            path,
            expected: size,
            actual: member.size,
        });
    }
    Ok(member.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root to mount tracefs if it is not mounted yet (tests run as root here).
    #[test]
    fn resolves_on_this_kernel() {
        let btf = KernelBtf::from_sys_fs().unwrap();
        let offsets = resolve(&btf).unwrap();
        println!("{offsets:#?}");

        // Layout facts that hold on every supported kernel.
        assert_eq!(
            offsets.sk_family, 16,
            "skc_family follows three 8/4/4-byte unions"
        );
        assert_eq!(offsets.sk_rcv_saddr, offsets.sk_daddr + 4);
        assert_eq!(offsets.sk_num, offsets.sk_dport + 2);
        assert_eq!(offsets.sk_state, offsets.sk_family + 2);
        assert_eq!(offsets.sk_v6_rcv_saddr, offsets.sk_v6_daddr + 16);

        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        if release.trim() != "6.18.44-fc-v782" {
            eprintln!("kernel {release:?} is not the platform kernel: exact offsets not checked");
            return;
        }
        // Cross-checked with `bpftool btf dump file /sys/kernel/btf/vmlinux format raw` and the
        // tracefs format files on 6.18.44-fc-v782.
        let expected = [
            (offsets.task_files, 1824),
            (offsets.task_group_leader, 1328),
            (offsets.task_start_boottime, 1560),
            (offsets.files_fdt, 32),
            (offsets.fdt_max_fds, 0),
            (offsets.fdt_fd, 8),
            (offsets.file_inode, 32),
            (offsets.file_private_data, 24),
            (offsets.inode_mode, 0),
            (offsets.socket_sk, 24),
            (offsets.socket_file, 16),
            (offsets.sk_family, 16),
            (offsets.sk_state, 18),
            (offsets.sk_daddr, 0),
            (offsets.sk_rcv_saddr, 4),
            (offsets.sk_dport, 12),
            (offsets.sk_num, 14),
            (offsets.sk_v6_daddr, 56),
            (offsets.sk_v6_rcv_saddr, 72),
            (offsets.sk_type, 534),
            (offsets.sk_protocol, 532),
            (offsets.sk_err, 284),
            (offsets.sk_net, 48),
            (offsets.net_inum, 176),
            (offsets.inet_sport, 814),
            (offsets.regs_arg0, 112),
            (offsets.regs_arg1, 104),
            (offsets.regs_arg2, 96),
            (offsets.tcp_write_seq, 1576),
            (offsets.tcp_copied_seq, 1464),
            (offsets.regs_arg3, 56),
        ];
        let (actual, expected): (Vec<u32>, Vec<u32>) = expected.into_iter().unzip();
        assert_eq!(actual, expected);
    }

    #[test]
    fn size_mismatch_names_the_member() {
        let btf = KernelBtf::from_sys_fs().unwrap();
        let err = member(&btf, "sock.sk_protocol", 1).unwrap_err();
        assert!(matches!(
            err,
            OffsetsError::MemberSize {
                path: "sock.sk_protocol",
                expected: 1,
                actual: 2
            }
        ));
        assert_eq!(
            err.to_string(),
            "kernel member `sock.sk_protocol` is 2 bytes where meshtap reads 1; this kernel's layout is not supported"
        );
        // skc_reuse is `unsigned char skc_reuse:4` (byte aligned, so BTF resolves it).
        assert!(matches!(
            member(&btf, "sock_common.skc_reuse", 1),
            Err(OffsetsError::MemberBitfield { bits: 4, .. })
        ));
        let err = member(&btf, "sock.no_such_member", 4).unwrap_err();
        assert!(matches!(
            err,
            OffsetsError::Member {
                path: "sock.no_such_member",
                ..
            }
        ));
    }
}
