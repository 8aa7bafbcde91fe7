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
