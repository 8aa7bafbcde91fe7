//! Typed configuration: every flag has an environment variable, and the doc comments are `--help`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

/// The repo's `static/` folder, found from the crate's own location so that `order-server` serves
/// the page whatever the working directory is.
const DEFAULT_STATIC_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../static");

/// Where the orders are kept by default: `data/orders.db` under the working directory.
const DEFAULT_DATABASE: &str = "sqlite:data/orders.db";

/// Serve the OrderManagement service on one port: native gRPC (HTTP/2 cleartext), gRPC-Web (HTTP/1.1
/// and HTTP/2, binary and text) and the order lookup page.
#[derive(Debug, Clone, Parser)]
#[command(name = "order-server", version, about, long_about = None)]
pub struct Config {
    /// Something other than serving (`order-server` alone serves).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on. Use 0.0.0.0:50051 to accept connections from other machines.
    #[arg(long, env = "ORDER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Folder of the web page (index.html and the wasm package built into pkg/).
    #[arg(long, env = "ORDER_STATIC_DIR", default_value = DEFAULT_STATIC_DIR)]
    pub static_dir: PathBuf,

    /// Origin allowed to call the gRPC-Web API from another site, such as http://localhost:8080.
    /// Repeat the flag (or separate with commas in the env var) for several. None by default: only
    /// pages served by this server (same origin) can call it from a browser.
    #[arg(long = "cors-origin", env = "ORDER_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<http::HeaderValue>,

    /// A host name (as in the `Host` header or URL, without port) this server answers for, such
    /// as orders.example.com. Repeat the flag (or separate with commas in the env var) for several.
    /// Listening on a loopback address, only localhost, 127.0.0.1 and `[::1]` are answered
    /// otherwise (a defence against DNS rebinding); on any other address, every host is answered
    /// unless this flag restricts it. Others get 421 for the page and PERMISSION_DENIED for gRPC.
    #[arg(
        long = "allowed-host",
        env = "ORDER_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

    /// Largest gRPC message accepted or sent, in bytes. A bigger request is answered with
    /// OUT_OF_RANGE (tonic's code for it) and the connection stays usable.
    #[arg(long, env = "ORDER_MAX_MESSAGE_SIZE", default_value_t = 4 * 1024 * 1024)]
    pub max_message_size: usize,

    /// How many orders for one destination make a full shipment in processOrders. A full
    /// shipment is sent at once; the rest when the client's stream ends.
    #[arg(long, env = "ORDER_BATCH_SIZE", default_value = "3")]
    pub batch_size: std::num::NonZeroUsize,

