//! Process and socket facts read from procfs: which process listens on which TCP address, and
//! what a process is called.
//!
//! Everything here reads a live system. Processes exit between the listing of `/proc` and the
//! read of their files, and other users' entries are not ours to read: those entries are skipped
//! without an error. The text is parsed as untrusted input and no parser panics on it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};

/// `TCP_LISTEN` from `include/net/tcp_states.h`, printed as `%02X` in the `st` column.
const TCP_LISTEN: u8 = 0x0A;
/// The environment variable that OpenTelemetry SDKs read the service name from.
const OTEL_SERVICE_NAME: &[u8] = b"OTEL_SERVICE_NAME";
/// Most of `/proc/<pid>/environ` that is read. The environment can be megabytes.
const ENVIRON_READ_LIMIT: usize = 64 * 1024;
/// `comm` is at most 16 bytes (`TASK_COMM_LEN`), but workqueue kthreads show up to 64.
const COMM_READ_LIMIT: usize = 256;
/// A stat line is about 52 numbers plus the comm. This cap is generous.
const STAT_READ_LIMIT: usize = 4096;

/// Errors while reading procfs.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The procfs root could not be listed: wrong path, or procfs not mounted there.
    #[error("failed to list procfs root {path}")]
    ListRoot {
        path: PathBuf,
        #[source]
        io_error: io::Error,
    },
    /// The process exited (or never existed) before its files could be read.
    #[error("process {tgid} is gone: {path}")]
    ProcessGone {
        tgid: u32,
        path: PathBuf,
        #[source]
        io_error: io::Error,
    },
    /// A procfs file exists but could not be read (for example, permission denied).
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        io_error: io::Error,
    },
    /// A procfs file was read but does not have the expected format.
    #[error("malformed {path}: {reason}")]
    Malformed { path: PathBuf, reason: &'static str },
}

/// One TCP socket in LISTEN state and one process that holds a descriptor for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The local address. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are reported as IPv4.
    pub addr: SocketAddr,
    pub tgid: u32,
    pub comm: String,
    /// Inode of the socket's network namespace (the `4026531840` in `net:[4026531840]`). This
    /// is the namespace whose TCP table lists the socket. It can differ from the holder's
    /// current namespace when the socket was created before `setns` or received over a unix
    /// socket.
    pub netns: u64,
}

/// The result of [`scan_listeners`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerScan {
    /// At most `max` listeners, ordered by tgid and then by socket inode.
    pub listeners: Vec<Listener>,
    /// Listeners that were found but not returned because `max` was reached.
    pub skipped: usize,
}

/// Lists every TCP socket in LISTEN state in every network namespace that has a process, with
/// each process that holds the socket.
///
/// A socket held by several processes (for example, a pre-fork server) appears once per
/// holder. A listening socket that no visible process holds is not reported. Processes that
/// exit during the scan, and entries that we may not read, are skipped. Only a missing or
/// unreadable `proc_root` is an error.
///
/// The scan reads each namespace's `net/tcp` and `net/tcp6` once. Socket inodes are unique
/// across the machine (sockfs), so one inode map serves every namespace. Then it resolves
/// `fd/*` links of every process.
///
/// # Errors
///
/// [`ProcError::ListRoot`] when `proc_root` cannot be listed.
pub fn scan_listeners(proc_root: &Path, max: usize) -> Result<ListenerScan, ProcError> {
    let tgids = list_tgids(proc_root)?;

    // Pass 1: socket inode -> (local address, netns), one table read per namespace. Holders
    // are resolved in a second pass because a process can hold a socket of a namespace that
    // only a later pid leads to.
    let mut tables_read: HashSet<u64> = HashSet::new();
    let mut listening: HashMap<u64, (SocketAddr, u64)> = HashMap::new();
    for &tgid in &tgids {
        let pid_dir = proc_root.join(tgid.to_string());
        let Some(netns) = read_netns(&pid_dir) else {
            continue;
        };
        // If this pid exits before its tables are read, the next pid in the namespace retries.
        if !tables_read.contains(&netns) && read_listen_tables(&pid_dir, netns, &mut listening) {
            tables_read.insert(netns);
        }
    }

    // Pass 2: which processes hold those sockets.
    let mut scan = ListenerScan::default();
    if listening.is_empty() {
        return Ok(scan);
    }
    for &tgid in &tgids {
        let pid_dir = proc_root.join(tgid.to_string());
        let held = held_sockets(&pid_dir, &listening);
        if held.is_empty() {
            continue;
        }
        let comm_path = pid_dir.join("comm");
        let comm = match read_comm(&comm_path) {
            Ok(comm) => comm,
            Err(e) => {
                note_skipped(&comm_path, &e);
                continue;
            }
        };
        for inode in held {
            let Some(&(addr, netns)) = listening.get(&inode) else {
                continue;
            };
            if scan.listeners.len() < max {
                scan.listeners.push(Listener {
                    addr,
                    tgid,
                    comm: comm.clone(),
                    netns,
                });
            } else {
                scan.skipped += 1;
            }
        }
    }
    Ok(scan)
}

