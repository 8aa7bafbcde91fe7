//! What the store promises, checked against the real binary and real databases: acknowledged
//! writes survive `kill -9`, `updateOrders` is all or nothing across a crash, several servers on
//! one PostgreSQL agree and never hand out the same ID, and a database outage gives clear
//! `UNAVAILABLE`s, `NOT_SERVING` health, and service again once it is back.

mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{config_on, open_store, postgres::Cluster, process::ServerProcess, Db, TestServer};
use futures::{channel::mpsc, SinkExt, StreamExt};
use order_api::pb::{order_management_client::OrderManagementClient, Order};
use order_server::OrderService;
use rstest::rstest;
use sqlx::Connection;
use tonic::{transport::Channel, Code, Request};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// Only a hang reaches this.
const LIMIT: Duration = Duration::from_secs(30);

fn order(id: &str, item: &str) -> Order {
    Order {
        id: id.into(),
        items: vec![item.into()],
        description: "durability test".into(),
        price: 12.5,
        destination: "Portland, OR".into(),
    }
}

async fn connect(url: String) -> OrderManagementClient<Channel> {
    let channel = Channel::from_shared(url)
        .unwrap()
        .connect_timeout(LIMIT)
        .connect()
        .await
        .expect("connect");
    OrderManagementClient::new(channel)
}

/// The test's own database, alive for the whole test (both server processes use it).
async fn database(db: Db) -> common::TestDb {
    db.create().await
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_orders_survive_kill_9_and_nothing_is_seeded_again(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let db = database(db).await;
    let mut server = ServerProcess::start(&["--database", &db.url]);
    let mut client = connect(server.url()).await;

    // A changed sample order must stay changed: the database is never seeded again.
    let changed = Order {
        id: "103".into(),
        ..order("", "Apple Watch S10")
    };
    let (mut tx, rx) = mpsc::channel(1);
    tx.send(changed.clone()).await.unwrap();
    drop(tx);
    client.update_orders(rx).await.expect("103 updated");

    // Eight clients add orders as fast as they can; the server is killed while they do.
    let stop = Arc::new(AtomicBool::new(false));
    let (acked_tx, mut acked) = tokio::sync::mpsc::unbounded_channel::<Order>();
    let mut writers = Vec::new();
    for writer in 0..8 {
        let mut client = client.clone();
        let stop = stop.clone();
        let acked_tx = acked_tx.clone();
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Half with an ID the server assigns, half with one of their own.
                let id = if n % 2 == 0 {
                    String::new()
                } else {
                    format!("w{writer}-{n}")
                };
                let new = order(&id, &format!("Item {writer}/{n}"));
                match client.add_order(new.clone()).await {
                    Ok(reply) => {
                        let _ = acked_tx.send(Order {
                            id: reply.into_inner(),
                            ..new
                        });
                    }
                    // The server is gone: what was not acknowledged may or may not be there.
                    Err(_) => break,
                }
            }
        }));
    }
    drop(acked_tx);
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 200 {
        acknowledged.push(acked.recv().await.expect("writers are running"));
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    while let Ok(order) = acked.try_recv() {
        acknowledged.push(order);
    }

    let restarted = ServerProcess::start(&["--database", &db.url]);
    let mut client = connect(restarted.url()).await;
    for expected in &acknowledged {
        let stored = client
            .get_order(expected.id.clone())
            .await
            .unwrap_or_else(|status| panic!("acknowledged order {} lost: {status}", expected.id))
            .into_inner();
        assert_eq!(&stored, expected);
    }
    // The search index was written in the same transactions: after the crash it has exactly
    // the orders whose items have the term, no more and no fewer.
    assert_search_index_agrees(&db.url, "item").await;
    let ids: std::collections::HashSet<_> = acknowledged.iter().map(|o| &o.id).collect();
    assert_eq!(ids.len(), acknowledged.len(), "every order got its own ID");
    let order_103 = client.get_order("103".to_string()).await.unwrap();
    assert_eq!(order_103.into_inner(), changed, "103 was seeded again");
}

/// The trigram index (with SQLite's tail of orders not indexed yet) finds the same orders for
/// `term` (lowercase ASCII) as reading every order's search text does.
async fn assert_search_index_agrees(url: &str, term: &str) {
    let like = format!("%{term}%");
    let (indexed, read): (i64, i64) = if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        let trigrams: Vec<String> = (0..term.len() - 2)
            .map(|at| format!("\"{}\"", &term[at..at + 3]))
            .collect();
        // What the index finds, and the tail of orders not indexed yet, which none of its
        // entries may name.
        let (indexed, tail, stray): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM order_search
                         CROSS JOIN orders ON orders.seq = order_search.rowid
                     WHERE order_search MATCH ?1 AND orders.search_text LIKE ?2),
                    (SELECT count(*) FROM orders
                     WHERE seq > indexed_upto AND search_text LIKE ?2),
                    (SELECT count(*) FROM order_search WHERE rowid > indexed_upto)
             FROM search_tail",
        )
        .bind(trigrams.join(" AND "))
        .bind(&like)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(stray, 0, "orders both in the index and in the tail");
        let indexed = indexed + tail;
        let read = sqlx::query_scalar("SELECT count(*) FROM orders WHERE search_text LIKE ?1")
            .bind(&like)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        (indexed, read)
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let count = "SELECT count(*) FROM orders WHERE search_text LIKE $1";
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut conn)
            .await
            .unwrap();
        let indexed = sqlx::query_scalar(count)
            .bind(&like)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        for set in [
            "SET enable_seqscan = on",
            "SET enable_bitmapscan = off",
            "SET enable_indexscan = off",
        ] {
            sqlx::query(set).execute(&mut conn).await.unwrap();
        }
        let read = sqlx::query_scalar(count)
            .bind(&like)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        (indexed, read)
    };
    assert!(read > 0, "no order has {term:?}");
    assert_eq!(
        indexed, read,
        "the index and the orders disagree on {term:?}"
    );
}