    /// Worker threads. 0 (the default) means one per CPU this process may run on; with one, the
    /// server runs on a single-threaded runtime, which is the fastest way to use one core.
    #[arg(long, env = "ORDER_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// TLS certificate chain (PEM). With --tls-key, the port speaks TLS only (ALPN h2 and
    /// http/1.1): native gRPC over h2, gRPC-Web and the page over either. Re-read on SIGHUP.
    #[arg(long, env = "ORDER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1), for --tls-cert. Re-read on SIGHUP.
    #[arg(long, env = "ORDER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require JWT bearer tokens signed with this HS256 secret (the file's bytes, a trailing
    /// newline stripped). Without this or --auth-public-key, authentication is off.
    #[arg(
        long,
        env = "ORDER_AUTH_SECRET_FILE",
        conflicts_with = "auth_public_key"
    )]
    pub auth_secret_file: Option<PathBuf>,

    /// Require JWT bearer tokens signed with the private half of this PEM public key: RSA
    /// (RS256), EC P-256 (ES256) or Ed25519 (EdDSA), by key type.
    #[arg(long, env = "ORDER_AUTH_PUBLIC_KEY")]
    pub auth_public_key: Option<PathBuf>,

    /// With authentication: the issuer (`iss`, one string) every token must name; a token
    /// without one is refused.
    #[arg(long, env = "ORDER_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// With authentication: the audience (`aud`) every token must name; a token without one is
    /// refused.
    #[arg(long, env = "ORDER_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// With authentication: seconds of clock difference allowed when checking a token's expiry
    /// (`exp`) and start (`nbf`).
    #[arg(long, env = "ORDER_AUTH_LEEWAY", default_value = "5", value_parser = parse_seconds)]
    pub auth_leeway: Duration,

    /// With authentication: let callers without a token read orders (getOrder, searchOrders).
    #[arg(long, env = "ORDER_PUBLIC_READS")]
    pub public_reads: bool,

    /// Where the orders are kept. `sqlite:PATH`: an embedded SQLite file, created when missing
    /// (relative paths start from the working directory); one server per file. Or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=require&...]`: a PostgreSQL database
    /// that any number of servers can share.
    #[arg(long = "database", env = "ORDER_DATABASE_URL", default_value = DEFAULT_DATABASE)]
    pub database_url: String,

    /// Start a new database empty instead of with the tutorial's sample orders 102 to 106. (An
    /// existing database is never seeded again either way.)
    #[arg(long, env = "ORDER_NO_SAMPLE_DATA")]
    pub no_sample_data: bool,

    /// How long one database operation may take, connecting included, in seconds. A call that
    /// needs a database that does not answer in time gets UNAVAILABLE.
    #[arg(long, env = "ORDER_DATABASE_TIMEOUT", default_value = "5", value_parser = parse_positive_seconds)]
    pub database_timeout: Duration,

    /// Most connections to the database this server opens. On SQLite the group commit has one
    /// more, of its own.
    #[arg(long, env = "ORDER_DATABASE_CONNECTIONS", default_value_t = 8)]
    pub database_connections: u32,

    /// How long a write's idempotency key is remembered, e.g. 24h, 30m: the same key with the
    /// same request within this gets the first answer instead of a second write. Older keys are
    /// forgotten (pruned in small batches in the background).
    #[arg(long, env = "ORDER_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_positive_duration)]
    pub idempotency_ttl: Duration,
    /// Seconds a client stream (addOrders, updateOrders, processOrders) may send nothing before
    /// it fails with DEADLINE_EXCEEDED; nothing of it is applied.
    #[arg(long, env = "ORDER_STREAM_IDLE_TIMEOUT", default_value = "30", value_parser = parse_positive_seconds)]
    pub stream_idle_timeout: Duration,
    /// Megabytes of orders kept in memory for getOrder (SQLite only, where no other process can
    /// change them, so the cache is never stale). 0 turns the cache off.
    #[arg(long, env = "ORDER_CACHE_MB", default_value_t = 8)]
    pub cache_mb: u64,

    /// Megabytes of orders that open searchOrders streams may hold between them, read from the
    /// database but not yet sent. A search reads pages of up to 64 orders and 256 KiB while this
    /// has room, one order at a time once it is spent (never waiting for it), so searches whose
    /// clients do not read hold this and one order each, and never stop the others.
    #[arg(long, env = "ORDER_SEARCH_MEMORY_MB", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub search_memory_mb: u64,

    /// How often the database is checked for the health service, in seconds: while it cannot be
    /// reached, grpc.health.v1 reports NOT_SERVING.
    #[arg(long, env = "ORDER_HEALTH_INTERVAL", default_value = "2", value_parser = parse_positive_seconds)]
    pub health_interval: Duration,

    /// Serve through an axum `Router` at the top instead of the hand-written top-level service
    /// (the order service mounted with `route_service`, the rest as the fallback), to measure
    /// what the hand-written one is worth; see the README's Performance section.
    #[arg(long, hide = true, env = "ORDER_AXUM_ROUTER")]
    pub axum_router: bool,

    /// Seconds a new connection has to finish its TLS handshake and send its first complete
    /// request head. Until it has, it is half-open: closed at this deadline, and the first to
    /// make room when every connection slot is taken (see --max-connections), so sockets that
    /// start a handshake or a request head and stop cannot keep real clients out.
    #[arg(long, env = "ORDER_HANDSHAKE_TIMEOUT", default_value = "5", value_parser = parse_positive_seconds)]
    pub handshake_timeout: Duration,

    /// Seconds a connection that has made a call may go with nothing in flight: one that stops
    /// half-way through a later request head, or sits idle between HTTP/1.1 requests, is closed
    /// after this (checked every quarter of it, so within 1.25 times this). Before its first call
    /// a connection has --handshake-timeout. An HTTP/2 connection that has made a call is left
    /// open while idle; its keep-alive pings tell when the peer is gone.
    #[arg(long, env = "ORDER_HEADER_READ_TIMEOUT", default_value = "30", value_parser = parse_positive_seconds)]
    pub header_read_timeout: Duration,

    /// Seconds between HTTP/2 keep-alive pings on a connection; a peer that does not answer one
    /// within the same time is disconnected (a dead or stalled HTTP/2 client is gone within twice
    /// this).
    #[arg(long, env = "ORDER_HTTP2_KEEPALIVE", default_value = "20", value_parser = parse_positive_seconds)]
    pub http2_keepalive: Duration,

    /// Longest a gRPC call may run, in seconds, streams included, whatever the client's
    /// grpc-timeout: past it the call ends with DEADLINE_EXCEEDED, so no call holds a stream or
    /// a database transaction forever. A shorter grpc-timeout still applies. 0: no ceiling.
    #[arg(long, env = "ORDER_MAX_CALL_DURATION", default_value = "300", value_parser = parse_seconds)]
    pub max_call_duration: Duration,

    /// Most connections open at once. When every one is taken, an idle connection (no call in
    /// flight) is closed to make room; when none is idle, a new connection is refused at once.
    /// By default, the file-descriptor limit (`ulimit -n`, raised to its hard limit at start)
    /// less a quarter of it (at most 256) kept for the database, the page's files and the logs.
    #[arg(long, env = "ORDER_MAX_CONNECTIONS")]
    pub max_connections: Option<std::num::NonZeroUsize>,

    /// Do not serve metrics at /metrics. (They are on by default, in the Prometheus text format,
    /// on the same port and behind the same host check as the page; they carry counts and
    /// timings, never order data.)
    #[arg(long, env = "ORDER_NO_METRICS")]
    pub no_metrics: bool,

    /// How log lines are written to stderr: `text` for people, `json` (one object per line) for
    /// log shippers. RUST_LOG chooses what is logged (default: info).
    #[arg(long, env = "ORDER_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: crate::telemetry::LogFormat,

    /// How long in-flight calls may run after SIGINT/SIGTERM before the server stops anyway, in
    /// seconds.
    #[arg(long, env = "ORDER_SHUTDOWN_GRACE", default_value = "10", value_parser = parse_seconds)]
    pub shutdown_grace: Duration,
}

