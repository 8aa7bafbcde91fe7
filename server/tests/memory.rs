//! Memory stays bounded whatever the amount of stored data: a search whose client does not read
//! does not make the server copy the matches, and a long `updateOrders` is applied as it streams
//! instead of being buffered. Measured on the real binary's resident memory, with about 50 MB of
//! orders stored.

mod common;

use common::process::ServerProcess;
use futures::StreamExt;
use order_api::pb::Order;

/// Orders stored, each as large as validation allows (100 items of 200 four-byte characters):
/// about 80 KB each, 48 MB in all.
const ORDERS: usize = 600;
/// What the server may grow by while it serves either call: a few pages of orders and the
/// connection's buffers, far less than the 48 MB a copy would take.
const BOUND_KIB: u64 = 24 * 1024;

fn big_order(n: usize) -> Order {
    Order {
        items: (0..100).map(|_| "\u{1D11E}".repeat(200)).collect(),
        description: format!("big order {n}"),
        price: 1.0,
        destination: "Memory Lane".into(),
        ..Default::default()
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets the process's peak resident memory (VmHWM) to what it uses now.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

type Client =
    order_api::pb::order_management_client::OrderManagementClient<tonic::transport::Channel>;

/// The binary on a new SQLite database, without a read cache (what is measured is the calls, not
/// a cache filling), and its folder.
fn start() -> (ServerProcess, tempfile::TempDir) {
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", db.path().join("orders.db").display());
    (
        ServerProcess::start(&["--database", &url, "--cache-mb", "0"]),
        db,
    )
}

/// A client of `server` without message size limits, and the IDs of the `count` big orders it
/// added.
async fn with_big_orders(server: &ServerProcess, count: usize) -> (Client, Vec<String>) {
    let client = server
        .client()
        .await
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let adds = futures::stream::iter(0..count)
        .map(|n| {
            let mut client = client.clone();
            async move { client.add_order(big_order(n)).await.unwrap().into_inner() }
        })
        .buffer_unordered(8);
    let ids = adds.collect().await;
    (client, ids)
}

#[test]
fn memory_stays_bounded_for_a_search_nobody_reads_and_a_long_update() {
    let (server, _db) = start();
    let pid = server.child.id();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (client, ids) = with_big_orders(&server, ORDERS).await;
        // One search and one update first, so that what any call needs is in place.
        let mut warm = client.clone();
        drop(warm.search_orders("\u{1D11E}".to_string()).await.unwrap());
        let baseline = status_kib(pid, "VmRSS:");

        // A search matching every stored order (searches match items), read once, then held unread. A server that
        // copies the matches has done so before it sends the first.
        reset_peak(pid);
        let mut search = client.clone();
        let mut found = search
            .search_orders("\u{1D11E}".to_string())
            .await
            .unwrap()
            .into_inner();
        assert!(found.message().await.unwrap().is_some());
        // And another call answered meanwhile.
        let mut other = client.clone();
        other.get_order(ids[0].clone()).await.unwrap();
        let peak = status_kib(pid, "VmHWM:");
        assert!(
            peak < baseline + BOUND_KIB,
            "a search nobody reads took the server from {baseline} KiB to {peak} KiB"
        );
        drop(found);

        // Every stored order replaced in one updateOrders, produced as it is sent.
        reset_peak(pid);
        let updates = futures::stream::iter(ids.clone()).map(|id| {
            let mut order = big_order(0);
            order.id = id;
            order.description = "updated".into();
            order
        });
        let mut update = client.clone();
        let reply = update.update_orders(updates).await.unwrap().into_inner();
        assert!(reply.contains(&ORDERS.to_string()), "{reply}");
        let peak = status_kib(pid, "VmHWM:");
        assert!(
            peak < baseline + BOUND_KIB,
            "an update of {ORDERS} orders took the server from {baseline} KiB to {peak} KiB"
        );
        eprintln!("memory: {baseline} KiB with {ORDERS} big orders stored, peak {peak} KiB during the update");
    });
}

/// A native gRPC connection whose client grants the server only HTTP/2's initial 64 KiB window
/// and never more: its streams are never read.
async fn stingy_client(addr: &str) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    order_api::pb::order_management_client::OrderManagementClient::new(channel)
        .max_decoding_message_size(usize::MAX)
}

/// Opens `count` searches matching every stored order on `client`'s connection, and reads none.
async fn unread_searches(client: &Client, count: usize) -> Vec<tonic::Streaming<Order>> {
    futures::future::join_all((0..count).map(|_| {
        let mut client = client.clone();
        async move {
            client
                .search_orders("\u{1D11E}".to_string())
                .await
                .unwrap()
                .into_inner()
        }
    }))
    .await
}

