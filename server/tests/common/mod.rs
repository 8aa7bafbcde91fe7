//! Shared test harness: a real `order-server` on `127.0.0.1:0`, on a real database (a SQLite file
//! in a temporary folder, or a fresh database on a PostgreSQL the harness starts), and clients.
#![allow(dead_code, missing_docs)]

pub mod postgres;
pub mod process;

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use http::{header::CONTENT_TYPE, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use order_api::pb::{order_management_client::OrderManagementClient, Order};
use order_server::{serve, Config, OrderService, Store, StoreOptions};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_web::{GrpcWebClientLayer, GrpcWebClientService};
use tower::{Service, ServiceBuilder};

/// Which database a test's server keeps its orders in. RPC tests run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// A SQLite file of the test's own (the default store).
    Sqlite,
    /// A database of the test's own on the test process's PostgreSQL.
    Postgres,
}

/// A new, empty database for one test; deleted with it (SQLite) or with the test process's
/// PostgreSQL.
pub struct TestDb {
    pub url: String,
    _dir: Option<TempDir>,
}

impl TestDb {
    /// A database the test made itself (it outlives nothing of the harness's).
    pub fn existing(url: String) -> Self {
        Self { url, _dir: None }
    }
}

impl Db {
    pub async fn create(self) -> TestDb {
        match self {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary folder");
                TestDb {
                    url: format!("sqlite:{}", dir.path().join("orders.db").display()),
                    _dir: Some(dir),
                }
            }
            Db::Postgres => TestDb {
                url: postgres::shared().create_database().await,
                _dir: None,
            },
        }
    }
}

/// The configuration tests start from: the defaults, on `db`.
pub fn config_on(db: &TestDb) -> Config {
    let mut config = Config::for_tests();
    config.database_url = db.url.clone();
    config
}

/// Opens the store `config` names.
pub async fn open_store(config: &Config) -> Store {
    Store::open(&StoreOptions::of(config))
        .await
        .expect("the test database opens")
}

/// A server running in this process on an ephemeral loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), order_server::RunError>>,
    _db: Option<TestDb>,
}

impl TestServer {
    /// A server on a new SQLite database, with the sample orders.
    pub async fn start() -> Self {
        Self::start_on(Db::Sqlite).await
    }

    /// A server on a new database of `db`'s kind, with the sample orders.
    pub async fn start_on(db: Db) -> Self {
        Self::start_with_on(Config::for_tests(), db).await
    }

    /// A server with `config` on a new SQLite database.
    pub async fn start_with(config: Config) -> Self {
        Self::start_with_on(config, Db::Sqlite).await
    }

    /// A server with `config` on a new database of `db`'s kind.
    pub async fn start_with_on(mut config: Config, db: Db) -> Self {
        let db = db.create().await;
        config.database_url = db.url.clone();
        let orders = OrderService::new(open_store(&config).await, config.batch_size);
        let mut server = Self::start_service(orders, config).await;
        server._db = Some(db);
        server
    }

    /// A server with `config` on the database it names (one the test made, and keeps).
    pub async fn start_on_existing(config: Config) -> Self {
        let orders = OrderService::new(open_store(&config).await, config.batch_size);
        Self::start_service(orders, config).await
    }

    /// A server around a service the test keeps a handle to.
    pub async fn start_service(orders: OrderService, config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, orders, config, async {
            let _ = stop.await;
        }));
        Self {
            addr,
            shutdown: Some(shutdown),
            task,
            _db: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A tonic channel to the server over native gRPC (HTTP/2 cleartext), for any client.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    /// The generated client over native gRPC (HTTP/2 cleartext).
    pub async fn native(&self) -> OrderManagementClient<Channel> {
        OrderManagementClient::new(self.channel().await)
    }

    /// The generated client over plain hyper HTTP/2, without tonic's transport: nothing on the
    /// client side enforces `grpc-timeout`, so only the server can.
    pub fn h2c(&self) -> OrderManagementClient<HttpClient<tonic::body::Body>> {
        OrderManagementClient::with_origin(h2c_client(), self.url().parse().expect("uri"))
    }

    /// The generated client over gRPC-Web, binary mode, HTTP/1.1, through tonic-web's client layer.
    pub fn grpc_web(&self) -> GrpcWebClient {
        grpc_web_client(&self.url())
    }

    /// The generated client over gRPC-Web in text mode (`application/grpc-web-text`, base64
    /// bodies), HTTP/1.1.
    pub fn grpc_web_text(&self) -> OrderManagementClient<GrpcWebClientService<TextMode>> {
        let client = ServiceBuilder::new()
            .layer(GrpcWebClientLayer::new())
            .service(TextMode(http1_client()));
        OrderManagementClient::with_origin(client, self.url().parse().expect("uri"))
    }

    /// Triggers graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Shuts down and waits until the server has stopped.
    pub async fn stop(mut self) -> Result<(), order_server::RunError> {
        self.begin_shutdown();
        self.task.await.expect("server task panicked")
    }
}

