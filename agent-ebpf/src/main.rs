//! meshtap's kernel side: syscall and TCP tracepoints only (no kprobes, no fentry: see
//! PLATFORM.md), feeding one ring buffer.
//!
//! Data flow: `sys_exit_*` of each data syscall reads the arguments from the task's saved
//! registers, filters (failed calls, the agent itself, non-TCP fds) and copies the payload prefix
//! with the byte count. Connection lifecycle comes
//! from `sock:inet_sock_set_state` (connect, established, listen, close) and accept's return.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod go_tls;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod tls;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: eBPF programs cannot unwind; every reachable panic is removed by the optimiser or
    // rejected by the verifier at load time, so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