#[test]
fn unread_searches_hold_a_bounded_amount_of_memory_and_other_calls_are_served() {
    let (server, _db) = start();
    let pid = server.child.id();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // 300 orders of about 82 KB.
        let (client, ids) = with_big_orders(&server, 300).await;
        let mut warm = client.clone();
        drop(warm.search_orders("\u{1D11E}".to_string()).await.unwrap());
        let baseline = status_kib(pid, "VmRSS:");

        // 30 unread searches on one connection.
        let stingy = stingy_client(&server.addr).await;
        let thirty = unread_searches(&stingy, 30).await;
        // Every one has started: each has its answer's head.
        assert_eq!(thirty.len(), 30);
        let mut other = client.clone();
        other.get_order(ids[0].clone()).await.unwrap();
        let held = status_kib(pid, "VmRSS:").saturating_sub(baseline);
        eprintln!("memory: 30 unread searches hold {held} KiB");
        assert!(held < 50 * 1024, "30 unread searches hold {held} KiB");

        // 1 000 of them: 10 connections of 100.
        let mut thousand = Vec::new();
        for _ in 0..10 {
            let stingy = stingy_client(&server.addr).await;
            thousand.push(unread_searches(&stingy, 100).await);
        }
        // Other calls are still served, a search among them.
        other.get_order(ids[1].clone()).await.unwrap();
        let mut reader = client.clone();
        let mut found = reader
            .search_orders("\u{1D11E}".to_string())
            .await
            .unwrap()
            .into_inner();
        let mut read = 0;
        while found.message().await.unwrap().is_some() {
            read += 1;
        }
        assert_eq!(read, ids.len(), "a search read to its end");
        let held = status_kib(pid, "VmRSS:").saturating_sub(baseline);
        eprintln!("memory: 1 030 unread searches hold {held} KiB");
        assert!(held < 150 * 1024, "1 030 unread searches hold {held} KiB");
        drop(thousand);
        drop(thirty);
    });
}

/// Searches over 100 000 small orders that nobody reads, of a common term (they walk the ID
/// index) and of a sparse one (one order in 100: they go to the trigram index and sort its
/// candidates): what they hold is a page each, whatever the store's size.
#[test]
fn unread_searches_over_100_000_orders_hold_a_bounded_amount_of_memory() {
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", db.path().join("orders.db").display());
    // A debug build sharing the machine with other tests: the sparse searches' first pages
    // (4 096 orders each) may keep the pool busy for a while.
    let server = ServerProcess::start(&[
        "--database",
        &url,
        "--cache-mb",
        "0",
        "--database-timeout",
        "60",
    ]);
    let pid = server.child.id();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = server.client().await;
        for call in 0..10 {
            let orders = (0..10_000).map(move |n| {
                let n = call * 10_000 + n;
                let mut items = vec![format!("bulk item {n}")];
                if n % 100 == 0 {
                    items.push(format!("sparse item {n}"));
                }
                Order {
                    items,
                    destination: "Lisbon".into(),
                    price: 1.0,
                    ..Default::default()
                }
            });
            let mut adder = client.clone();
            adder
                .add_orders(futures::stream::iter(orders))
                .await
                .unwrap();
        }
        let mut warm = client.clone();
        let mut found = warm
            .search_orders("sparse".to_string())
            .await
            .unwrap()
            .into_inner();
        let mut sparse = 0;
        while found.message().await.unwrap().is_some() {
            sparse += 1;
        }
        assert_eq!(sparse, 1_000);
        let baseline = status_kib(pid, "VmRSS:");

        let stingy = stingy_client(&server.addr).await;
        let searches = futures::future::join_all((0..60).map(|n| {
            let mut client = stingy.clone();
            let text = if n % 2 == 0 { "bulk" } else { "sparse" };
            async move {
                client
                    .search_orders(text.to_string())
                    .await
                    .unwrap()
                    .into_inner()
            }
        }))
        .await;
        assert_eq!(searches.len(), 60);
        let mut other = client.clone();
        let found = other
            .search_orders("sparse item 99900".to_string())
            .await
            .unwrap();
        let mut found = found.into_inner();
        // Before pages were read on tasks of their own, this waited for a pooled connection
        // until --database-timeout, with every connection idle (see `Store::search`).
        assert!(found.message().await.unwrap().is_some());
        let held = status_kib(pid, "VmRSS:").saturating_sub(baseline);
        eprintln!("memory: 60 unread searches over 100 000 orders hold {held} KiB");
        assert!(
            held < 50 * 1024,
            "60 unread searches over 100 000 orders hold {held} KiB"
        );
        drop(searches);
    });
}