#[rstest]
#[tokio::test]
async fn an_update_cut_off_by_a_crash_applies_nothing(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let db = database(db).await;
    let mut server = ServerProcess::start(&["--database", &db.url]);
    let client = connect(server.url()).await;
    let (mut orders, rx) = mpsc::channel(1);
    let call = tokio::spawn({
        let mut client = client.clone();
        async move { client.update_orders(rx).await }
    });
    for id in ["102", "103", "104"] {
        orders.send(order(id, "changed")).await.unwrap();
    }
    // The stream is still open when the server dies.
    server.kill();
    assert!(call.await.unwrap().is_err());

    let restarted = ServerProcess::start(&["--database", &db.url]);
    let mut client = connect(restarted.url()).await;
    for id in ["102", "103", "104"] {
        let stored = client.get_order(id.to_string()).await.unwrap().into_inner();
        assert_ne!(
            stored.items,
            ["changed"],
            "order {id} was changed by a cut-off update"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_share_orders_and_never_share_an_id() {
    let db = database(Db::Postgres).await;
    let first = ServerProcess::start(&["--database", &db.url]);
    let second = ServerProcess::start(&["--database", &db.url]);
    let mut one = connect(first.url()).await;
    let mut two = connect(second.url()).await;

    let id = one
        .add_order(order("", "Added through the first"))
        .await
        .unwrap()
        .into_inner();
    let seen = two.get_order(id.clone()).await.unwrap().into_inner();
    assert_eq!(seen.items, ["Added through the first"]);

    // Concurrent adds through both get distinct IDs.
    let mut adders = Vec::new();
    for n in 0..16 {
        let mut client = if n % 2 == 0 { one.clone() } else { two.clone() };
        adders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..25 {
                ids.push(
                    client
                        .add_order(order("", "Concurrent"))
                        .await
                        .unwrap()
                        .into_inner(),
                );
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for adder in adders {
        ids.extend(adder.await.unwrap());
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "an ID was given twice");

    // Shipments numbered by both servers get distinct IDs too.
    let mut shipment_ids = HashMap::new();
    for round in 0..5 {
        for client in [&mut one, &mut two] {
            let ids = futures::stream::iter(["102", "103", "104", "105", "106"].map(String::from));
            let mut shipments = client.process_orders(ids).await.unwrap().into_inner();
            while let Some(shipment) = shipments.next().await {
                let shipment = shipment.unwrap();
                let previous = shipment_ids.insert(shipment.id.clone(), round);
                assert!(previous.is_none(), "{} given twice", shipment.id);
            }
        }
    }
    assert_eq!(shipment_ids.len(), 5 * 2 * 2);
}

/// Waits until health reports `want` for the order service.
async fn health_becomes(health: &mut HealthClient<Channel>, want: ServingStatus) {
    let mut statuses = health
        .watch(HealthCheckRequest {
            service: "OrderManagement".into(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(LIMIT, async {
        while let Some(status) = statuses.next().await {
            if status.unwrap().status == want as i32 {
                return;
            }
        }
        panic!("the health stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("health never reported {want:?}"));
}

#[tokio::test]
async fn a_postgres_outage_is_unavailable_not_serving_and_then_over() {
    let cluster = Cluster::start();
    let url = cluster.create_database().await;
    let mut config = config_on(&common::TestDb::existing(url));
    config.database_timeout = Duration::from_secs(1);
    config.health_interval = Duration::from_millis(200);
    let orders = OrderService::new(open_store(&config).await, config.batch_size);
    let server = TestServer::start_service(orders, config).await;
    let mut client = server.native().await;
    let mut health = HealthClient::new(server.channel().await);
    client.get_order("106".to_string()).await.expect("served");

    cluster.stop();
    let mut call = Request::new("106".to_string());
    // Longer than the database timeout: the answer must be UNAVAILABLE, not a deadline.
    call.set_timeout(Duration::from_secs(10));
    let status = client.get_order(call).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("database"), "{status:?}");
    let status = client.add_order(order("", "x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    health_becomes(&mut health, ServingStatus::NotServing).await;

    cluster.restart();
    health_becomes(&mut health, ServingStatus::Serving).await;
    let served = client
        .get_order("106".to_string())
        .await
        .expect("served again");
    assert_eq!(served.into_inner().id, "106");
    client
        .add_order(order("", "back"))
        .await
        .expect("writes again");
}

/// The tests' PostgreSQL starts even when the port found free is taken before it binds it (by
/// any process's outgoing connection): it moves on to the next port found free.
#[tokio::test]
async fn the_test_cluster_starts_when_its_first_port_is_taken_meanwhile() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let mut ports = vec![taken_port];
    ports.extend(common::postgres::free_ports(2));
    let cluster = Cluster::start_on_one_of(&ports);
    assert_ne!(cluster.port, taken_port);
    let url = cluster.create_database().await;
    let store = open_store(&config_on(&common::TestDb::existing(url))).await;
    assert!(store.get("106").await.is_ok(), "the sample order is there");
}
