//! Who listens where on this node, and which addresses each network namespace owns: how a
//! client connection finds the local server process it reached.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::{
    event::Process,
    fast::{Map, Set},
    metadata::kube::PodMeta,
};

/// A listening socket on this node.
#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: SocketAddr,
    pub netns: u32,
    /// Service name of the listening process (see `metadata::service`).
    pub service: Arc<str>,
    /// Its pod, in Kubernetes.
    pub pod: Option<Arc<PodMeta>>,
    /// The listening process, to name it again once its pod is known.
    pub process: Option<Process>,
}

/// Who listens where, and which addresses each network namespace owns.
#[derive(Default)]
pub struct Listeners {
    by_port: Map<u16, Vec<Listener>>,
    netns_addrs: Map<u32, Set<IpAddr>>,
}

impl Listeners {
    pub fn add(&mut self, listener: Listener) {
        if !listener.addr.ip().is_unspecified() {
            self.add_addr(listener.netns, listener.addr.ip());
        }
        let list = self.by_port.entry(listener.addr.port()).or_default();
        list.retain(|l| !(l.addr == listener.addr && l.netns == listener.netns));
        list.push(listener);
    }

    pub fn remove(&mut self, addr: SocketAddr, netns: u32) {
        if let Some(list) = self.by_port.get_mut(&addr.port()) {
            list.retain(|l| !(l.addr == addr && l.netns == netns));
            if list.is_empty() {
                self.by_port.remove(&addr.port());
            }
        }
    }

    pub fn add_addr(&mut self, netns: u32, ip: IpAddr) {
        if netns != 0 && !ip.is_unspecified() {
            self.netns_addrs.entry(netns).or_default().insert(ip);
        }
    }

    pub fn knows_netns(&self, netns: u32) -> bool {
        self.netns_addrs.contains_key(&netns)
    }

    /// The local listener a client in `client_netns` reaches at `remote`, if there is exactly
    /// one candidate. Loopback addresses only reach the client's own namespace; other addresses
    /// reach a wildcard listener only in a namespace known to own that address.
    pub fn server_for(&self, client_netns: u32, remote: SocketAddr) -> Option<&Listener> {
        let list = self.by_port.get(&remote.port())?;
        let loopback = remote.ip().is_loopback();
        let reachable = |l: &&Listener| {
            if loopback && client_netns != 0 && l.netns != 0 && l.netns != client_netns {
                return false;
            }
            if l.addr.ip() == remote.ip() {
                return true;
            }
            if !l.addr.ip().is_unspecified() {
                return false;
            }
            loopback
                || self
                    .netns_addrs
                    .get(&l.netns)
                    .is_some_and(|addrs| addrs.contains(&remote.ip()))
        };
        let mut candidates = list.iter().filter(reachable);
        let first = candidates.next()?;
        // Exact address matches win over wildcards; otherwise an ambiguous match names nobody.
        match candidates.next() {
            None => Some(first),
            Some(second) => [first, second]
                .into_iter()
                .chain(list.iter().filter(reachable).skip(2))
                .find(|l| l.addr.ip() == remote.ip()),
        }
    }

    /// Whether `local` is a listening address in `netns` (to infer the role of a connection
    /// that was already open when the agent started).
    pub fn is_listening(&self, netns: u32, local: SocketAddr) -> bool {
        self.by_port.get(&local.port()).is_some_and(|list| {
            list.iter().any(|l| {
                (l.netns == netns || netns == 0 || l.netns == 0)
                    && (l.addr.ip() == local.ip() || l.addr.ip().is_unspecified())
            })
        })
    }
}
