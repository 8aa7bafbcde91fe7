//! Serving: the accept loop (HTTP/1.1 and HTTP/2 cleartext on one port), graceful shutdown, and
//! the health status as the server starts, loses or regains its database, and stops.

use std::{future::Future, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};

use hyper_util::rt::{TokioExecutor, TokioIo};
use order_api::pb::order_management_server::OrderManagementServer;
use tokio::net::TcpListener;
use tokio_util::either::Either;
use tonic_health::{server::HealthReporter, ServingStatus};
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    http::app::app,
    net::connections::{self, Connection, Connections, Counted},
    net::timer::CoarseTimer,
    net::tls::Tls,
    orders::service::OrderService,
    store::{Store, StoreOptions},
};

/// Why the server could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::OpenError),
    /// The authentication key could not be used.
    #[error(transparent)]
    Auth(#[from] crate::grpc::auth::AuthError),
    /// The TLS certificate or key could not be used.
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    /// Serving failed.
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the database the configuration names (creating and seeding it if it is new), then
/// serves on `listener` until `shutdown` completes and lets in-flight calls finish for up to
/// [`Config::shutdown_grace`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_with_reload(listener, config, shutdown, futures::stream::pending()).await
}

/// [`run`], re-reading the TLS certificate and key each time `reload` yields (`order-server`
/// passes SIGHUP).
pub async fn run_with_reload(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: impl Stream<Item = ()> + Send + 'static,
) -> Result<(), RunError> {
    let store = Store::open(&StoreOptions::of(&config)).await?;
    info!(database = store.name(), "orders are stored in the database");
    let orders = OrderService::new(store, config.batch_size);
    serve_with_reload(listener, orders, config, shutdown, reload).await
}

/// [`run`] with a service the caller made (and may keep a handle to).
pub async fn serve(
    listener: TcpListener,
    orders: OrderService,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    serve_with_reload(
        listener,
        orders,
        config,
        shutdown,
        futures::stream::pending(),
    )
    .await
}

/// [`serve`], re-reading the TLS certificate and key each time `reload` yields.
pub async fn serve_with_reload(
    listener: TcpListener,
    orders: OrderService,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: impl Stream<Item = ()> + Send + 'static,
) -> Result<(), RunError> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::new(cert, key)?),
        _ => None,
    };
    let store = orders.store().clone();
    let app = app(orders, &config)?;
    // Spawned only once nothing can fail any more: an early error leaves no task behind.
    let reloading = tokio::spawn(reload_on(reload, tls.clone()));
    let health_reporter = app.health().clone();
    set_health(&health_reporter, ServingStatus::Serving).await;
    let database = tokio::spawn(watch_database(
        store.clone(),
        health_reporter.clone(),
        config.health_interval,
    ));
    let pruning = tokio::spawn(forget_expired_keys(store.clone(), config.idempotency_ttl));

    info!(
        address = %listener.local_addr()?,
        tls = tls.is_some(),
        static_dir = %config.static_dir.display(),
        cors_origins = ?config.cors_origins,
        "serving gRPC, gRPC-Web and the web page",
    );
    warn_if_page_missing(&config.static_dir);

    let max_connections = connections::max_connections(&config);
    let connections = Connections::new(max_connections);
    if let Some(metrics) = app.metrics() {
        let connections = Arc::downgrade(&connections);
        metrics.count_connections(move || connections.upgrade().map_or(0, |c| c.open()));
    }
    info!(
        max_connections,
        "connections beyond the limit are refused once none is idle (--max-connections)"
    );
    if config.axum_router {
        let router = crate::http::app::router(app);
        let service = hyper_util::service::TowerToHyperService::new(router);
        accept(&listener, service, tls, &connections, &config, shutdown).await;
    } else {
        accept(&listener, app, tls, &connections, &config, shutdown).await;
    }

    drop(listener);
    database.abort();
    pruning.abort();
    reloading.abort();
    info!("shutting down: no new connections, finishing in-flight calls");
    set_health(&health_reporter, ServingStatus::NotServing).await;
    connections.close_all();
    let mut writes = store.writes_in_flight();
    let finished = async {
        connections.all_closed().await;
        // A write whose caller went away still runs to its commit or rollback.
        let _ = writes.wait_for(|running| *running == 0).await;
    };
    tokio::select! {
        () = finished => info!("stopped"),
        () = tokio::time::sleep(config.shutdown_grace) => {
            warn!(grace = ?config.shutdown_grace, "stopped with calls still in flight after the grace period");
        }
    }
    Ok(())
}

