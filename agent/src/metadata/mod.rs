//! Names for what the kernel reports by number: processes, listeners, namespaces.
pub mod cgroup;
pub mod kube;
pub mod netns;
pub mod pod;
pub mod proc;
pub mod service;

pub use netns::netns_addresses;
