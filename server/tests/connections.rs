//! Connections: the limit on how many are open (idle ones shed first, then refusal at once), and
//! a server out of file descriptors that keeps serving its clients and resumes accepting.

mod common;

use std::time::Duration;

use common::{process::ServerProcess, TestServer};
use futures::{channel::mpsc, SinkExt, StreamExt};
use order_api::pb::order_management_client::OrderManagementClient;
use order_server::Config;
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::transport::{Channel, Endpoint};

/// Only a broken server makes a test wait this long.
const LIMIT: Duration = Duration::from_secs(10);

async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
}

async fn get_106(channel: Channel) -> Result<String, tonic::Status> {
    let mut client = OrderManagementClient::new(channel);
    let order = client.get_order("106".to_string()).await?.into_inner();
    Ok(order.id)
}

#[tokio::test]
async fn beyond_max_connections_idle_ones_are_shed_first_then_new_ones_refused_at_once() {
    let mut config = Config::for_tests();
    config.max_connections = Some(2.try_into().unwrap());
    let server = TestServer::start_with(config).await;

    // Two connections, each with a call in flight (a processOrders stream left open).
    let mut busy = Vec::new();
    for _ in 0..2 {
        let channel = connect(&server.url()).await.unwrap();
        let (mut ids, ids_rx) = mpsc::unbounded::<String>();
        ids.send("102".into()).await.unwrap();
        let shipments = OrderManagementClient::new(channel.clone())
            .process_orders(ids_rx)
            .await
            .unwrap()
            .into_inner();
        busy.push((channel, ids, shipments));
    }

    // A third is refused at once: nothing is idle to make room.
    let refused = tokio::time::timeout(LIMIT, async {
        match connect(&server.url()).await {
            Err(error) => Err(error.to_string()),
            Ok(channel) => get_106(channel).await.map_err(|status| status.to_string()),
        }
    })
    .await
    .expect("refused at once, not left waiting");
    assert!(refused.is_err(), "{refused:?}");

    // One call ends; its connection stays open but idle, and makes room for a newcomer.
    let (channel, ids, mut shipments) = busy.pop().unwrap();
    drop(ids);
    while shipments.next().await.is_some() {}
    let newcomer = tokio::time::timeout(LIMIT, async {
        get_106(connect(&server.url()).await.unwrap()).await
    })
    .await
    .expect("served");
    assert_eq!(newcomer.unwrap(), "106");
    drop(channel);

    // The busy connection was never touched: its stream still works.
    let (_, mut ids, mut shipments) = busy.pop().unwrap();
    drop(ids.close().await);
    let shipment = tokio::time::timeout(LIMIT, shipments.message())
        .await
        .expect("the busy stream still answers")
        .expect("a shipment");
    assert!(shipment.is_some());
}

/// Opens `most` silent raw connections to `addr`.
async fn fill(addr: &str, most: usize) -> Vec<TcpStream> {
    let mut open = Vec::new();
    for _ in 0..most {
        open.push(TcpStream::connect(addr).await.expect("the kernel accepts"));
    }
    open
}

