//! Logging: `tracing` to stderr, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// What is logged when `RUST_LOG` is not set: the server's own events and each HTTP request.
const DEFAULT_FILTER: &str = "info,tower_http=info,h2=warn,hyper=warn";

/// Installs the global subscriber. `RUST_LOG` (e.g. `debug`, `order_server=trace`) overrides the
/// default filter.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