pub type HttpClient<B> = Client<HttpConnector, B>;

/// What the generated client needs of its transport, whichever it is.
pub trait Transport:
    tonic::client::GrpcService<
    tonic::body::Body,
    Error: Into<tonic::codegen::StdError>,
    ResponseBody: http_body::Body<Data = Bytes, Error: Into<tonic::codegen::StdError> + Send>
                      + Send
                      + 'static,
>
{
}

impl<T> Transport for T where
    T: tonic::client::GrpcService<
        tonic::body::Body,
        Error: Into<tonic::codegen::StdError>,
        ResponseBody: http_body::Body<
            Data = Bytes,
            Error: Into<tonic::codegen::StdError> + Send,
        > + Send
                          + 'static,
    >
{
}

/// `getOrder(id)` through `client`, whatever its transport.
pub async fn get_order<T: Transport>(
    mut client: OrderManagementClient<T>,
    id: &str,
) -> Result<Order, tonic::Status> {
    Ok(client.get_order(id.to_string()).await?.into_inner())
}

/// Everything `searchOrders(text)` streams back through `client`, whatever its transport.
pub async fn search<T: Transport>(mut client: OrderManagementClient<T>, text: &str) -> Vec<Order> {
    use futures::StreamExt;
    let stream = client
        .search_orders(text.to_string())
        .await
        .expect("search started")
        .into_inner();
    stream.map(|order| order.expect("no error")).collect().await
}

pub fn http1_client<B>() -> HttpClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client<B>() -> HttpClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Turns binary gRPC-Web into text mode on the way out and back, so the generated client (through
/// `GrpcWebClientLayer`, which speaks binary only) exercises the server's text mode.
#[derive(Clone)]
pub struct TextMode(HttpClient<Full<Bytes>>);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> Service<Request<B>> for TextMode
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let binary = body.collect().await.map_err(Into::into)?.to_bytes();
            parts.headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/grpc-web-text"),
            );
            // As grpc-web's JS client in text mode does: ask for a text answer too.
            parts.headers.insert(
                http::header::ACCEPT,
                HeaderValue::from_static("application/grpc-web-text"),
            );
            let text = Full::new(Bytes::from(STANDARD.encode(&binary)));
            let response = client.request(Request::from_parts(parts, text)).await?;
            let (mut parts, body) = response.into_parts();
            assert_eq!(
                parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
                Some(&b"application/grpc-web-text+proto"[..]),
                "a text-mode request gets a text-mode answer",
            );
            let text = body.collect().await?.to_bytes();
            let binary = decode_text_body(&text)?;
            parts.headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/grpc-web+proto"),
            );
            Ok(Response::from_parts(parts, Full::new(Bytes::from(binary))))
        })
    }
}

/// A grpc-web-text body may be several base64 chunks, each padded on its own.
pub fn decode_text_body(text: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    let mut binary = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        // A chunk ends after its padding, or at the end of the body.
        let end = rest
            .iter()
            .position(|&b| b == b'=')
            .map(|i| {
                let mut j = i;
                while j < rest.len() && rest[j] == b'=' {
                    j += 1;
                }
                j
            })
            .unwrap_or(rest.len());
        binary.extend(STANDARD.decode(&rest[..end])?);
        rest = &rest[end..];
    }
    Ok(binary)
}

impl TestServer {
    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Metrics {
        metrics_at(&self.url()).await
    }

