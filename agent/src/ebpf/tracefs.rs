//! tracefs: making sure it is mounted, and reading tracepoint record layouts from it.
//!
//! A tracepoint program receives the raw trace record, whose layout the kernel publishes in
//! `events/<category>/<event>/format` (Documentation/trace/events.rst, "Event formats"). The
//! agent checks there, at load time, the syscall record layout its programs assume.

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
};

/// Where tracefs lives on kernels >= 4.1 (Documentation/trace/ftrace.rst).
pub const TRACEFS_MOUNT_POINT: &str = "/sys/kernel/tracing";
/// Where older setups find it: debugfs auto-mounts tracefs under its `tracing` directory.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    // `errno` is shown in the message rather than exposed as `#[source]` so that the whole
    // diagnosis and the fix fit on one line without the cause being printed twice.
    #[error(
        "tracefs is not mounted at {target} and mounting it failed: {errno}; run `mount -t tracefs tracefs {target}` as root",
        target = target.display()
    )]
    Mount { target: PathBuf, errno: io::Error },
    #[error(
        "tracefs is mounted at {} but has no events directory; the kernel needs CONFIG_EVENT_TRACING",
        root.display()
    )]
    NoEvents { root: PathBuf },
    #[error("cannot read tracepoint format {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        io: io::Error,
    },
    #[error("malformed tracepoint format {} line {line}: {reason}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
}

/// One field of a trace record, as described by a `format` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Bytes from the start of the record (the common fields come first).
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// Returns the tracefs root (the directory holding `events/`), mounting tracefs at
/// [`TRACEFS_MOUNT_POINT`] if neither it nor the debugfs location is mounted. Mounting needs
/// CAP_SYS_ADMIN, which loading eBPF programs needs anyway.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    ensure_mounted_at(Path::new(TRACEFS_MOUNT_POINT), Path::new(DEBUGFS_TRACING))
}

fn ensure_mounted_at(mount_point: &Path, debugfs_tracing: &Path) -> Result<PathBuf, TracefsError> {
    for root in [mount_point, debugfs_tracing] {
        if root.join("events").is_dir() {
            return Ok(root.to_path_buf());
        }
    }
    let target =
        std::ffi::CString::new(mount_point.as_os_str().as_encoded_bytes()).map_err(|_| {
            TracefsError::Mount {
                target: mount_point.to_path_buf(),
                errno: io::Error::from(io::ErrorKind::InvalidInput),
            }
        })?;
    // SAFETY: every pointer is a NUL-terminated C string that outlives the call; tracefs takes no
    // mount data, so NULL is valid for the last argument (mount(2)).
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    let errno = (rc != 0).then(io::Error::last_os_error);
    if mount_point.join("events").is_dir() {
        // Mounted now, by us or by someone racing us (whose mount makes ours fail with EBUSY).
        log::info!("mounted tracefs at {}", mount_point.display());
        return Ok(mount_point.to_path_buf());
    }
    Err(match errno {
        Some(errno) => TracefsError::Mount {
            target: mount_point.to_path_buf(),
            errno,
        },
        None => TracefsError::NoEvents {
            root: mount_point.to_path_buf(),
        },
    })
}

/// Byte offsets of the fields of tracepoint `category:event`, by field name (common fields
/// included). See [`fields`] for sizes as well.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the agent resolves tracepoint layouts through the size-checked `fields`"
    )
)]
pub fn field_offsets(
    root: &Path,
    category: &str,
    event: &str,
) -> Result<HashMap<String, u32>, TracefsError> {
    Ok(fields(root, category, event)?
        .into_iter()
        .map(|(name, field)| (name, field.offset))
        .collect())
}

/// The fields of tracepoint `category:event` (read from `<root>/events/<category>/<event>/format`),
/// by field name, common fields included.
pub fn fields(
    root: &Path,
    category: &str,
    event: &str,
) -> Result<HashMap<String, Field>, TracefsError> {
    let path = root
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text = fs::read_to_string(&path).map_err(|io| TracefsError::Read {
        path: path.clone(),
        io,
    })?;
    parse_format(&text, &path)
}

/// Parses the `field:` lines of a format file, e.g.
/// `\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;`. The declaration is C, so the name
/// is the last identifier once an array suffix is removed; `__data_loc char[] name` also works.
fn parse_format(text: &str, path: &Path) -> Result<HashMap<String, Field>, TracefsError> {
    let mut fields = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("field:") else {
            continue;
        };
        let malformed = |reason| TracefsError::Malformed {
            path: path.to_path_buf(),
            line: index + 1,
            reason,
        };
        let mut parts = rest.split(';');
        let declaration = parts.next().unwrap_or_default();
        let (mut offset, mut size, mut signed) = (None, None, false);
        for part in parts {
            let Some((key, value)) = part.trim().split_once(':') else {
                continue;
            };
            let number = || {
                value
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| malformed("bad number"))
            };
            match key {
                "offset" => offset = Some(number()?),
                "size" => size = Some(number()?),
                "signed" => signed = number()? != 0,
                _ => {}
            }
        }
        let name = field_name(declaration).ok_or_else(|| malformed("field has no name"))?;
        let field = Field {
            offset: offset.ok_or_else(|| malformed("field has no offset"))?,
            size: size.ok_or_else(|| malformed("field has no size"))?,
            signed,
        };
        fields.insert(name.to_owned(), field);
    }
    Ok(fields)
}

