//! The pod network: one bridge, every pod and every stand-in for something off this node a
//! namespace on it, iptables NAT where kube-proxy or another node would be.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::netns::{NetNs, ip};
use crate::process::{RUN, run_command};

/// One bridge, in a namespace of its own, with every host of the test on it.
pub struct Fabric {
    bridge: NetNs,
    next: u32,
}

/// A network namespace on the [`Fabric`]: `eth0` with its addresses (prefix /8, so every other
/// 10.x address is on-link, and so is 172.16.0.0/12).
pub struct Sandbox {
    pub ns: NetNs,
}

impl Fabric {
    pub(crate) fn new() -> Self {
        let bridge = NetNs::create(&format!("mtk-{}-node", std::process::id()));
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        Self { bridge, next: 0 }
    }

    pub fn host(&mut self, what: &str, addrs: &[Ipv4Addr]) -> Sandbox {
        self.next += 1;
        let ns = NetNs::create(&format!("mtk-{}-{what}", std::process::id()));
        let port = format!("mtkv{}", self.next);
        ip(&[
            "link",
            "add",
            &port,
            "netns",
            self.bridge.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        self.bridge
            .ip(&["link", "set", &port, "master", "br0", "up"]);
        for a in addrs {
            ns.ip(&["addr", "add", &format!("{a}/8"), "dev", "eth0"]);
        }
        ns.ip(&["link", "set", "eth0", "up"]);
        // The nodes' own addresses (172.18.0.0/16 in the fixtures) are on the bridge too.
        ns.ip(&["route", "add", "172.16.0.0/12", "dev", "eth0"]);
        Sandbox { ns }
    }
}

impl Sandbox {
    fn iptables(&self, args: &[&str]) {
        let out = run_command(self.ns.command("iptables").args(args), RUN);
        assert!(
            out.status.success(),
            "iptables {} in {}: {}{}",
            args.join(" "),
            self.ns.name(),
            out.stdout,
            out.stderr
        );
    }

    /// Connections this namespace opens to `from` go to `to` (kube-proxy's DNAT of a ClusterIP).
    pub fn dnat_outgoing(&self, from: SocketAddrV4, to: SocketAddrV4) {
        self.dnat("OUTPUT", from, to);
    }

    /// Connections that arrive for `from` go to `to`.
    pub fn dnat_incoming(&self, from: SocketAddrV4, to: SocketAddrV4) {
        self.dnat("PREROUTING", from, to);
    }

    /// Connections arriving for `to` appear to come from `source`.
    pub fn snat_incoming(&self, to: SocketAddrV4, source: Ipv4Addr) {
        self.iptables(&[
            "-t",
            "nat",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "-d",
            &to.ip().to_string(),
            "--dport",
            &to.port().to_string(),
            "-j",
            "SNAT",
            "--to-source",
            &source.to_string(),
        ]);
    }

    fn dnat(&self, chain: &str, from: SocketAddrV4, to: SocketAddrV4) {
        self.iptables(&[
            "-t",
            "nat",
            "-A",
            chain,
            "-p",
            "tcp",
            "-d",
            &from.ip().to_string(),
            "--dport",
            &from.port().to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &to.to_string(),
        ]);
    }
}

pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}