/// What `order-server` can do besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print a signed token (HS256) for a server started with --auth-secret-file: the way a
    /// developer gets one locally, e.g. `order-server token --secret-file secret --scope
    /// "orders:read orders:write"`.
    Token(TokenArgs),
}

/// The token `order-server token` prints.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The HS256 secret file the server uses (its --auth-secret-file).
    #[arg(long)]
    pub secret_file: PathBuf,

    /// The token's scopes, space-separated: orders:read, orders:write (which includes read).
    #[arg(long, value_parser = parse_scopes)]
    pub scope: String,

    /// How long the token is valid, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// The token's subject (`sub`), which the server's logs show for each call.
    #[arg(long, default_value = "developer")]
    pub subject: String,

    /// The issuer (`iss`) to put in the token, for a server started with --auth-issuer.
    #[arg(long)]
    pub issuer: Option<String>,

    /// The audience (`aud`) to put in the token, for a server started with --auth-audience.
    #[arg(long)]
    pub audience: Option<String>,
}

fn parse_scopes(s: &str) -> Result<String, String> {
    let known = [crate::call::READ_SCOPE, crate::call::WRITE_SCOPE];
    match s.split_whitespace().find(|scope| !known.contains(scope)) {
        Some(unknown) => Err(format!(
            "unknown scope {unknown:?}: use {} and/or {}",
            known[0], known[1]
        )),
        None if s.trim().is_empty() => Err("give at least one scope".into()),
        None => Ok(s.split_whitespace().collect::<Vec<_>>().join(" ")),
    }
}

