//! meshtap: CLI -> config -> app::run. Every failure ends in one line saying what to do.

mod aggregate;
mod app;
mod clock;
mod config;
mod conntrack;
mod ebpf;
mod event;
mod exchange;
mod export;
mod fast;
mod metadata;
mod metrics;
mod pipeline;
mod protocol;
mod semconv;
mod trace;

use clap::Parser as _;

/// The processing stage allocates and frees small objects at a high rate (exchanges, spans,
/// their strings); mimalloc does that with less CPU than glibc's malloc and returns freed
/// memory instead of fragmenting per-thread arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the memory the calling thread freed back to the system now. mimalloc returns a
/// thread's free pages lazily, on that thread's later allocations: start-up (the kernel's BTF
/// parsed twice, the eBPF object) frees about 20 MB on a thread that then mostly waits, which
/// would otherwise stay resident for the agent's whole life.
pub fn release_freed_memory() {
    // SAFETY: no preconditions; `force` also purges pages held for reuse.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

fn main() -> std::process::ExitCode {
    let flags = config::Flags::parse();
    let config = match config::Config::load(flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("meshtap: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(format!("meshtap={}", config.log_level)),
    )
    .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("meshtap: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meshtap: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
