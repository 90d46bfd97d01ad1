//! meshtap: CLI -> config -> app::run. Every failure ends in one line saying what to do.

mod aggregate;
mod app;
mod config;
mod conntrack;
mod ebpf;
mod event;
mod export;
mod fast;
mod metadata;
mod metrics;
mod protocol;

use clap::Parser as _;

/// The processing stage allocates and frees small objects at a high rate (exchanges, spans,
/// their strings); mimalloc does that with less CPU than glibc's malloc and returns freed
/// memory instead of fragmenting per-thread arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