/// Accepts connections and serves `service` on each, HTTP/1.1 and HTTP/2 (prior knowledge, as
/// gRPC clients use it) on the same port, until `shutdown` completes.
async fn accept<S, B>(
    listener: &TcpListener,
    service: S,
    tls: Option<Tls>,
    connections: &std::sync::Arc<Connections>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Silent, stalled or dead clients do not hold a connection forever: HTTP/2 peers answer
    // keep-alive pings, and a connection with nothing in flight for `--header-read-timeout` is
    // closed (`Connection::close_when_quiet`; hyper's own header timer is not armed, as it costs
    // a timer per request).
    builder
        .http2()
        .initial_connection_window_size(CONNECTION_WINDOW)
        .timer(CoarseTimer::new())
        .keep_alive_interval(config.http2_keepalive)
        .keep_alive_timeout(config.http2_keepalive);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut out_of_descriptors = false;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) if is_out_of_descriptors(&error) => {
                    // The clients already connected are served on; new ones wait in the backlog
                    // until a connection closes and gives its descriptor back.
                    if !std::mem::replace(&mut out_of_descriptors, true) {
                        warn!(%error, open = connections.open(), "out of file descriptors: new connections wait until some close (raise `ulimit -n`, or lower --max-connections)");
                    }
                    connections.one_closed(Duration::from_millis(100)).await;
                    continue;
                }
                Err(error) => {
                    warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if std::mem::take(&mut out_of_descriptors) {
            info!(open = connections.open(), "accepting connections again");
        }
        // gRPC messages are small and latency-bound: send them at once.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY");
        }
        // Each connection is set up on its own task, so a slow client holds up nobody.
        let (tls, builder, service, connections) = (
            tls.clone(),
            builder.clone(),
            service.clone(),
            connections.clone(),
        );
        let wait = config.header_read_timeout;
        // The TLS handshake and the first request head must be done by then.
        let handshake_deadline = tokio::time::Instant::now() + config.handshake_timeout;
        tokio::spawn(async move {
            let Some(slot) = connections.admit().await else {
                debug!(
                    open = connections.open(),
                    "every connection is busy: refused (--max-connections)"
                );
                return;
            };
            let service = Counted {
                inner: service,
                connection: slot.connection.clone(),
            };
            let told_to_close = slot.connection.told_to_close();
            let mut told_to_close = std::pin::pin!(told_to_close);
            // Until its first request head, the connection is half-open: told to close at the
            // handshake deadline, and the first to make room for a newcomer.
            slot.connection.close_when_quiet(handshake_deadline, wait);
            // The first byte tells TLS from plaintext.
            let first = tokio::select! {
                first = first_byte(&stream) => first,
                () = &mut told_to_close => None,
            };
            let Some(first) = first else {
                debug!("a connection sent nothing: closed");
                return;
            };
            // One connection type for both, so hyper's and h2's connection code is compiled
            // (and inlined) once rather than once per kind of stream.
            let stream = match tls {
                None => Either::Left(stream),
                Some(tls) => match tokio::select! {
                    stream = handshake(&tls, stream, first) => stream,
                    () = &mut told_to_close => None,
                } {
                    Some(stream) => Either::Right(stream),
                    None => return,
                },
            };
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let result = serve_until_told(connection, told_to_close, &slot.connection).await;
            if let Err(error) = result {
                debug!(error = %error, "connection ended with an error");
            }
            // `slot` goes here, giving the connection's place back.
        });
    }
}

/// How long a connection closed with nothing in flight (quiet, or making room for another) may
/// take to go: an HTTP/2 one sends GOAWAY and an idle HTTP/1.1 one closes at once, but one stopped
/// half-way through a request head would wait for the rest.
const QUIET_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `connection` to its end; once `told_to_close` completes, it finishes the calls in
/// flight and closes (HTTP/2: GOAWAY; HTTP/1.1: after the current response). Closed for quiet
/// (nothing in flight), it is given [`QUIET_CLOSE_GRACE`] at most.
async fn serve_until_told<I, S, B>(
    connection: hyper_util::server::conn::auto::Connection<'_, I, S, TokioExecutor>,
    told_to_close: impl Future<Output = ()>,
    counted: &Connection,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return result,
        () = told_to_close => {}
    }
    connection.as_mut().graceful_shutdown();
    if counted.quiet_too_long() || counted.idle() {
        debug!("closed with nothing in flight (half-open, quiet, or making room)");
        return tokio::time::timeout(QUIET_CLOSE_GRACE, connection)
            .await
            .unwrap_or(Ok(()));
    }
    connection.await
}

