//! Network namespaces joined by veth pairs: several "hosts" on one machine.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

/// Runs `ip args...` and panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A network namespace, deleted on drop. `lo` is up inside it.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `name`, first deleting a leftover of the same name (a killed test run).
    pub fn create(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`, which execs, so
    /// the child's pid is the program's pid).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also destroys the veth end inside it, and with it its peer.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// One end of a [`VethPair`]: a namespace and its addresses on the link.
pub struct Host {
    pub ns: NetNs,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// Two namespaces `a` and `b` joined by a veth pair, with 10.200.X.1/24 and fd00:200:X::1/64 on
/// `a`, 10.200.X.2/24 and fd00:200:X::2/64 on `b`. X is unique in this test process.
pub struct VethPair {
    pub a: Host,
    pub b: Host,
    pub subnet: u8,
}

impl VethPair {
    pub fn new() -> Self {
        static NEXT: AtomicU8 = AtomicU8::new(1);
        let x = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(x < 250, "too many veth pairs in one test process");
        // The pid keeps test binaries that run at the same time out of each other's way.
        let pid = std::process::id();
        let ns_a = NetNs::create(&format!("meshtap-{pid}-{x}-a"));
        let ns_b = NetNs::create(&format!("meshtap-{pid}-{x}-b"));
        let (if_a, if_b) = (format!("mtv{x}a"), format!("mtv{x}b"));
        ip(&[
            "link",
            "add",
            &if_a,
            "netns",
            ns_a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &if_b,
            "netns",
            ns_b.name(),
        ]);
        let a = Host {
            ns: ns_a,
            v4: Ipv4Addr::new(10, 200, x, 1),
            v6: Ipv6Addr::new(0xfd00, 0x200, u16::from(x), 0, 0, 0, 0, 1),
        };
        let b = Host {
            ns: ns_b,
            v4: Ipv4Addr::new(10, 200, x, 2),
            v6: Ipv6Addr::new(0xfd00, 0x200, u16::from(x), 0, 0, 0, 0, 2),
        };
        for (host, ifname) in [(&a, &if_a), (&b, &if_b)] {
            let v4 = format!("{}/24", host.v4);
            let v6 = format!("{}/64", host.v6);
            host.ns.ip(&["addr", "add", &v4, "dev", ifname]);
            host.ns
                .ip(&["-6", "addr", "add", &v6, "dev", ifname, "nodad"]);
            host.ns.ip(&["link", "set", ifname, "up"]);
        }
        Self { a, b, subnet: x }
    }
}

impl Default for VethPair {
    fn default() -> Self {
        Self::new()
    }
}