/// How many of `streams` the server closes (EOF) within a second.
async fn closed_by_server(streams: &mut [TcpStream]) -> usize {
    let reads = streams.iter_mut().map(|stream| async move {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await;
        matches!(read, Ok(Ok(0) | Err(_)))
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .filter(|&closed| closed)
        .count()
}

#[test]
fn by_default_connections_stop_short_of_the_descriptor_limit_and_silent_ones_make_room() {
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", db.path().join("orders.db").display());
    // 200 descriptors: the default limit is 150 connections, 50 kept for everything else.
    let server = ServerProcess::start_with_fd_limit(200, &["--database", &url]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = connect(&server.url()).await.unwrap();
        assert_eq!(get_106(client.clone()).await.unwrap(), "106");

        // 170 sockets that never send a byte: 149 fill the slots the client left, and each of
        // the other 21 takes the place of one of them, so 21 are closed by the server.
        let mut silent = fill(&server.addr, 170).await;
        let closed = closed_by_server(&mut silent).await;
        assert!((21..=25).contains(&closed), "{closed} closed by the server");
        // The client that uses its connection keeps it, and the server keeps descriptors for
        // the database.
        assert_eq!(get_106(client.clone()).await.unwrap(), "106");
        let mut writer = OrderManagementClient::new(client.clone());
        writer
            .add_order(order_api::pb::Order {
                items: vec!["Sony".into()],
                destination: "Colombo".into(),
                price: 1.0,
                ..Default::default()
            })
            .await
            .expect("the database still opens what it needs");

        // A newcomer is served too.
        let again = tokio::time::timeout(LIMIT, async {
            get_106(connect(&server.url()).await.unwrap()).await
        })
        .await
        .expect("served");
        assert_eq!(again.unwrap(), "106");
    });
}

#[test]
fn out_of_file_descriptors_the_server_serves_its_clients_and_resumes_accepting() {
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", db.path().join("orders.db").display());
    // A limit above what the descriptors allow: the process really runs out.
    let server = ServerProcess::start_with_fd_limit(
        100,
        &["--database", &url, "--max-connections", "10000"],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(async {
        let client = connect(&server.url()).await.unwrap();
        assert_eq!(get_106(client.clone()).await.unwrap(), "106");

        let silent = fill(&server.addr, 150).await;
        // Wait until the server has said it is out of descriptors.
        let (server, said) = tokio::task::spawn_blocking(move || {
            let said = server.log_until("out of file descriptors", LIMIT);
            (server, said)
        })
        .await
        .unwrap();
        said.expect("the log says it ran out of file descriptors");

        // The connected client is served on.
        assert_eq!(get_106(client.clone()).await.unwrap(), "106");

        // A new client is served once descriptors free up.
        let newcomer = tokio::spawn({
            let url = server.url();
            async move { get_106(connect(&url).await.unwrap()).await }
        });
        drop(silent);
        let served = tokio::time::timeout(LIMIT, newcomer)
            .await
            .expect("served once descriptors are free")
            .unwrap();
        assert_eq!(served.unwrap(), "106");
        server
    });
    // It says so when it accepts again (the line reaches this test's reader some time after the
    // newcomer's answer), and once per time it ran out, not once per retry.
    let log = server
        .log_until("accepting connections again", LIMIT)
        .unwrap_or_else(|log| panic!("the log never says it accepts again: {log:?}"));
    let ran_out = log
        .iter()
        .filter(|line| line.contains("out of file descriptors"))
        .count();
    assert_eq!(ran_out, 0, "said again while still out: {log:?}");
}

/// A socket that starts what a client starts, then stops.
#[derive(Debug, Clone, Copy)]
enum HalfOpen {
    /// The first bytes of a TLS handshake record.
    TlsHandshake,
    /// An HTTP/1.1 request head cut half-way.
    Http1Head,
    /// The HTTP/2 connection preface, and nothing after it.
    Http2Preface,
}

impl HalfOpen {
    fn bytes(self) -> &'static [u8] {
        match self {
            HalfOpen::TlsHandshake => b"\x16\x03\x01",
            HalfOpen::Http1Head => {
                b"POST /OrderManagement/getOrder HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            }
            HalfOpen::Http2Preface => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        }
    }
}

#[tokio::test]
async fn half_open_sockets_of_every_kind_are_shed_first_and_closed_at_the_handshake_deadline() {
    for kind in [
        HalfOpen::TlsHandshake,
        HalfOpen::Http1Head,
        HalfOpen::Http2Preface,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests();
        config.max_connections = Some(4.try_into().unwrap());
        config.handshake_timeout = Duration::from_secs(2);
        // Not what closes them: the quiet watcher alone would take a minute.
        config.header_read_timeout = Duration::from_secs(60);
        let mut tls = None;
        if let HalfOpen::TlsHandshake = kind {
            let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
            std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
            config.tls_cert = Some(dir.path().join("cert.pem"));
            config.tls_key = Some(dir.path().join("key.pem"));
            tls = Some(cert.cert.pem());
        }
        let server = TestServer::start_with(config).await;

        // Four half-open sockets take every slot.
        let mut attackers = fill(&server.addr.to_string(), 4).await;
        for socket in &mut attackers {
            use tokio::io::AsyncWriteExt;
            socket.write_all(kind.bytes()).await.unwrap();
        }

        // A real client is served all the same: a half-open socket makes room at once.
        let channel = tokio::time::timeout(LIMIT, async {
            match &tls {
                None => connect(&server.url()).await,
                Some(pem) => {
                    let tls = tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                        .domain_name("localhost");
                    Endpoint::from_shared(format!("https://{}", server.addr))
                        .unwrap()
                        .tls_config(tls)
                        .unwrap()
                        .connect()
                        .await
                }
            }
        })
        .await
        .expect("connected in time")
        .unwrap_or_else(|error| panic!("{kind:?}: a real client is kept out: {error:?}"));
        let id = tokio::time::timeout(LIMIT, get_106(channel))
            .await
            .expect("answered in time");
        assert_eq!(
            id.map_err(|status| status.to_string()),
            Ok("106".to_string()),
            "{kind:?}"
        );

        // The rest are closed by the server at the handshake deadline, long before the quiet
        // watcher would.
        let closed = futures::future::join_all(attackers.iter_mut().map(|socket| async move {
            let mut rest = Vec::new();
            tokio::time::timeout(LIMIT, socket.read_to_end(&mut rest))
                .await
                .is_ok()
        }))
        .await;
        assert!(closed.iter().all(|&closed| closed), "{kind:?}: {closed:?}");
    }
}
