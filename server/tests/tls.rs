//! TLS on the one port, with certificates the test makes (rcgen): native gRPC over h2, gRPC-Web
//! over HTTP/1.1 and h2, the page, plaintext refused, and the certificate re-read on reload.

mod common;

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use common::{config_on, open_store, Db};
use futures::channel::mpsc;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use order_api::pb::order_management_client::OrderManagementClient;
use order_server::{serve_with_reload, OrderService};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Only a hang reaches this.
const LIMIT: Duration = Duration::from_secs(10);

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
fn make_certificate(dir: &Path, name: &str) -> String {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let pem = cert.cert.pem();
    std::fs::write(dir.join(format!("{name}.pem")), &pem).unwrap();
    std::fs::write(
        dir.join(format!("{name}-key.pem")),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    pem
}

/// Puts certificate `name` where the server reads its certificate.
fn install(dir: &Path, name: &str) {
    std::fs::copy(dir.join(format!("{name}.pem")), dir.join("cert.pem")).unwrap();
    std::fs::copy(dir.join(format!("{name}-key.pem")), dir.join("key.pem")).unwrap();
}

struct TlsServer {
    addr: std::net::SocketAddr,
    reload: mpsc::UnboundedSender<()>,
    _db: common::TestDb,
}

async fn start(dir: &Path) -> TlsServer {
    let db = Db::Sqlite.create().await;
    let mut config = config_on(&db);
    config.tls_cert = Some(dir.join("cert.pem"));
    config.tls_key = Some(dir.join("key.pem"));
    let orders = OrderService::new(open_store(&config).await, config.batch_size);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reload, reloads) = mpsc::unbounded();
    tokio::spawn(serve_with_reload(
        listener,
        orders,
        config,
        std::future::pending(),
        reloads,
    ));
    TlsServer {
        addr,
        reload,
        _db: db,
    }
}

/// A TLS connection trusting `roots` (PEM), offering `alpn`.
async fn connect(
    addr: std::net::SocketAddr,
    roots: &[&str],
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        store
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(
        LIMIT,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake")
}

/// The certificate the server presented on `stream`, as PEM-comparable DER.
fn presented(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// getOrder("106") as a gRPC-Web request.
fn grpc_web_get_106(authority: &str) -> Request<Full<Bytes>> {
    Request::post(format!("https://{authority}/OrderManagement/getOrder"))
        .header("content-type", "application/grpc-web+proto")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05\x0a\x03106")))
        .unwrap()
}

/// A gRPC-Web answer carrying order 106 and `grpc-status: 0`.
async fn assert_web_answer_is_106(answer: http::Response<hyper::body::Incoming>) {
    assert_eq!(answer.status(), 200);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"Apple iPhone XS"), "{body:?}");
    assert!(has(b"grpc-status:0"), "{body:?}");
}

#[tokio::test]
async fn native_grpc_grpc_web_and_the_page_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pem = make_certificate(dir.path(), "a");
    install(dir.path(), "a");
    let server = start(dir.path()).await;
    let authority = format!("localhost:{}", server.addr.port());

    // Native gRPC over h2, through tonic's own TLS.
    let channel = Channel::from_shared(format!("https://{authority}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS connect");
    let order = OrderManagementClient::new(channel)
        .get_order("106".to_string())
        .await
        .expect("getOrder over TLS")
        .into_inner();
    assert_eq!(order.destination, "Mountain View, CA");

    // gRPC-Web over HTTP/1.1.
    let stream = connect(server.addr, &[&pem], b"http/1.1").await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    assert_web_answer_is_106(
        sender
            .send_request(grpc_web_get_106(&authority))
            .await
            .unwrap(),
    )
    .await;

    // The page over HTTP/1.1.
    let page = Request::get(format!("https://{authority}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = sender.send_request(page).await.unwrap();
    assert_eq!(answer.status(), 200);

    // gRPC-Web and the page over h2.
    let stream = connect(server.addr, &[&pem], b"h2").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    assert_web_answer_is_106(
        sender
            .send_request(grpc_web_get_106(&authority))
            .await
            .unwrap(),
    )
    .await;
    let page = Request::get(format!("https://{authority}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(page).await.unwrap().status(), 200);
}

#[tokio::test]
async fn plaintext_clients_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    make_certificate(dir.path(), "a");
    install(dir.path(), "a");
    let server = start(dir.path()).await;

    // Plain HTTP gets a plain 400 that says why, then the connection closes.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, plain.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("TLS only"), "{answer}");

    // A native gRPC client without TLS fails at once, and gets no order.
    let call = async {
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await?;
        OrderManagementClient::new(channel)
            .get_order("106".to_string())
            .await
            .map_err(Into::into)
            .map(|_| ())
    };
    let result: Result<(), Box<dyn std::error::Error>> =
        tokio::time::timeout(LIMIT, call).await.expect("no hang");
    assert!(result.is_err(), "a plaintext call was answered");
}

#[tokio::test]
async fn the_certificate_is_reloaded_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_certificate(dir.path(), "a");
    let b = make_certificate(dir.path(), "b");
    install(dir.path(), "a");
    let server = start(dir.path()).await;
    let both = [a.as_str(), b.as_str()];
    assert_eq!(
        presented(&connect(server.addr, &both, b"h2").await),
        der(&a)
    );

    install(dir.path(), "b");
    server.reload.unbounded_send(()).unwrap();
    // The reload runs on the server's task: new connections see it once it has run.
    let mut seen = presented(&connect(server.addr, &both, b"h2").await);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while seen != der(&b) && tokio::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
        seen = presented(&connect(server.addr, &both, b"h2").await);
    }
    assert_eq!(seen, der(&b), "the new certificate is served");

    // A broken file: the server keeps the certificate it has.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    server.reload.unbounded_send(()).unwrap();
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        presented(&connect(server.addr, &both, b"h2").await),
        der(&b)
    );
}