/// Whether accepting failed for want of file descriptors (the process's or the system's).
fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The first byte the client sends (`None`: it closed first).
async fn first_byte(stream: &tokio::net::TcpStream) -> Option<u8> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) => Some(first[0]),
        _ => None,
    }
}

/// What a plaintext HTTP client on the TLS port is told, instead of a silent close.
const PLAINTEXT_REFUSED: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n\
connection: close\r\ncontent-length: 49\r\n\r\nThis port speaks TLS only: use https:// instead.\n";

/// The TLS side of a new connection: a plaintext client (its first byte is not a TLS handshake
/// record) gets a plain 400 and the connection is closed; a handshake that fails ends the
/// connection (one that takes too long is the caller's to end: `--handshake-timeout`).
async fn handshake(
    tls: &Tls,
    stream: tokio::net::TcpStream,
    first: u8,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt;
    if first != 0x16 {
        debug!("plaintext request on the TLS port: refused");
        let mut stream = stream;
        let _ = stream.write_all(PLAINTEXT_REFUSED).await;
        let _ = stream.shutdown().await;
        return None;
    }
    match tls.acceptor().accept(stream).await {
        Ok(stream) => Some(stream),
        Err(error) => {
            debug!(%error, "TLS handshake failed");
            None
        }
    }
}

/// Re-reads the certificate each time `reload` yields.
async fn reload_on(reload: impl Stream<Item = ()>, tls: Option<Tls>) {
    let mut reload = std::pin::pin!(reload);
    while reload.next().await.is_some() {
        match &tls {
            Some(tls) => tls.reload(),
            None => info!("reload asked for, but there is no TLS certificate to reload"),
        }
    }
}

/// Sets the server's overall health ("") and the order service's.
async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(
            <OrderManagementServer<OrderService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// The HTTP/2 connection window a client may fill before the server reads, 8 MiB (hyper's default
/// is 1 MiB). h2 closes a connection with `ENHANCE_YOUR_CALM "too_many_data_frames"` once the
/// small DATA frames it holds unread cost more than half this window (each frame under 256 bytes
/// counts as 256 less its size). gRPC clients send one frame per message, so one `addOrders` of
/// 10 000 one-item orders is 10 000 frames of a few bytes: 2.5 MB of that budget if they arrive
/// faster than the server reads it, which a burst from grpcio can. A budget of 4 MiB holds a
/// whole stream at the per-call limit; the stream's own window (1 MiB) still bounds the bytes.
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// Forgets expired idempotency keys now and then: every tenth of the TTL, at most hourly.
async fn forget_expired_keys(store: Store, ttl: Duration) {
    let every = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.forget_expired_keys().await {
            Ok(0) => {}
            Ok(forgotten) => info!(forgotten, "expired idempotency keys forgotten"),
            Err(error) => warn!(%error, "could not forget expired idempotency keys"),
        }
    }
}

/// Checks the database every `interval`: while it cannot be reached, health reports
/// `NOT_SERVING` (so load balancers send calls elsewhere), and `SERVING` again once it answers.
/// Calls themselves never wait for this: each reaches the database on its own and gets
/// `UNAVAILABLE` if it cannot.
async fn watch_database(store: Store, reporter: HealthReporter, interval: Duration) {
    let mut reachable = true;
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.ping().await {
            Ok(()) if !reachable => {
                info!(
                    database = store.name(),
                    "the database answers again: serving"
                );
                set_health(&reporter, ServingStatus::Serving).await;
                reachable = true;
            }
            Err(error) if reachable => {
                warn!(database = store.name(), %error, "the database cannot be reached: health reports NOT_SERVING until it answers");
                set_health(&reporter, ServingStatus::NotServing).await;
                reachable = false;
            }
            _ => {}
        }
    }
}

/// The page is optional for the API, but a person opening it deserves a hint in the log.
fn warn_if_page_missing(static_dir: &std::path::Path) {
    if !static_dir.join("index.html").is_file() {
        warn!(static_dir = %static_dir.display(), "no index.html here: the web page will answer 404 (see --static-dir)");
    } else if !static_dir.join("pkg").is_dir() {
        warn!(static_dir = %static_dir.display(), "the web client is not built into pkg/: run `make run`, or `make wasm` once");
    }
}
