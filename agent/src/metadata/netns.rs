//! Network namespaces: the inode of a namespace file (`--netns`), and the local addresses of a
//! namespace, read through a process inside it.
//!
//! The addresses tell whether a remote address is a namespace on this node (a container, a test
//! host) so that a wildcard listener there can name the server of a connection to that address.

use std::{
    collections::HashSet,
    fs::File,
    io,
    net::{IpAddr, Ipv6Addr},
    os::fd::AsRawFd as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

/// A network namespace the agent is scoped to: the file it was named by and its inode, the
/// `ns.inum` the kernel programs compare each socket's namespace with.
///
/// It holds the file open: an open nsfs file keeps its namespace alive, so that the inode, which
/// the kernel hands out again once a namespace is freed (`proc_alloc_inum`), cannot come to name
/// another namespace (a later pod's) while the agent runs.
#[derive(Debug, Clone)]
pub struct NetnsFile {
    pub path: PathBuf,
    pub inode: u32,
    _hold: Arc<File>,
}

impl PartialEq for NetnsFile {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.inode == other.inode
    }
}

/// Why a path does not name a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsFileError {
    #[error("cannot open it ({source})")]
    Open {
        #[source]
        source: io::Error,
    },
    #[error("it is not a namespace file")]
    NotNamespace,
    #[error("it is a namespace file, but not of a network namespace")]
    OtherType,
    #[error("its inode {inode} is out of the range of namespace inodes")]
    Inode { inode: u64 },
}

/// `NS_GET_NSTYPE` (include/uapi/linux/nsfs.h: `_IO(0xb7, 0x3)`): the `CLONE_NEW*` type of the
/// namespace a nsfs file refers to (Linux 4.11).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Resolves a network namespace file (`/run/netns/<name>`, a bind mount of it, or
/// `/proc/<pid>/ns/net`) to the namespace's inode, which is what `stat` reports of an nsfs file
/// and what the kernel stores as `net->ns.inum`.
pub fn netns_file(path: &Path) -> Result<NetnsFile, NetnsFileError> {
    let file = File::open(path).map_err(|source| NetnsFileError::Open { source })?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd, which `file` keeps open.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind < 0 {
        return Err(NetnsFileError::NotNamespace);
    }
    if kind != libc::CLONE_NEWNET {
        return Err(NetnsFileError::OtherType);
    }
    let inode = file
        .metadata()
        .map_err(|source| NetnsFileError::Open { source })?
        .ino();
    Ok(NetnsFile {
        path: path.to_path_buf(),
        inode: u32::try_from(inode).map_err(|_| NetnsFileError::Inode { inode })?,
        _hold: Arc::new(file),
    })
}

/// Addresses owned by the network namespace of process `tgid`: IPv4 `/32 host LOCAL` entries of
/// `/proc/<tgid>/net/fib_trie` and the IPv6 addresses of `/proc/<tgid>/net/if_inet6`. Empty when
/// the process is gone (the caller simply learns nothing).
pub fn netns_addresses(proc_root: &Path, tgid: u32) -> HashSet<IpAddr> {
    let base = proc_root.join(tgid.to_string()).join("net");
    let mut out = HashSet::new();
    if let Ok(text) = std::fs::read_to_string(base.join("fib_trie")) {
        out.extend(parse_fib_trie(&text));
    }
    if let Ok(text) = std::fs::read_to_string(base.join("if_inet6")) {
        out.extend(parse_if_inet6(&text));
    }
    out
}

/// Local IPv4 addresses from `/proc/net/fib_trie`: a `|-- a.b.c.d` leaf followed by a
/// `/32 host LOCAL` line (net/ipv4/fib_trie.c, fib_trie_seq_show).
pub fn parse_fib_trie(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut last: Option<IpAddr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.trim().parse().ok();
        } else if line.starts_with("/32 host LOCAL")
            && let Some(ip) = last
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// IPv6 addresses from `/proc/net/if_inet6`: 32 hex digits, then index, prefix, scope, flags,
/// device name (net/ipv6/addrconf.c, if6_seq_show).
pub fn parse_if_inet6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let hex = line.split_whitespace().next()?;
            if hex.len() != 32 {
                return None;
            }
            let value = u128::from_str_radix(hex, 16).ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(value)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.200.1.0/24 2 0 2
        |-- 10.200.1.0
           /24 link UNICAST
        |-- 10.200.1.2
           /32 host LOCAL
        |-- 10.200.1.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
        |-- 10.200.1.2
           /32 host LOCAL
";

    #[test]
    fn fib_trie_local_addresses() {
        let got = parse_fib_trie(FIB_TRIE);
        assert_eq!(
            got,
            vec![
                "10.200.1.2".parse::<IpAddr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn if_inet6_addresses_and_garbage() {
        let text = "fd002000000100000000000000000002 03 40 00 80 veth1\n\
                    00000000000000000000000000000001 01 80 10 80       lo\n\
                    zz 01\n";
        let got = parse_if_inet6(text);
        assert_eq!(
            got,
            vec![
                "fd00:2000:1::2".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn netns_file_gives_the_namespace_inode() {
        let own = netns_file(Path::new("/proc/self/ns/net")).unwrap();
        let link = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_eq!(link.to_str().unwrap(), format!("net:[{}]", own.inode));
        assert_eq!(own.path, Path::new("/proc/self/ns/net"));
    }

    #[test]
    fn netns_file_refuses_what_is_not_a_network_namespace() {
        assert!(matches!(
            netns_file(Path::new("/nonexistent/meshtap/netns")),
            Err(NetnsFileError::Open { .. })
        ));
        assert!(matches!(
            netns_file(Path::new("/proc/self/status")),
            Err(NetnsFileError::NotNamespace)
        ));
        assert!(matches!(
            netns_file(Path::new("/proc/self/ns/mnt")),
            Err(NetnsFileError::OtherType)
        ));
    }

    #[test]
    fn own_namespace_has_loopback() {
        let got = netns_addresses(Path::new("/proc"), std::process::id());
        assert!(
            got.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()),
            "{got:?}"
        );
    }
}
