//! The clocks the agent reads. Everything stateful takes time as an argument; only the wiring
//! (`app`) and the tracer's wall-clock conversion read these.

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC in ns: converts the kernel's `bpf_ktime_get_ns` timestamps
/// to wall-clock time. Read back to back; callers refresh it periodically so that clock steps
/// (NTP) are followed.
pub fn epoch_offset_ns() -> i128 {
    let mono = monotonic_ns() as i128;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    wall - mono
}