impl Config {
    /// How many worker threads to run: `--threads`, or one per CPU this process may use.
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The server's ceiling on a call, if any (`--max-call-duration`, 0 for none).
    pub(crate) fn max_call_duration(&self) -> Option<Duration> {
        Some(self.max_call_duration).filter(|max| !max.is_zero())
    }

    /// The defaults, as `order-server` with no flags and no environment would run. For tests.
    pub fn for_tests() -> Self {
        Self::parse_from(["order-server"])
    }
}

/// Accepts `scheme://host[:port]` exactly as browsers send it in `Origin`.
fn parse_origin(s: &str) -> Result<http::HeaderValue, String> {
    let s = s.trim();
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("{s:?} is not an origin: {e}"))?;
    let has_only_origin = uri.scheme().is_some()
        && uri.authority().is_some()
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none()
        && !s.ends_with('/');
    if !has_only_origin {
        return Err(format!(
            "{s:?} is not an origin: expected scheme://host[:port], e.g. http://localhost:8080"
        ));
    }
    http::HeaderValue::from_str(s).map_err(|e| format!("{s:?} is not an origin: {e}"))
}

/// A number of seconds greater than 0.
fn parse_positive_seconds(s: &str) -> Result<Duration, String> {
    let duration = parse_seconds(s)?;
    if duration.is_zero() {
        return Err(format!("{s:?}: must be more than 0 seconds"));
    }
    Ok(duration)
}

/// A duration such as 24h, 30m or 90s, greater than 0.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration such as 24h, 30m or 90s: {e}"))?;
    if duration.is_zero() {
        return Err(format!("{s:?}: must be more than 0"));
    }
    if duration > MAX_DURATION {
        return Err(format!("{s:?}: at most a year"));
    }
    Ok(duration)
}

/// The longest duration any flag takes: a year. Longer ones are mistakes, and would overflow the
/// clock's arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A number of seconds from 0 to a year.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    let duration = Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if duration > MAX_DURATION {
        return Err(format!(
            "{s:?}: at most a year ({} seconds)",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_or_absurd_durations_are_refused_naming_the_flag() {
        for (flag, value) in [
            ("--health-interval", "0"),
            ("--database-timeout", "0"),
            ("--header-read-timeout", "0"),
            ("--http2-keepalive", "0"),
            ("--stream-idle-timeout", "0"),
            ("--max-call-duration", "1e12"),
            ("--idempotency-ttl", "0s"),
            ("--idempotency-ttl", "200years"),
        ] {
            let error = Config::try_parse_from(["order-server", flag, value])
                .expect_err(&format!("{flag} {value}"))
                .to_string();
            assert!(error.contains(flag), "{flag} {value}: {error}");
        }
        // 0 still means "none" where the flag says so.
        let config = Config::try_parse_from(["order-server", "--max-call-duration", "0"]).unwrap();
        assert_eq!(config.max_call_duration(), None);
    }

    #[test]
    fn defaults_match_the_tutorial() {
        let config = Config::for_tests();
        assert_eq!(config.listen, "127.0.0.1:50051".parse().unwrap());
        assert!(config.cors_origins.is_empty());
        assert_eq!(config.batch_size.get(), 3);
        assert!(config.static_dir.join("index.html").exists());
        assert_eq!(config.database_url, "sqlite:data/orders.db");
        assert!(!config.no_sample_data, "the sample orders are loaded");
    }

    #[test]
    fn origins_are_checked() {
        assert!(parse_origin("http://localhost:8080").is_ok());
        assert!(parse_origin("https://example.com").is_ok());
        for bad in ["localhost:8080", "http://a/b", "http://a/", "*", ""] {
            assert!(parse_origin(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn cors_origins_repeat_and_split() {
        let config = Config::parse_from([
            "order-server",
            "--cors-origin",
            "http://a.test",
            "--cors-origin",
            "http://b.test:81,http://c.test",
        ]);
        assert_eq!(config.cors_origins.len(), 3);
    }
}