/// Names and start time of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub tgid: u32,
    /// `/proc/<pid>/comm` without its trailing newline. The kernel truncates it to 15 bytes.
    pub comm: String,
    /// The file name of the executable, without a trailing ` (deleted)`. It is `None` for kernel
    /// threads, for exited processes that are not yet reaped, and when we may not read the link.
    pub exe_name: Option<String>,
    /// Field 22 of `/proc/<pid>/stat`: the start time since boot, in clock ticks
    /// ([`clock_ticks_per_second`]). Use it with the tgid to tell a reused pid from the original
    /// process. [`boottime_ns_to_ticks`] converts the kernel's `task->start_boottime` to this
    /// unit.
    pub start_ticks: u64,
    /// `OTEL_SERVICE_NAME` from the environment the process was started with (`environ` does not
    /// show later `setenv` calls). Empty values count as unset. It is `None` when we may not read
    /// the environment (another user's process without `CAP_SYS_PTRACE`).
    pub env_service_name: Option<String>,
}

/// Reads [`ProcessInfo`] for `tgid` from `proc_root` (normally `/proc`).
///
/// The tgid is not checked to be a thread group leader: `/proc/<tid>` of a thread also resolves,
/// and it then describes that thread.
///
/// # Errors
///
/// [`ProcError::ProcessGone`] when the process has exited, [`ProcError::Read`] when `comm` or
/// `stat` cannot be read, and [`ProcError::Malformed`] when `stat` has no start time.
pub fn process_info(proc_root: &Path, tgid: u32) -> Result<ProcessInfo, ProcError> {
    let pid_dir = proc_root.join(tgid.to_string());

    let comm_path = pid_dir.join("comm");
    let comm = read_comm(&comm_path).map_err(|e| process_read_error(tgid, comm_path, e))?;

    let stat_path = pid_dir.join("stat");
    let (stat, _) = read_bounded(&stat_path, STAT_READ_LIMIT)
        .map_err(|e| process_read_error(tgid, stat_path.clone(), e))?;
    let start_ticks =
        parse_stat_start_ticks(&String::from_utf8_lossy(&stat)).ok_or(ProcError::Malformed {
            path: stat_path,
            reason: "no numeric starttime (field 22) after the last ')'",
        })?;

    // Both are optional facts: kernel threads have no exe, and other users' environ needs
    // ptrace access. Neither makes the required facts above wrong. The environment first: a
    // process that exits meanwhile loses both with its memory map, its environment reading
    // empty. Read second, the environment could be lost while the executable was not, and the
    // executable's name would then wrongly beat OTEL_SERVICE_NAME; in this order a late exit
    // only loses the executable, and the name then falls back past it.
    let environ_path = pid_dir.join("environ");
    let env_service_name = match read_bounded(&environ_path, ENVIRON_READ_LIMIT) {
        Ok((environ, truncated)) => environ_value(&environ, truncated, OTEL_SERVICE_NAME),
        Err(e) => {
            note_skipped(&environ_path, &e);
            None
        }
    };
    let exe_path = pid_dir.join("exe");
    let exe_name = match fs::read_link(&exe_path) {
        Ok(target) => exe_file_name(&target),
        Err(e) => {
            note_skipped(&exe_path, &e);
            None
        }
    };

    Ok(ProcessInfo {
        tgid,
        comm,
        exe_name,
        start_ticks,
        env_service_name,
    })
}

/// Clock ticks per second (`USER_HZ`): the unit of `/proc/<pid>/stat` times. It is 100 on every
/// architecture Linux supports today, and that value is the fallback if `sysconf` fails.
#[must_use]
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads the constant it is given and has no memory-safety
    // preconditions. _SC_CLK_TCK is a valid name on every libc that the libc crate supports.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

/// Converts a boot-based time in nanoseconds (the kernel's `task->start_boottime`, as an eBPF
/// program reads it) to the unit of `/proc/<pid>/stat` field 22, given `hz` =
/// [`clock_ticks_per_second`].
///
/// This mirrors `nsec_to_clock_t` (kernel/time/time.c), which `do_task_stat` (fs/proc/array.c)
/// applies to `start_boottime`. For the usual `USER_HZ` = 100 it truncates: `ns / 10_000_000`.
/// The other branches only matter for `USER_HZ` values that do not divide 10^9.
///
/// Since Linux 5.6, procfs first adds the reader's time-namespace boottime offset. An agent in
/// the initial time namespace, which is the normal case, sees no offset.
#[must_use]
pub fn boottime_ns_to_ticks(ns: u64, hz: u64) -> u64 {
    const NSEC_PER_SEC: u64 = 1_000_000_000;
    if hz == 0 {
        return 0;
    }
    if NSEC_PER_SEC.is_multiple_of(hz) {
        return ns / (NSEC_PER_SEC / hz);
    }
    // The kernel computes the next two in u64. u128 gives the same result until the kernel
    // itself would overflow, which is decades of uptime.
    let ticks = if hz.is_multiple_of(512) {
        u128::from(ns) * u128::from(hz) / 512 / u128::from(NSEC_PER_SEC / 512)
    } else {
        let divisor = (9 * u128::from(NSEC_PER_SEC) + u128::from(hz / 2)) / u128::from(hz);
        (u128::from(ns) * 9).checked_div(divisor).unwrap_or(0)
    };
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// Numeric entries of `proc_root`, ascending. These are the thread group leaders.
fn list_tgids(proc_root: &Path) -> Result<Vec<u32>, ProcError> {
    let list_error = |io_error| ProcError::ListRoot {
        path: proc_root.to_path_buf(),
        io_error,
    };
    let mut tgids = Vec::new();
    for entry in fs::read_dir(proc_root).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        if let Some(tgid) = entry.file_name().to_str().and_then(parse_decimal_u32) {
            tgids.push(tgid);
        }
    }
    tgids.sort_unstable();
    Ok(tgids)
}