/// `const void * skaddr` -> `skaddr`, `__u8 saddr[4]` -> `saddr`.
fn field_name(declaration: &str) -> Option<&str> {
    let mut declaration = declaration.trim_end();
    if declaration.ends_with(']')
        && let Some(open) = declaration.rfind('[')
    {
        declaration = declaration[..open].trim_end();
    }
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let start = declaration
        .rfind(|c: char| !is_ident(c))
        .map_or(0, |i| i + 1);
    let name = &declaration[start..];
    (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit())).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Copied from /sys/kernel/tracing/events/*/format on the platform kernel (6.18.44).
    const INET_SOCK_SET_STATE: &str = r#"name: inet_sock_set_state
ID: 2287
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;

print fmt: "family=%s protocol=%s sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c oldstate=%s newstate=%s", __print_symbolic(REC->family, { 2, "AF_INET" }, { 10, "AF_INET6" }), __print_symbolic(REC->protocol, { 6, "IPPROTO_TCP" }, { 132, "IPPROTO_SCTP" }, { 262, "IPPROTO_MPTCP" }), REC->sport, REC->dport, REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6, __print_symbolic(REC->oldstate, { 1, "TCP_ESTABLISHED" }, { 2, "TCP_SYN_SENT" }, { 3, "TCP_SYN_RECV" }, { 4, "TCP_FIN_WAIT1" }, { 5, "TCP_FIN_WAIT2" }, { 6, "TCP_TIME_WAIT" }, { 7, "TCP_CLOSE" }, { 8, "TCP_CLOSE_WAIT" }, { 9, "TCP_LAST_ACK" }, { 10, "TCP_LISTEN" }, { 11, "TCP_CLOSING" }, { 12, "TCP_NEW_SYN_RECV" }), __print_symbolic(REC->newstate, { 1, "TCP_ESTABLISHED" }, { 2, "TCP_SYN_SENT" }, { 3, "TCP_SYN_RECV" }, { 4, "TCP_FIN_WAIT1" }, { 5, "TCP_FIN_WAIT2" }, { 6, "TCP_TIME_WAIT" }, { 7, "TCP_CLOSE" }, { 8, "TCP_CLOSE_WAIT" }, { 9, "TCP_LAST_ACK" }, { 10, "TCP_LISTEN" }, { 11, "TCP_CLOSING" }, { 12, "TCP_NEW_SYN_RECV" })
"#;
    const TCP_RETRANSMIT_SKB: &str = r#"name: tcp_retransmit_skb
ID: 2281
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:int state;	offset:24;	size:4;	signed:1;
	field:__u16 sport;	offset:28;	size:2;	signed:0;
	field:__u16 dport;	offset:30;	size:2;	signed:0;
	field:__u16 family;	offset:32;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:34;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:38;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:42;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:58;	size:16;	signed:0;
	field:int err;	offset:76;	size:4;	signed:1;

print fmt: "skbaddr=%p skaddr=%p family=%s sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c state=%s err=%d", REC->skbaddr, REC->skaddr, __print_symbolic(REC->family, { 2, "AF_INET" }, { 10, "AF_INET6" }), REC->sport, REC->dport, REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6, __print_symbolic(REC->state, { TCP_ESTABLISHED, "TCP_ESTABLISHED" }, { TCP_SYN_SENT, "TCP_SYN_SENT" }, { TCP_SYN_RECV, "TCP_SYN_RECV" }, { TCP_FIN_WAIT1, "TCP_FIN_WAIT1" }, { TCP_FIN_WAIT2, "TCP_FIN_WAIT2" }, { TCP_TIME_WAIT, "TCP_TIME_WAIT" }, { TCP_CLOSE, "TCP_CLOSE" }, { TCP_CLOSE_WAIT, "TCP_CLOSE_WAIT" }, { TCP_LAST_ACK, "TCP_LAST_ACK" }, { TCP_LISTEN, "TCP_LISTEN" }, { TCP_CLOSING, "TCP_CLOSING" }, { TCP_NEW_SYN_RECV, "TCP_NEW_SYN_RECV" }), REC->err
"#;

    fn field(offset: u32, size: u32, signed: bool) -> Field {
        Field {
            offset,
            size,
            signed,
        }
    }

    #[test]
    fn parses_inet_sock_set_state() {
        let fields = parse_format(INET_SOCK_SET_STATE, Path::new("fixture")).unwrap();
        assert_eq!(fields.len(), 4 + 11);
        assert_eq!(fields["common_pid"], field(4, 4, true));
        assert_eq!(fields["skaddr"], field(8, 8, false));
        assert_eq!(fields["oldstate"], field(16, 4, true));
        assert_eq!(fields["newstate"], field(20, 4, true));
        assert_eq!(fields["sport"], field(24, 2, false));
        assert_eq!(fields["dport"], field(26, 2, false));
        assert_eq!(fields["family"], field(28, 2, false));
        assert_eq!(fields["protocol"], field(30, 2, false));
        assert_eq!(fields["saddr"], field(32, 4, false));
        assert_eq!(fields["daddr"], field(36, 4, false));
        assert_eq!(fields["saddr_v6"], field(40, 16, false));
        assert_eq!(fields["daddr_v6"], field(56, 16, false));
    }

    #[test]
    fn parses_tcp_retransmit_skb() {
        let fields = parse_format(TCP_RETRANSMIT_SKB, Path::new("fixture")).unwrap();
        assert_eq!(fields.len(), 4 + 11);
        assert_eq!(fields["skbaddr"], field(8, 8, false));
        assert_eq!(fields["skaddr"], field(16, 8, false));
        assert_eq!(fields["state"], field(24, 4, true));
        assert_eq!(fields["daddr_v6"], field(58, 16, false));
        assert_eq!(fields["err"], field(76, 4, true));
    }

    #[test]
    fn field_names() {
        assert_eq!(field_name("const void * skaddr"), Some("skaddr"));
        assert_eq!(field_name("const void *skaddr"), Some("skaddr"));
        assert_eq!(field_name("__u8 saddr[4]"), Some("saddr"));
        assert_eq!(field_name("char comm[TASK_COMM_LEN] "), Some("comm"));
        assert_eq!(field_name("__data_loc char[] name"), Some("name"));
        assert_eq!(field_name("int"), Some("int"));
        assert_eq!(field_name(""), None);
        assert_eq!(field_name("int *"), None);
        assert_eq!(field_name("[4]"), None);
    }

    #[test]
    fn malformed_format_is_an_error() {
        let path = Path::new("bad");
        for text in [
            "\tfield:int x;\toffset:abc;\tsize:4;\tsigned:1;\n",
            "\tfield:int x;\tsize:4;\tsigned:1;\n",
            "\tfield:int x;\toffset:4;\n",
            "\tfield:;\toffset:4;\tsize:4;\n",
            "\tfield:int x;\toffset:99999999999;\tsize:4;\n",
        ] {
            assert!(
                matches!(
                    parse_format(text, path),
                    Err(TracefsError::Malformed { line: 1, .. })
                ),
                "{text:?}"
            );
        }
        // Unrelated lines and truncated input never panic.
        for len in 0..INET_SOCK_SET_STATE.len() {
            if INET_SOCK_SET_STATE.is_char_boundary(len) {
                let _ = parse_format(&INET_SOCK_SET_STATE[..len], path);
            }
        }
    }

    #[test]
    fn mount_failure_says_what_to_do() {
        let target = Path::new("/nonexistent-meshtap-test/tracing");
        let err =
            ensure_mounted_at(target, Path::new("/nonexistent-meshtap-test/debug")).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, TracefsError::Mount { .. }), "{message}");
        assert!(
            message.starts_with(
                "tracefs is not mounted at /nonexistent-meshtap-test/tracing and mounting it failed: "
            ),
            "{message}"
        );
        assert!(
            message.ends_with(
                "; run `mount -t tracefs tracefs /nonexistent-meshtap-test/tracing` as root"
            ),
            "{message}"
        );
        assert!(!message.contains('\n'));
    }

    /// Needs root (the test suite runs as root on the platform machines).
    #[test]
    fn real_tracefs() {
        let root = ensure_mounted().unwrap();
        assert!(root.join("events").is_dir());
        let offsets = field_offsets(&root, "sock", "inet_sock_set_state").unwrap();
        for name in [
            "skaddr", "oldstate", "newstate", "sport", "dport", "family", "protocol",
        ] {
            assert!(offsets.contains_key(name), "{name}");
        }
        let offsets = field_offsets(&root, "tcp", "tcp_retransmit_skb").unwrap();
        assert!(offsets.contains_key("skaddr"));
        assert!(matches!(
            field_offsets(&root, "sock", "no_such_event"),
            Err(TracefsError::Read { .. })
        ));
    }
}
