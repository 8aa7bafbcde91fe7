//! `order-server`: parses the configuration, starts logging and the runtime, binds and runs until
//! SIGINT/SIGTERM.
//! See `order-server --help`.

use anyhow::Context;
use clap::Parser;
use order_server::{config::Config, run, shutdown_signal, telemetry};

/// mimalloc: the server allocates and frees many small buffers per call, which it does faster than
/// the system allocator (see the Performance section of the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init();
    let runtime = match config.worker_threads() {
        1 => tokio::runtime::Builder::new_current_thread(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
    }
    .enable_all()
    .build()
    .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        run(listener, config, shutdown_signal()).await?;
        Ok(())
    })
}
