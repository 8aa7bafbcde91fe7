//! `order-server`: parses the configuration, starts logging, binds and runs until SIGINT/SIGTERM.
//! See `order-server --help`.

use anyhow::Context;
use clap::Parser;
use order_server::{config::Config, run, shutdown_signal, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    run(listener, config, shutdown_signal()).await?;
    Ok(())
}