/// The inode of the process's network namespace, or `None` when we cannot read it.
fn read_netns(pid_dir: &Path) -> Option<u64> {
    let path = pid_dir.join("ns").join("net");
    match fs::read_link(&path) {
        Ok(target) => parse_bracketed_inode(target.to_str()?, "net:["),
        Err(e) => {
            note_skipped(&path, &e);
            None
        }
    }
}

/// Adds the LISTEN sockets of `pid_dir/net/tcp` and `tcp6` to `listening`. It returns whether
/// the tables were read. A missing `tcp6` counts as read, because IPv6 can be disabled.
fn read_listen_tables(
    pid_dir: &Path,
    netns: u64,
    listening: &mut HashMap<u64, (SocketAddr, u64)>,
) -> bool {
    let net_dir = pid_dir.join("net");
    for (file, family) in [("tcp", Family::V4), ("tcp6", Family::V6)] {
        let path = net_dir.join(file);
        let result = read_listen_table(&path, family, |inode, addr| {
            listening.insert(inode, (addr, netns));
        });
        if let Err(e) = result {
            let ipv6_disabled = family == Family::V6 && e.kind() == io::ErrorKind::NotFound;
            if !ipv6_disabled {
                note_skipped(&path, &e);
                return false;
            }
        }
    }
    true
}

/// Streams one `/proc/net/tcp{,6}` table. The table can hold millions of rows, so only the
/// LISTEN rows are kept.
fn read_listen_table(
    path: &Path,
    family: Family,
    mut on_listener: impl FnMut(u64, SocketAddr),
) -> io::Result<()> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            continue;
        };
        if let Some((inode, addr)) = parse_listen_row(text, family) {
            on_listener(inode, addr);
        }
    }
}

/// Inodes in `listening` that the process holds descriptors for, ascending and without
/// duplicates (`dup`ed descriptors share a socket).
fn held_sockets(pid_dir: &Path, listening: &HashMap<u64, (SocketAddr, u64)>) -> Vec<u64> {
    let fd_dir = pid_dir.join("fd");
    let entries = match fs::read_dir(&fd_dir) {
        Ok(entries) => entries,
        Err(e) => {
            note_skipped(&fd_dir, &e);
            return Vec::new();
        }
    };
    let mut held = Vec::new();
    for entry in entries {
        // A descriptor closed between readdir and readlink is a normal race.
        let Ok(entry) = entry else {
            continue;
        };
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let inode = target
            .to_str()
            .and_then(|t| parse_bracketed_inode(t, "socket:["));
        if let Some(inode) = inode.filter(|inode| listening.contains_key(inode)) {
            held.push(inode);
        }
    }
    held.sort_unstable();
    held.dedup();
    held
}

fn read_comm(path: &Path) -> io::Result<String> {
    let (comm, _) = read_bounded(path, COMM_READ_LIMIT)?;
    let comm = String::from_utf8_lossy(&comm);
    Ok(comm.strip_suffix('\n').unwrap_or(&comm).to_owned())
}

/// Reads at most `limit` bytes. The flag tells whether the file had more bytes.
fn read_bounded(path: &Path, limit: usize) -> io::Result<(Vec<u8>, bool)> {
    let take = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut bytes = Vec::new();
    File::open(path)?.take(take).read_to_end(&mut bytes)?;
    let truncated = bytes.len() > limit;
    bytes.truncate(limit);
    Ok((bytes, truncated))
}

/// Maps an I/O error on a required file of `tgid` to an error.
fn process_read_error(tgid: u32, path: PathBuf, io_error: io::Error) -> ProcError {
    if is_gone(&io_error) {
        ProcError::ProcessGone {
            tgid,
            path,
            io_error,
        }
    } else {
        ProcError::Read { path, io_error }
    }
}

