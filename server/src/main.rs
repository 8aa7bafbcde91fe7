//! `order-server`: parses the configuration, starts logging and the runtime, binds and runs until
//! SIGINT/SIGTERM; SIGHUP re-reads the TLS certificate.
//! See `order-server --help`.

use anyhow::Context;
use clap::Parser;
use futures::{Stream, StreamExt};
use order_server::{read_secret, run_with_reload, sign_token, telemetry, Command, Config};
use tracing::warn;

/// mimalloc: the server allocates and frees many small buffers per call, which it does faster than
/// the system allocator (see the Performance section of the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if let Some(Command::Token(token)) = &config.command {
        let secret = read_secret(&token.secret_file)?;
        let signed = sign_token(
            &secret,
            &token.subject,
            &token.scope,
            token.ttl,
            token.issuer.as_deref(),
            token.audience.as_deref(),
        )
        .context("cannot sign the token")?;
        println!("{signed}");
        return Ok(());
    }
    let logging = telemetry::init(config.log_format);
    // As many connections as the system lets this process have (see --max-connections).
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        warn!(%error, "cannot raise the file-descriptor limit");
    }
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
        tokio::select! {
            served = run_with_reload(listener, config, shutdown_signal(), reload_signal()) => served?,
            never = logging.report_dropped_lines() => never,
        }
        Ok::<(), anyhow::Error>(())
    })
}

/// Yields on each SIGHUP: re-read the TLS certificate and key.
fn reload_signal() -> impl Stream<Item = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(hangups) => futures::stream::unfold(hangups, |mut hangups| async move {
                hangups.recv().await.map(|()| ((), hangups))
            })
            .left_stream(),
            Err(error) => {
                warn!(%error, "cannot listen for SIGHUP: the TLS certificate will not be reloaded");
                futures::stream::pending().right_stream()
            }
        }
    }
    #[cfg(not(unix))]
    futures::stream::pending()
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM: what `order-server` stops on.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
