//! meshtap: CLI -> config -> app::run. Every failure ends in one line saying what to do.

mod aggregate;
mod alloc;
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

#[cfg(test)]
mod architecture_tests;

use clap::Parser as _;

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