/// The entry went away: the process exited (ENOENT, or ESRCH from some links) or the
/// descriptor was closed.
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Skips an entry that could not be read. Races and permission errors are expected during a
/// scan, so they are not logged. Anything else is logged at debug level.
fn note_skipped(path: &Path, e: &io::Error) {
    if !is_gone(e) && e.kind() != io::ErrorKind::PermissionDenied {
        log::debug!("skipping {}: {e}", path.display());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// Parses one row of `/proc/net/tcp{,6}` (`tcp4_seq_show`/`tcp6_seq_show` in
/// `net/ipv4/tcp_ipv4.c` and `net/ipv6/tcp_ipv6.c`). It returns `(socket inode, local address)` for
/// a LISTEN row and `None` for the header, other states, and malformed rows:
///
/// ```text
///    0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000  0 12345 ...
///    sl local_address rem_address   st tx_queue:rx_queue  tr:tm->when retrnsmt  uid  timeout inode
/// ```
fn parse_listen_row(row: &str, family: Family) -> Option<(u64, SocketAddr)> {
    let mut fields = row.split_ascii_whitespace();
    fields.next()?.strip_suffix(':')?;
    let local = fields.next()?;
    let _remote = fields.next()?;
    let state = fields.next()?;
    if state.len() != 2 || parse_hex_u32(state)? != u32::from(TCP_LISTEN) {
        return None;
    }
    // After `st`: tx:rx, tr:when, retrnsmt, uid, timeout, inode.
    let inode = parse_decimal_u64(fields.nth(5)?)?;
    if inode == 0 {
        return None;
    }
    Some((inode, parse_socket_addr(local, family)?))
}

/// Parses `ADDR:PORT` from a TCP table. The port is `%04X` of the host-order port. The address
/// is the raw network-order bytes printed as host-order 32-bit words with `%08X`: one word for
/// IPv4 and four for IPv6. So on little-endian hosts each word reads byte-reversed.
fn parse_socket_addr(text: &str, family: Family) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    if port.is_empty() || port.len() > 4 {
        return None;
    }
    let port = u16::try_from(parse_hex_u32(port)?).ok()?;
    match family {
        Family::V4 => {
            let word = parse_hex_word(addr)?;
            let ip = Ipv4Addr::from(word.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        Family::V6 => {
            if addr.len() != 32 {
                return None;
            }
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                let word = parse_hex_word(addr.get(i * 8..i * 8 + 8)?)?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            let ip = Ipv6Addr::from(bytes);
            // A dual-stack socket bound to ::ffff:a.b.c.d only ever sees IPv4 peers.
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
            })
        }
    }
}

/// Exactly eight hex digits.
fn parse_hex_word(text: &str) -> Option<u32> {
    if text.len() == 8 {
        parse_hex_u32(text)
    } else {
        None
    }
}

/// Hex digits only. `from_str_radix` alone would accept a leading `+`.
fn parse_hex_u32(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// Decimal digits only: no sign and no whitespace.
fn parse_decimal_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_decimal_u32(text: &str) -> Option<u32> {
    u32::try_from(parse_decimal_u64(text)?).ok()
}

/// Parses `socket:[12345]` or `net:[4026531840]`, given the prefix up to and including `[`.
fn parse_bracketed_inode(link: &str, prefix: &str) -> Option<u64> {
    parse_decimal_u64(link.strip_prefix(prefix)?.strip_suffix(']')?)
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`. Field 2 is the comm in parentheses. The comm
/// may itself contain spaces, parentheses, and newlines, so fields are counted after the *last*
/// `)`. The kernel prints that `)` right after the comm, and no later field contains one.
fn parse_stat_start_ticks(stat: &str) -> Option<u64> {
    let (head, rest) = stat.rsplit_once(')')?;
    head.split_once('(')?;
    // `rest` starts at field 3 (state), so field 22 is token 22 - 3.
    parse_decimal_u64(rest.split_ascii_whitespace().nth(22 - 3)?)
}

/// The file name of a `/proc/<pid>/exe` link target. The kernel appends ` (deleted)` when the
/// binary was replaced or removed after exec (`d_path` in `fs/d_path.c`).
fn exe_file_name(target: &Path) -> Option<String> {
    let target = target.to_string_lossy();
    let target = target.strip_suffix(" (deleted)").unwrap_or(&target);
    let name = Path::new(target)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    (!name.is_empty()).then_some(name)
}

/// The value of `key` in a NUL-separated `environ` block. The first occurrence wins, as with
/// `getenv`. When the read was `truncated`, the last entry may be cut, so it is ignored.
fn environ_value(environ: &[u8], truncated: bool, key: &[u8]) -> Option<String> {
    let mut entries: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
    if truncated {
        entries.pop();
    }
    let value = entries
        .into_iter()
        .find_map(|entry| entry.strip_prefix(key)?.strip_prefix(b"="))?;
    (!value.is_empty()).then(|| String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::unix::fs::symlink;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// `/proc/net/tcp` from a little-endian host: 127.0.0.1:8080 LISTEN, 0.0.0.0:22 LISTEN, and
    /// an ESTABLISHED 127.0.0.1:8080 <- 127.0.0.1:51234 connection that must be ignored.
    const TCP_GOLDEN: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41001 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41002 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C822 01 00000000:00000000 00:00000000 00000000  1000        0 41003 1 0000000000000000 20 4 30 10 -1
";

    /// `/proc/net/tcp6` from a little-endian host: `[::]:9090` LISTEN, `[::1]:6379` LISTEN,
    /// `[::ffff:127.0.0.1]:7070` LISTEN (must be reported as IPv4), `[2001:db8::1]:443` LISTEN,
    /// and an ESTABLISHED `[::1]:6379 <- [::1]:40000` connection that must be ignored.
    const TCP6_GOLDEN: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:2382 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 42001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:18EB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 42002 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1B9E 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 42003 1 0000000000000000 100 0 0 10 0
   3: B80D0120000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42004 1 0000000000000000 100 0 0 10 0
   4: 00000000000000000000000001000000:18EB 00000000000000000000000001000000:9C40 01 00000000:00000000 00:00000000 00000000   999        0 42005 1 0000000000000000 20 4 30 10 -1
";

    /// A stat line whose comm is `a) b` (printed as `(a) b)`), with starttime 987654 at
    /// field 22.
    const STAT_GOLDEN: &str = "4242 (a) b) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 987654 \
         8704000 512 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 3 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    fn parse_table(text: &str, family: Family) -> Vec<(u64, SocketAddr)> {
        text.lines()
            .filter_map(|row| parse_listen_row(row, family))
            .collect()
    }

    fn sock(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn tcp_golden_keeps_listen_rows_only() {
        assert_eq!(
            parse_table(TCP_GOLDEN, Family::V4),
            [(41001, sock("127.0.0.1:8080")), (41002, sock("0.0.0.0:22"))]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn tcp6_golden_keeps_listen_rows_and_unmaps_ipv4() {
        let rows = parse_table(TCP6_GOLDEN, Family::V6);
        assert_eq!(
            rows,
            [
                (42001, sock("[::]:9090")),
                (42002, sock("[::1]:6379")),
                (42003, sock("127.0.0.1:7070")),
                (42004, sock("[2001:db8::1]:443")),
            ]
        );
        assert!(
            rows[2].1.is_ipv4(),
            "::ffff:127.0.0.1 must be reported as IPv4"
        );
    }

    #[test]
    fn malformed_rows_are_rejected_without_panicking() {
        let rows = [
            "",
            ":",
            "0:",
            "   0: 0100007F:1F90",
            "   0: 0100007F:1F90 00000000:0000 0A",
            "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0",
            "   0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 +41001",
            "   0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 0",
            "   0: 0100007F:1F90 00000000:0000 +A 0:0 0:0 0 0 0 41001",
            "   0: +100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 41001",
            "   0: 0100007F:+F90 00000000:0000 0A 0:0 0:0 0 0 0 41001",
            "   0: 0100007F:11F90 00000000:0000 0A 0:0 0:0 0 0 0 41001",
            "   0: 0100007F: 00000000:0000 0A 0:0 0:0 0 0 0 41001",
            "   0: 0100007F 00000000:0000 0A 0:0 0:0 0 0 0 41001",
            "   0: 0100007G:1F90 00000000:0000 0A 0:0 0:0 0 0 0 41001",
            "   0: é100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 41001",
            "   0: 0000000000000000000000000100000é:18EB 0:0 0A 0:0 0:0 0 0 0 42002",
        ];
        for row in rows {
            assert_eq!(parse_listen_row(row, Family::V4), None, "{row:?}");
            assert_eq!(parse_listen_row(row, Family::V6), None, "{row:?}");
        }
        // An IPv4 address in the IPv6 table, and the reverse, are rejected too.
        assert_eq!(parse_table(TCP_GOLDEN, Family::V6), []);
        assert_eq!(parse_table(TCP6_GOLDEN, Family::V4), []);
    }

    #[test]
    fn stat_golden_counts_fields_after_the_last_paren() {
        assert_eq!(parse_stat_start_ticks(STAT_GOLDEN), Some(987_654));
        let nested = STAT_GOLDEN.replace("(a) b)", "((x) (y) 1 2 3 4 5 6 7 8 9 10 11 12 13 14)");
        assert_eq!(parse_stat_start_ticks(&nested), Some(987_654));
        let newline = STAT_GOLDEN.replace("(a) b)", "(a\n) b)");
        assert_eq!(parse_stat_start_ticks(&newline), Some(987_654));
    }

    #[test]
    fn malformed_stat_is_rejected_without_panicking() {
        for stat in [
            "",
            ")",
            "(",
            "4242 (x",
            "4242 x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
            "4242 (x) S 1 2",
            "4242 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -5",
            "4242 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 99999999999999999999999",
        ] {
            assert_eq!(parse_stat_start_ticks(stat), None, "{stat:?}");
        }
    }

    #[test]
    fn exe_names() {
        let name = |target: &str| exe_file_name(Path::new(target));
        assert_eq!(name("/usr/bin/envoy"), Some("envoy".to_owned()));
        assert_eq!(name("/app/server (deleted)"), Some("server".to_owned()));
        assert_eq!(name("/opt/my app/run me"), Some("run me".to_owned()));
        assert_eq!(name("/"), None);
        assert_eq!(name(""), None);
        assert_eq!(name(" (deleted)"), None);
    }

    #[test]
    fn environ_values() {
        let env = b"PATH=/bin\0OTEL_SERVICE_NAMEX=no\0OTEL_SERVICE_NAME=checkout\0OTEL_SERVICE_NAME=second\0";
        assert_eq!(
            environ_value(env, false, OTEL_SERVICE_NAME),
            Some("checkout".to_owned())
        );
        assert_eq!(
            environ_value(b"OTEL_SERVICE_NAME=\0", false, OTEL_SERVICE_NAME),
            None
        );
        assert_eq!(
            environ_value(b"OTEL_SERVICE_NAME", false, OTEL_SERVICE_NAME),
            None
        );
        assert_eq!(environ_value(b"", false, OTEL_SERVICE_NAME), None);
        // The last entry of a truncated read may be cut, so it does not count.
        assert_eq!(
            environ_value(b"A=1\0OTEL_SERVICE_NAME=chec", true, OTEL_SERVICE_NAME),
            None
        );
        assert_eq!(
            environ_value(b"OTEL_SERVICE_NAME=a=b\0X", true, OTEL_SERVICE_NAME),
            Some("a=b".to_owned())
        );
    }

    #[test]
    fn boottime_conversion_mirrors_nsec_to_clock_t() {
        assert_eq!(boottime_ns_to_ticks(0, 100), 0);
        assert_eq!(boottime_ns_to_ticks(9_999_999, 100), 0);
        assert_eq!(boottime_ns_to_ticks(10_000_000, 100), 1);
        assert_eq!(boottime_ns_to_ticks(123_459_999_999, 100), 12_345);
        assert_eq!(boottime_ns_to_ticks(u64::MAX, 100), u64::MAX / 10_000_000);
        assert_eq!(boottime_ns_to_ticks(1_500_000_000, 1000), 1_500);
        // USER_HZ = 1024 (alpha): x * 1024 / 512 / 1953125.
        assert_eq!(boottime_ns_to_ticks(1_000_000_000, 1024), 1024);
        // USER_HZ = 60: x * 9 / ((9e9 + 30) / 60).
        assert_eq!(boottime_ns_to_ticks(1_000_000_000, 60), 60);
        assert_eq!(boottime_ns_to_ticks(1_000_000_000, 0), 0);
        assert_eq!(boottime_ns_to_ticks(u64::MAX, u64::MAX), 0);
    }

    /// A fake procfs tree, removed on drop even when the test fails.
    struct FakeProc {
        root: PathBuf,
    }

    impl FakeProc {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let root = std::env::temp_dir().join(format!(
                "meshtap-fake-proc-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            Self { root }
        }

        fn pid_dir(&self, pid: u32) -> PathBuf {
            let dir = self.root.join(pid.to_string());
            fs::create_dir_all(dir.join("fd")).unwrap();
            fs::create_dir_all(dir.join("ns")).unwrap();
            fs::create_dir_all(dir.join("net")).unwrap();
            dir
        }

        fn process(&self, pid: u32, comm: &str, netns: u64, sockets: &[u64]) -> PathBuf {
            let dir = self.pid_dir(pid);
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            symlink(format!("net:[{netns}]"), dir.join("ns/net")).unwrap();
            symlink("/dev/null", dir.join("fd/0")).unwrap();
            symlink("pipe:[77]", dir.join("fd/1")).unwrap();
            for (fd, inode) in (3..).zip(sockets) {
                symlink(format!("socket:[{inode}]"), dir.join(format!("fd/{fd}"))).unwrap();
            }
            dir
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    const NS_A: u64 = 4_026_531_840;
    const NS_B: u64 = 4_026_532_001;
    const NS_C: u64 = 4_026_532_002;

    fn table_row(slot: u32, local: &str, state: &str, inode: u64) -> String {
        format!(
            "{slot:4}: {local} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
        )
    }

    /// The fake machine used by the scan tests. The expected scan is in the assertions.
    fn fake_machine() -> FakeProc {
        let fake = FakeProc::new();
        let header = TCP_GOLDEN.lines().next().unwrap();

        // Namespace A, read through pid 100: 127.0.0.1:8080 (inode 1001), an ESTABLISHED socket
        // (1002), [::]:9090 (2001), and [::ffff:10.0.0.1]:7070 (2002).
        let p100 = fake.process(100, "api", NS_A, &[1001, 2001, 1002, 1001]);
        let tcp = format!(
            "{header}\n{}{}",
            table_row(0, "0100007F:1F90", "0A", 1001),
            table_row(1, "0100007F:1F90", "01", 1002)
        );
        fs::write(p100.join("net/tcp"), tcp).unwrap();
        let tcp6 = format!(
            "{header}\n{}{}",
            table_row(0, "00000000000000000000000000000000:2382", "0A", 2001),
            table_row(1, "0000000000000000FFFF00000100000A:1B9E", "0A", 2002)
        );
        fs::write(p100.join("net/tcp6"), tcp6).unwrap();

        // Also namespace A. Its tables differ on purpose (1003 listens only here). A scan that
        // read namespace A twice would report 1003.
        let p200 = fake.process(200, "worker", NS_A, &[2002, 1003]);
        let tcp = format!("{header}\n{}", table_row(0, "0100007F:0050", "0A", 1003));
        fs::write(p200.join("net/tcp"), tcp).unwrap();

        // Namespace B, with no tcp6 (IPv6 disabled). Pid 300 also holds 1001 of namespace A,
        // received over a unix socket.
        let p300 = fake.process(300, "nginx", NS_B, &[3001, 1001]);
        let tcp = format!("{header}\n{}", table_row(0, "00000000:0050", "0A", 3001));
        fs::write(p300.join("net/tcp"), tcp).unwrap();

        // Exited before its namespace link was read.
        fake.pid_dir(400);
        // Exited after pass 1: its comm is gone.
        let p500 = fake.process(500, "gone", NS_A, &[1001]);
        fs::remove_file(p500.join("comm")).unwrap();

        // Namespace C: pid 600 exited before its tables were read, so pid 700 is read instead.
        fake.process(600, "early", NS_C, &[]);
        let p700 = fake.process(700, "late", NS_C, &[4001]);
        let tcp = format!("{header}\n{}", table_row(0, "0101A8C0:0BB8", "0A", 4001));
        fs::write(p700.join("net/tcp"), tcp).unwrap();

        // Not processes.
        fs::create_dir_all(fake.root.join("sys")).unwrap();
        fs::write(fake.root.join("uptime"), "1.0 1.0\n").unwrap();
        symlink("100", fake.root.join("self")).unwrap();
        fake
    }

    fn listener(addr: &str, tgid: u32, comm: &str, netns: u64) -> Listener {
        Listener {
            addr: sock(addr),
            tgid,
            comm: comm.to_owned(),
            netns,
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn scan_of_fake_proc_finds_every_holder_once() {
        let fake = fake_machine();
        let scan = scan_listeners(&fake.root, 100).unwrap();
        assert_eq!(
            scan.listeners,
            [
                listener("127.0.0.1:8080", 100, "api", NS_A),
                listener("[::]:9090", 100, "api", NS_A),
                listener("10.0.0.1:7070", 200, "worker", NS_A),
                listener("127.0.0.1:8080", 300, "nginx", NS_A),
                listener("0.0.0.0:80", 300, "nginx", NS_B),
                listener("192.168.1.1:3000", 700, "late", NS_C),
            ]
        );
        assert_eq!(scan.skipped, 0);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn scan_stops_at_max_and_counts_the_rest() {
        let fake = fake_machine();
        let scan = scan_listeners(&fake.root, 4).unwrap();
        assert_eq!(scan.listeners.len(), 4);
        assert_eq!(
            scan.listeners[3],
            listener("127.0.0.1:8080", 300, "nginx", NS_A)
        );
        assert_eq!(scan.skipped, 2);

        let scan = scan_listeners(&fake.root, 0).unwrap();
        assert_eq!(scan.listeners, []);
        assert_eq!(scan.skipped, 6);
    }

    #[test]
    fn missing_proc_root_is_an_error() {
        let fake = FakeProc::new();
        let missing = fake.root.join("nope");
        let err = scan_listeners(&missing, 10).unwrap_err();
        assert!(
            matches!(&err, ProcError::ListRoot { path, io_error }
                if *path == missing && io_error.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("failed to list procfs root {}", missing.display())
        );
    }

    #[test]
    fn process_info_of_fake_proc() {
        let fake = FakeProc::new();
        let dir = fake.process(4242, "a) b", NS_A, &[]);
        fs::write(dir.join("stat"), STAT_GOLDEN).unwrap();
        symlink("/srv/app/checkout-svc (deleted)", dir.join("exe")).unwrap();
        fs::write(
            dir.join("environ"),
            b"HOME=/\0OTEL_SERVICE_NAME=checkout\0LANG=C\0",
        )
        .unwrap();
        let info = process_info(&fake.root, 4242).unwrap();
        assert_eq!(
            info,
            ProcessInfo {
                tgid: 4242,
                comm: "a) b".to_owned(),
                exe_name: Some("checkout-svc".to_owned()),
                start_ticks: 987_654,
                env_service_name: Some("checkout".to_owned()),
            }
        );

        // Optional facts missing (a kernel thread): still a result.
        let dir = fake.process(2, "kthreadd", NS_A, &[]);
        fs::write(dir.join("stat"), STAT_GOLDEN).unwrap();
        let info = process_info(&fake.root, 2).unwrap();
        assert_eq!((info.exe_name, info.env_service_name), (None, None));

        // Malformed stat.
        let dir = fake.process(3, "bad", NS_A, &[]);
        fs::write(dir.join("stat"), "3 (bad) S 1 2 3\n").unwrap();
        let err = process_info(&fake.root, 3).unwrap_err();
        assert!(matches!(err, ProcError::Malformed { .. }), "{err:?}");

        // Gone.
        let err = process_info(&fake.root, 999).unwrap_err();
        assert!(
            matches!(err, ProcError::ProcessGone { tgid: 999, .. }),
            "{err:?}"
        );
    }

    fn own_tgid() -> u32 {
        std::process::id()
    }

    fn own_comm() -> String {
        fs::read_to_string("/proc/self/comm")
            .unwrap()
            .trim_end_matches('\n')
            .to_owned()
    }

    #[test]
    fn live_scan_finds_own_listeners() {
        let v4_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6_listener = TcpListener::bind("[::]:0").unwrap();
        let mapped_listener = TcpListener::bind("[::ffff:127.0.0.1]:0").unwrap();
        let mapped_port = mapped_listener.local_addr().unwrap().port();

        let scan = scan_listeners(Path::new("/proc"), 100_000).unwrap();
        let own_netns = read_netns(Path::new("/proc/self")).unwrap();
        let ours = |addr: SocketAddr| {
            scan.listeners
                .iter()
                .filter(|l| l.addr == addr && l.tgid == own_tgid())
                .collect::<Vec<_>>()
        };
        for addr in [
            v4_listener.local_addr().unwrap(),
            v6_listener.local_addr().unwrap(),
            sock(&format!("127.0.0.1:{mapped_port}")),
        ] {
            let found = ours(addr);
            assert_eq!(found.len(), 1, "{addr} in {scan:#?}");
            assert_eq!(found[0].comm, own_comm());
            assert_eq!(found[0].netns, own_netns);
        }
        assert_eq!(scan.skipped, 0);
    }

    #[test]
    fn live_process_info_of_self() {
        let info = process_info(Path::new("/proc"), own_tgid()).unwrap();
        assert_eq!(info.tgid, own_tgid());
        assert_eq!(info.comm, own_comm());
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            info.exe_name.as_deref(),
            exe.file_name().and_then(|n| n.to_str())
        );

        // Field 22 of /proc/self/stat, counted independently of `parse_stat_start_ticks`.
        let stat = fs::read_to_string("/proc/self/stat").unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 1..];
        let stat_start: u64 = after_comm.split(' ').nth(20).unwrap().parse().unwrap();
        assert_eq!(info.start_ticks, stat_start);
        let now = boottime_ns_to_ticks(boottime_now_ns(), clock_ticks_per_second());
        assert!(info.start_ticks <= now, "{} > {now}", info.start_ticks);
    }

    /// Kills and reaps the child on drop, even when the test fails.
    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn live_process_info_reads_otel_service_name() {
        // The shell writes "ready" only after its own exec has finished, then blocks in the
        // `read` builtin, so it does not exec again. During an exec, comm can already show the
        // new name while `environ` is still empty (`begin_new_exec` sets the name before
        // `create_elf_tables` sets `env_start`/`env_end`).
        let child = Command::new("sh")
            .args(["-c", "echo ready; read -r _"])
            .env("OTEL_SERVICE_NAME", "checkout")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = ChildGuard(child);
        let mut ready = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready, "ready\n");

        let info = process_info(Path::new("/proc"), child.0.id()).unwrap();
        assert_eq!(info.comm, "sh");
        assert!(info.exe_name.is_some(), "{info:?}");
        assert_eq!(info.env_service_name.as_deref(), Some("checkout"));
    }

    fn boottime_now_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and
        // CLOCK_BOOTTIME is supported since Linux 2.6.39.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap()
    }

    /// `task->start_boottime` is stamped by `copy_process` during `clone`, which lies
    /// between two `CLOCK_BOOTTIME` readings around `thread::spawn`. The thread's stat starttime
    /// must lie between their conversions. When both readings fall in the same tick, it must
    /// equal that tick. Over many spawns, a kernel that rounded to the nearest tick instead of
    /// truncating would fail that about half the time.
    #[test]
    fn live_boottime_conversion_matches_proc_stat() {
        let hz = clock_ticks_per_second();
        assert_eq!(hz, 100, "USER_HZ on this machine");
        let mut pinned = 0;
        for _ in 0..200 {
            let before = boottime_now_ns();
            let thread = std::thread::spawn(|| {
                let stat = fs::read_to_string("/proc/thread-self/stat").unwrap();
                parse_stat_start_ticks(&stat).unwrap()
            });
            let after = boottime_now_ns();
            let start = thread.join().unwrap();
            let (lo, hi) = (
                boottime_ns_to_ticks(before, hz),
                boottime_ns_to_ticks(after, hz),
            );
            assert!(lo <= start && start <= hi, "{lo} <= {start} <= {hi}");
            if lo == hi {
                pinned += 1;
            }
        }
        assert!(pinned >= 100, "only {pinned} spawns fell within one tick");
    }
}
