//! Soak: a few thousand mixed calls over many connections to the real binary while other
//! clients misbehave (stall mid-request, leave mid-stream, send garbage). Every well-behaved
//! call must succeed; afterwards nothing may be left over (open streams and connections back to
//! the test's own, memory back near where it started) and the log must hold no panic.

mod common;

use std::time::Duration;

use common::{grpc_web_client, metrics_at, process::ServerProcess};
use futures::{channel::mpsc, SinkExt, StreamExt};
use order_api::pb::{order_management_client::OrderManagementClient, Order};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tonic::transport::Channel;

/// Well-behaved clients, each on its own connection, and the rounds of calls each makes.
const CLIENTS: usize = 24;
const ROUNDS: usize = 15;
/// Calls in one round: get, get (gRPC-Web), add, search, update, process.
const CALLS_PER_ROUND: usize = 6;

/// Only a broken server makes the test wait this long for anything.
const LIMIT: Duration = Duration::from_secs(30);

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn order(n: usize) -> Order {
    Order {
        items: vec![format!("Soak item {n}")],
        destination: format!("Soak City {}", n % 7),
        price: n as f32,
        ..Default::default()
    }
}

/// One round of every RPC, the way a good client makes them. Returns how many succeeded.
async fn round(channel: Channel, web: &str, n: usize) -> usize {
    let mut client = OrderManagementClient::new(channel);
    let mut ok = 0;
    ok += usize::from(client.get_order("106".to_string()).await.is_ok());
    ok += usize::from(
        grpc_web_client(web)
            .get_order("104".to_string())
            .await
            .is_ok(),
    );
    let added = client.add_order(order(n)).await.map(|r| r.into_inner());
    ok += usize::from(added.is_ok());
    if let Ok(mut found) = client
        .search_orders("Soak City".to_string())
        .await
        .map(|r| r.into_inner())
    {
        let mut fine = true;
        // Read a few pages' worth, then leave politely (drop = cancel).
        for _ in 0..3 {
            fine &= !matches!(found.next().await, Some(Err(_)));
        }
        ok += usize::from(fine);
    }
    if let Ok(id) = &added {
        let mut changed = order(n);
        changed.id = id.clone();
        changed.description = "updated".into();
        ok += usize::from(
            client
                .update_orders(futures::stream::iter([changed]))
                .await
                .is_ok(),
        );
        let shipments = client
            .process_orders(futures::stream::iter([id.clone(), "102".to_string()]))
            .await;
        if let Ok(shipments) = shipments {
            let all: Vec<_> = shipments.into_inner().collect().await;
            ok += usize::from(!all.is_empty() && all.iter().all(Result::is_ok));
        }
    }
    ok
}

/// Clients that misbehave for as long as `until` is not done.
async fn misbehave(addr: String, url: String, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut n = 0u64;
    let mut stalled = Vec::new();
    while !*stop.borrow() {
        n += 1;
        match n % 4 {
            // Half a request head, then nothing.
            0 => {
                if let Ok(mut stream) = TcpStream::connect(&addr).await {
                    let _ = stream.write_all(b"POST /OrderManagement/getOrder HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-ty").await;
                    stalled.push(stream);
                }
            }
            // Garbage, then gone.
            1 => {
                if let Ok(mut stream) = TcpStream::connect(&addr).await {
                    let garbage: Vec<u8> = (0..512u32).map(|i| (i * 7919 % 251) as u8).collect();
                    let _ = stream.write_all(&garbage).await;
                }
            }
            // A stream left in the middle: processOrders with its request never ended.
            2 => {
                if let Ok(channel) = Channel::from_shared(url.clone()).unwrap().connect().await {
                    let (mut ids, ids_rx) = mpsc::unbounded::<String>();
                    let _ = ids.send("103".into()).await;
                    let mut client = OrderManagementClient::new(channel);
                    if let Ok(shipments) = client.process_orders(ids_rx).await {
                        // Gone before the stream ends, its request still open.
                        drop(shipments);
                    }
                    drop(ids);
                }
            }
            // Bad gRPC-Web: a frame longer than its body.
            _ => {
                if let Ok(mut stream) = TcpStream::connect(&addr).await {
                    let body = b"\x00\x00\x00\x10\x00\x0a\x03106";
                    let head = format!(
                        "POST /OrderManagement/getOrder HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/grpc-web+proto\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body).await;
                }
            }
        }
        if stalled.len() > 40 {
            stalled.clear();
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::task::yield_now() => {}
        }
    }
}

/// One soak: the good clients' calls while the bad ones misbehave; checks every good call
/// succeeded and that connections and streams settle. Returns the server's RSS afterwards.
async fn soak(server: &ServerProcess) -> u64 {
    let web = server.url();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let bad: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(misbehave(
                server.addr.clone(),
                server.url(),
                stopped.clone(),
            ))
        })
        .collect();
    let good: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (url, web) = (server.url(), web.clone());
            tokio::spawn(async move {
                let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
                let mut ok = 0;
                for n in 0..ROUNDS {
                    ok += round(channel.clone(), &web, client * ROUNDS + n + 1).await;
                }
                ok
            })
        })
        .collect();
    let mut succeeded = 0;
    for client in good {
        succeeded += tokio::time::timeout(LIMIT, client)
            .await
            .expect("the good clients finish")
            .unwrap();
    }
    stop.send_replace(true);
    for client in bad {
        client.await.unwrap();
    }
    assert_eq!(succeeded, CLIENTS * ROUNDS * CALLS_PER_ROUND);

    // Everything the clients opened is closed again: only the scrape's own connection is
    // left, and no stream.
    let settled = async {
        loop {
            let m = metrics_at(&server.url()).await;
            let (connections, streams) = (
                m.value("order_server_open_connections", &[]),
                m.value("order_server_open_streams", &[]),
            );
            if connections <= 1.0 && streams == 0.0 {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let m = tokio::time::timeout(LIMIT, settled)
        .await
        .expect("connections and streams back to none");
    let started = m.value("grpc_server_started_total", &[("grpc_method", "getOrder")]);
    assert!(started >= (CLIENTS * ROUNDS * 2) as f64, "{started}");

    resident_kib(server.child.id())
}

#[test]
fn a_soak_of_mixed_calls_with_misbehaving_clients_leaves_nothing_behind() {
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", db.path().join("orders.db").display());
    let server = ServerProcess::start(&[
        "--database",
        &url,
        "--header-read-timeout",
        "1",
        "--http2-keepalive",
        "1",
    ]);
    let pid = server.child.id();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let web = server.url();
    runtime.block_on(async {
        // Warm up: one round, so that memory at the start includes what any server needs.
        let warm = Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        assert_eq!(round(warm, &web, 0).await, CALLS_PER_ROUND);
        let rss_start = resident_kib(pid);

        // Twice the same soak: caches fill during the first and stay full; a leak grows on.
        let rss_first = soak(&server).await;
        let rss_second = soak(&server).await;
        eprintln!(
            "soak: RSS {rss_start} KiB after warm-up, {rss_first} KiB after one soak, \
             {rss_second} KiB after two"
        );
        assert!(
            rss_first < rss_start + 32 * 1024,
            "RSS grew from {rss_start} KiB to {rss_first} KiB"
        );
        assert!(
            rss_second < rss_first + 4 * 1024,
            "RSS grew from {rss_first} KiB to {rss_second} KiB in the second soak: a leak"
        );
    });
    drop(runtime);
    let mut server = server;
    assert!(server.terminate().success());
    let log: Vec<String> = server.log.iter().collect();
    let panics: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "{panics:?}");
}