    /// Waits (20 s at most, then panics) until the series `series` with `labels` reaches `n`.
    pub async fn counted(&self, series: &str, labels: &[(&str, &str)], n: f64) {
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while self.metrics().await.value(series, labels) < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{series} {labels:?} never reached {n}"));
    }
}

/// The generated client over gRPC-Web, binary mode, HTTP/1.1.
pub type GrpcWebClient = OrderManagementClient<
    GrpcWebClientService<HttpClient<tonic_web::GrpcWebCall<tonic::body::Body>>>,
>;

/// The generated client over gRPC-Web to `url` (binary mode, HTTP/1.1), through tonic-web's
/// client layer.
pub fn grpc_web_client(url: &str) -> GrpcWebClient {
    let client = ServiceBuilder::new()
        .layer(GrpcWebClientLayer::new())
        .service(http1_client());
    OrderManagementClient::with_origin(client, url.parse().expect("uri"))
}

/// `GET {url}/metrics`: the Prometheus text.
pub async fn metrics_at(url: &str) -> Metrics {
    {
        use http_body_util::BodyExt;
        let request = http::Request::get(format!("{url}/metrics"))
            .body(Full::<Bytes>::default())
            .expect("request");
        let response = http1_client().request(request).await.expect("/metrics");
        assert_eq!(response.status(), http::StatusCode::OK);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Metrics(String::from_utf8(body.to_vec()).expect("UTF-8"))
    }
}

/// A `/metrics` answer.
#[derive(Debug)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the series `name` whose labels include every one of `labels`, or `None`.
    /// Panics if several series match.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                continue;
            }
            let all = labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            });
            if all {
                assert!(
                    found.is_none(),
                    "several series of {name} match {labels:?}:\n{}",
                    self.0
                );
                found = Some(value.parse().expect("a number"));
            }
        }
        found
    }

    /// As [`Self::get`], 0 for a series not (yet) there.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// A native gRPC call made by hand on a new HTTP/2 connection (the `h2` crate, no tonic), its
/// head sent: its request stream, for the test to send the body as it wants, and its answer.
pub async fn raw_h2_call(
    addr: SocketAddr,
    path: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    raw_h2_call_with(addr, path, &[]).await
}

/// [`raw_h2_call`] with more request headers.
pub async fn raw_h2_call_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = Request::post(format!("http://{addr}{path}"))
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client
        .send_request(request.body(()).unwrap(), false)
        .unwrap()
}

/// The `grpc-status` of a call made by [`raw_h2_call`], from the answer's headers or trailers,
/// once the answer has been read whole; or what went wrong reading it.
pub async fn raw_h2_status(response: h2::client::ResponseFuture) -> Result<String, String> {
    let response = response
        .await
        .map_err(|error| format!("reading the answer: {error}"))?;
    let status = response.headers().get("grpc-status").cloned();
    let mut answer = response.into_body();
    while let Some(data) = answer.data().await {
        data.map_err(|error| format!("reading the answer's body: {error}"))?;
    }
    let trailers = answer
        .trailers()
        .await
        .map_err(|error| format!("reading the trailers: {error}"))?;
    let status = status
        .or_else(|| trailers.and_then(|t| t.get("grpc-status").cloned()))
        .ok_or("no grpc-status")?;
    Ok(status.to_str().unwrap().to_owned())
}

/// One message framed as gRPC (and Connect's streams) frame it: a flag byte, a four-byte
/// big-endian length, the message.
pub fn framed(flag: u8, message: &[u8]) -> Bytes {
    let mut out = bytes::BytesMut::with_capacity(5 + message.len());
    bytes::BufMut::put_u8(&mut out, flag);
    bytes::BufMut::put_u32(&mut out, message.len() as u32);
    bytes::BufMut::put_slice(&mut out, message);
    out.freeze()
}

/// The framed messages of a body, each as its flag and bytes; a message cut short fails.
pub fn messages(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    use bytes::Buf;
    let mut found = Vec::new();
    while body.len() >= 5 {
        let flag = body.get_u8();
        let length = body.get_u32() as usize;
        found.push((flag, body[..length].to_vec()));
        body.advance(length);
    }
    assert!(body.is_empty(), "a message cut short");
    found
}
