//! Logging: `tracing` to stderr, filtered by `RUST_LOG`, through a non-blocking writer. A slow or
//! unread stderr never stops serving: lines that do not fit the writer's queue are dropped and
//! counted, and the count is reported.

use std::{io::IsTerminal, time::Duration};

use tracing::warn;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// What is logged when `RUST_LOG` is not set: the server's own events and each HTTP request.
const DEFAULT_FILTER: &str = "info,tower_http=info,h2=warn,hyper=warn";

/// How many lines may wait for stderr before new ones are dropped.
const QUEUED_LINES: usize = 16 * 1024;

/// How often dropped lines are reported.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The count of dropped lines of the installed writer, for the metrics.
static DROPPED: std::sync::OnceLock<ErrorCounter> = std::sync::OnceLock::new();

/// How many log lines have been dropped since [`init`] (0 if it was never called).
pub fn dropped_lines() -> usize {
    DROPPED.get().map_or(0, ErrorCounter::dropped_lines)
}

/// Keep it for as long as the process logs: dropping it flushes what is queued.
pub struct Logging {
    _flush_on_drop: WorkerGuard,
    dropped: ErrorCounter,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`, `spans`), for log
    /// shippers.
    Json,
}

/// Installs the global subscriber. `RUST_LOG` (e.g. `debug`, `sqlx=debug`) overrides the default
/// filter. Release builds have no `trace` level (see the tracing dependency in Cargo.toml).
pub fn init(format: LogFormat) -> Logging {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("order-server-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let _ = DROPPED.set(dropped.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_span_list(true).init(),
    }
    Logging {
        _flush_on_drop: guard,
        dropped,
    }
}

impl Logging {
    /// How many lines have been dropped since the start.
    pub fn dropped_lines(&self) -> usize {
        self.dropped.dropped_lines()
    }

    /// Reports, every few seconds, how many log lines were dropped since the last report.
    pub async fn report_dropped_lines(&self) {
        let mut reported = 0;
        let mut ticks = tokio::time::interval(REPORT_EVERY);
        loop {
            ticks.tick().await;
            let dropped = self.dropped.dropped_lines();
            if dropped > reported {
                warn!(
                    dropped = dropped - reported,
                    total = dropped,
                    "log lines dropped: stderr is not read fast enough"
                );
                reported = dropped;
            }
        }
    }
}
