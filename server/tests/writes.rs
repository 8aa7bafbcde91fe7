//! What a write promises, tried by clients that cancel, time out, retry and stay silent: a write
//! commits only for a call that ended cleanly and is still wanted, the cache never disagrees with
//! the database, `UNAVAILABLE` means "not applied", idle streams cannot starve the pool, and an
//! idempotency key makes a retried write apply once.

mod common;

use std::time::Duration;

use common::{config_on, open_store, Db, TestDb, TestServer};
use futures::{channel::mpsc, SinkExt};
use order_api::pb::Order;
use order_server::{Config, OrderService, Store, PREFETCH_BYTES};
use rstest::rstest;
use sqlx::Connection;
use tonic::{Code, Request};

/// Only a hang reaches this.
const LIMIT: Duration = Duration::from_secs(20);

fn order(id: &str, item: &str) -> Order {
    Order {
        id: id.into(),
        items: vec![item.into()],
        description: "written by writes.rs".into(),
        price: 1.0,
        destination: "Galle".into(),
    }
}

/// A server on a new database of `db`'s kind, with a handle to its store.
async fn start(mut config: Config, db: Db) -> (TestServer, Store, TestDb) {
    let db = db.create().await;
    config.database_url = db.url.clone();
    let store = open_store(&config).await;
    let orders = OrderService::new(store.clone(), config.batch_size);
    (TestServer::start_service(orders, config).await, store, db)
}

/// Waits (on the metrics) until the counter `series` of `method` reaches `n`.
async fn counted(server: &TestServer, series: &str, method: &str, n: f64) {
    server.counted(series, &[("grpc_method", method)], n).await;
}

/// Waits until the server has begun `n` calls of `method`.
async fn started(server: &TestServer, method: &str, n: f64) {
    counted(server, "grpc_server_started_total", method, n).await;
}

/// Waits until the server has received `n` messages of `method`.
async fn received(server: &TestServer, method: &str, n: f64) {
    counted(server, "grpc_server_msg_received_total", method, n).await;
}

/// Waits until `method` has ended a call with one of `codes` (Prometheus code names), then until
/// no write runs on a task of its own: after that, nothing of the call can still commit.
async fn ended(server: &TestServer, store: &Store, method: &str, codes: &[&str]) {
    tokio::time::timeout(LIMIT, async {
        loop {
            let metrics = server.metrics().await;
            let ended: f64 = codes
                .iter()
                .map(|&code| {
                    let labels = [("grpc_method", method), ("grpc_code", code)];
                    metrics.value("grpc_server_handled_total", &labels)
                })
                .sum();
            if ended >= 1.0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{method} ends with one of {codes:?}"));
    settled(store).await;
}

/// Waits until no write runs on a task of its own.
async fn settled(store: &Store) {
    tokio::time::timeout(LIMIT, store.writes_in_flight().wait_for(|&n| n == 0))
        .await
        .expect("the writes settle")
        .unwrap();
}

async fn missing(store: &Store, ids: &[&str]) {
    for id in ids {
        assert!(
            store.get(id).await.is_err(),
            "order {id} of a call that never ended well was stored"
        );
    }
}

/// Finding 1: a client that cancels a client stream half-way (tonic drops the call: HTTP/2
/// `RST_STREAM(CANCEL)`) stored the orders it had sent so far, as if the stream had ended.
#[rstest]
#[tokio::test]
async fn a_client_stream_cancelled_half_way_stores_nothing(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
    #[values("addOrders", "updateOrders")] method: &'static str,
) {
    let (server, store, _db) = start(Config::for_tests(), db).await;
    let mut client = server.native().await;
    let (mut orders, stream) = mpsc::unbounded::<Order>();
    let ids = match method {
        "addOrders" => ["c1", "c2", "c3"],
        _ => ["102", "103", "104"],
    };
    for id in ids {
        orders.send(order(id, "cancelled")).await.unwrap();
    }
    let call = tokio::spawn(async move {
        match method {
            "addOrders" => client.add_orders(stream).await,
            _ => client.update_orders(stream).await,
        }
    });
    received(&server, method, 3.0).await;
    // The client cancels with its stream still open.
    call.abort();
    let _ = call.await;
    ended(&server, &store, method, &["Canceled", "Aborted"]).await;
    match method {
        "addOrders" => missing(&store, &ids).await,
        _ => {
            for id in ids {
                let kept = store.get(id).await.unwrap();
                assert_ne!(kept.items, ["cancelled"], "order {id} was updated");
            }
        }
    }
    drop(orders);
}

/// Finding 1, by deadline: the client's deadline passes while it is still sending.
#[rstest]
#[tokio::test]
async fn a_client_stream_past_its_deadline_stores_nothing(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let (server, store, _db) = start(Config::for_tests(), db).await;
    let (mut orders, stream) = mpsc::unbounded::<Order>();
    orders.send(order("d1", "late")).await.unwrap();
    orders.send(order("d2", "late")).await.unwrap();
    let mut request = Request::new(stream);
    request.set_timeout(Duration::from_millis(300));
    let status = tokio::time::timeout(LIMIT, server.native().await.add_orders(request))
        .await
        .expect("ended by the deadline")
        .expect_err("past the deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    ended(
        &server,
        &store,
        "addOrders",
        &["Canceled", "Aborted", "DeadlineExceeded"],
    )
    .await;
    missing(&store, &["d1", "d2"]).await;
    drop(orders);
}

/// Holds SQLite's write lock from another connection, as another process could.
struct WriteLock(sqlx::SqliteConnection);

impl WriteLock {
    async fn take(url: &str) -> Self {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .unwrap();
        Self(conn)
    }

    async fn release(mut self) {
        sqlx::query("ROLLBACK").execute(&mut self.0).await.unwrap();
    }
}

/// Finding 3: `UNAVAILABLE` said "not applied, try again", and the order was stored once the
/// write lock came free: a client that retried as told stored it twice.
///
/// Two calls with one pooled connection while another process holds the write lock: the second
/// waits for the pool, gets the connection as the first gives up, and waits for the lock, which
/// comes free once both calls have answered. Whether the second's wait outlasts its answer is a
/// race, so the test makes it ten times.
#[tokio::test]
async fn unavailable_means_the_write_was_not_applied() {
    let mut config = Config::for_tests();
    config.database_connections = 1;
    config.database_timeout = Duration::from_millis(400);
    let (server, store, db) = start(config, Db::Sqlite).await;
    let client = server.native().await;
    for trial in 0..10 {
        let lock = WriteLock::take(&db.url).await;
        let ids = [format!("u{trial}a"), format!("u{trial}b")];
        let calls = ids.clone().map(|id| {
            let mut client = client.clone();
            tokio::spawn(async move { client.add_order(order(&id, "unavailable")).await })
        });
        for call in calls {
            let status = tokio::time::timeout(LIMIT, call)
                .await
                .expect("answered")
                .unwrap()
                .expect_err("the write lock is held");
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(status.message().contains("not applied"), "{status:?}");
        }
        lock.release().await;
        settled(&store).await;
        missing(&store, &[&ids[0], &ids[1]]).await;
    }
    // And a write goes through once the lock is free.
    let mut client = client;
    client
        .add_order(order("u-after", "unavailable"))
        .await
        .expect("stored now");
}

/// Finding 3 on PostgreSQL: another transaction holds a lock every insert waits for; the call
/// is told `UNAVAILABLE` and its order is not stored when the lock comes free.
#[tokio::test]
async fn unavailable_means_not_applied_on_postgres_too() {
    let mut config = Config::for_tests();
    config.database_timeout = Duration::from_millis(400);
    let (server, store, db) = start(config, Db::Postgres).await;
    let mut client = server.native().await;
    for keyed_call in [false, true] {
        let mut lock = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
        sqlx::query("LOCK TABLE orders IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut lock)
            .await
            .unwrap();
        let id = format!("pg-u-{keyed_call}");
        let status = match keyed_call {
            false => client.add_order(order(&id, "unavailable")).await,
            true => {
                client
                    .add_order(keyed(order(&id, "unavailable"), &id))
                    .await
            }
        }
        .expect_err("the lock is held");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
        settled(&store).await;
        missing(&store, &[&id]).await;
    }
}

/// Finding 2: a call that timed out while its commit waited for the lock left `getOrder`
/// answering from the cache what the database no longer held. Whatever the call's fate, the
/// cache and the database agree.
#[tokio::test]
async fn the_cache_agrees_with_the_database_after_a_dropped_update() {
    let mut config = Config::for_tests();
    config.database_timeout = Duration::from_secs(5);
    let (server, store, db) = start(config, Db::Sqlite).await;
    let mut client = server.native().await;
    // 103 is cached.
    let before = client
        .get_order("103".to_string())
        .await
        .unwrap()
        .into_inner();
    let lock = WriteLock::take(&db.url).await;
    let mut request = Request::new(futures::stream::iter([order("103", "changed")]));
    request.set_timeout(Duration::from_millis(300));
    let status = client
        .update_orders(request)
        .await
        .expect_err("the client's deadline passes while the lock is held");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    lock.release().await;
    settled(&store).await;
    let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    let stored: String = sqlx::query_scalar("SELECT items FROM orders WHERE id = '103'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let served = client
        .get_order("103".to_string())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serde_json::to_string(&served.items).unwrap(),
        stored,
        "getOrder and the database disagree"
    );
    // Timed out before its commit began: not applied.
    assert_eq!(served.items, before.items);
}

/// Finding 4: each idle client stream held a pooled connection while it waited for its client;
/// eight of them (one TCP connection) and every call needing the database got `UNAVAILABLE`.
#[rstest]
#[tokio::test]
async fn idle_client_streams_do_not_starve_the_pool(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let mut config = Config::for_tests();
    config.database_timeout = Duration::from_millis(500);
    config.cache_mb = 0;
    let (server, _store, _db) = start(config, db).await;
    let channel = server.channel().await;
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for n in 0..32 {
        let (orders, stream) = mpsc::unbounded::<Order>();
        senders.push(orders);
        let mut client =
            order_api::pb::order_management_client::OrderManagementClient::new(channel.clone());
        calls.push(tokio::spawn(async move {
            if n % 2 == 0 {
                client.add_orders(stream).await
            } else {
                client.update_orders(stream).await
            }
        }));
    }
    started(&server, "addOrders", 16.0).await;
    started(&server, "updateOrders", 16.0).await;
    let mut client = server.native().await;
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for id in ["102", "103", "104", "105", "106"] {
        let answered = tokio::time::timeout(LIMIT, client.get_order(id.to_string()))
            .await
            .unwrap_or_else(|_| panic!("getOrder {id} hung behind the idle streams"));
        answered.unwrap_or_else(|status| panic!("getOrder {id}: {status:?}"));
    }
    let serving = health
        .clone()
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, 1, "health says SERVING");
    drop(senders);
    for call in calls {
        let _ = call.await;
    }
}

/// Streams too long for memory (over 1 MiB of orders each) stage in the database under a permit:
/// at most half the pool at once, so eight of them held open leave `getOrder` answering; cancelled
/// half-way, none of them stores anything; and a long stream that ends cleanly is stored whole.
#[rstest]
#[tokio::test]
async fn long_client_streams_hold_at_most_half_the_pool_and_cancelled_store_nothing(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let mut config = Config::for_tests();
    config.cache_mb = 0;
    let (server, store, _db) = start(config, db).await;
    // About 20 KB each: 80 of them are over the 1 MiB a stream holds in memory.
    let big = |id: String| Order {
        id,
        items: (0..100).map(|_| "x".repeat(200)).collect(),
        ..order("", "")
    };
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    let mut ids = Vec::new();
    for n in 0..8 {
        let (mut orders, stream) = mpsc::unbounded::<Order>();
        for m in 0..80 {
            let id = format!("long-{n}-{m}");
            orders.send(big(id.clone())).await.unwrap();
            ids.push(id);
        }
        senders.push(orders);
        let mut client = server.native().await;
        calls.push(tokio::spawn(async move { client.add_orders(stream).await }));
    }
    // Half the pool's worth of streams (4) get permits and all their orders read; the others
    // wait for a permit, unread past the order that takes them to 1 MiB. Once all of those are
    // read, every stream has asked for a permit, and only the four with one hold a connection.
    let mut bytes = 0;
    let in_memory = 1
        + (0..80)
            .position(|m| {
                bytes += prost::Message::encoded_len(&big(format!("long-0-{m}")));
                bytes >= PREFETCH_BYTES
            })
            .expect("a stream is over 1 MiB") as u32;
    received(&server, "addOrders", f64::from(4 * 80 + 4 * in_memory)).await;
    let pool = store.pool_use();
    assert!(
        pool.open - pool.idle <= 4,
        "more than half the pool staging: {pool:?}"
    );
    let mut client = server.native().await;
    // A call waiting behind them for a connection would fail after `--database-timeout` with
    // `UNAVAILABLE`; the limit here only catches a hang. (A limit of 400 ms measured the
    // machine instead: on 2 cores a `getOrder` took up to 118 ms here, once over 400 ms; and a
    // `--database-timeout` of 500 ms failed the staging streams when other tests ran too.)
    for id in ["102", "103", "104", "105", "106"] {
        let answered = tokio::time::timeout(LIMIT, client.get_order(id.to_string()))
            .await
            .unwrap_or_else(|_| panic!("getOrder {id} hung behind the long streams"));
        answered.unwrap_or_else(|status| panic!("getOrder {id}: {status:?}"));
    }
    // The clients cancel, their streams still open.
    for call in &calls {
        call.abort();
    }
    for call in calls {
        let _ = call.await;
    }
    ended(&server, &store, "addOrders", &["Canceled", "Aborted"]).await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    missing(&store, &ids).await;
    drop(senders);
    // A long stream that ends cleanly is stored whole.
    let whole: Vec<Order> = (0..100).map(|m| big(format!("whole-{m}"))).collect();
    let answer = client
        .add_orders(futures::stream::iter(whole))
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer.starts_with("added 100 orders: whole-0, whole-1"),
        "{answer}"
    );
}

/// A client stream that sends nothing ends after `--stream-idle-timeout`, nothing applied.
#[tokio::test]
async fn a_silent_client_stream_ends_with_a_clear_error() {
    let mut config = Config::for_tests();
    config.stream_idle_timeout = Duration::from_millis(300);
    let (server, store, _db) = start(config, Db::Sqlite).await;
    let (mut orders, stream) = mpsc::unbounded::<Order>();
    orders.send(order("s1", "silent")).await.unwrap();
    let status = tokio::time::timeout(LIMIT, server.native().await.add_orders(stream))
        .await
        .expect("ended by the idle timeout")
        .expect_err("silent");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("--stream-idle-timeout"),
        "{status:?}"
    );
    settled(&store).await;
    missing(&store, &["s1"]).await;
    drop(orders);
}

/// Finding 6: `updateOrders` naming 102 twice answered "updated 2 orders: 102, 102". The later
/// version wins and the order is counted once.
#[rstest]
#[tokio::test]
async fn an_order_updated_twice_in_one_call_is_counted_once(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let (server, _store, _db) = start(Config::for_tests(), db).await;
    let mut client = server.native().await;
    let updated = client
        .update_orders(futures::stream::iter([
            order("102", "first"),
            order("103", "other"),
            order("102", "second"),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated, "updated 2 orders: 102, 103");
    let order = client
        .get_order("102".to_string())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.items, ["second"]);
}

/// A request with an idempotency key.
fn keyed<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse().unwrap());
    request
}

/// The same write with the same key is applied once and answered the same; the key with another
/// request is refused.
#[rstest]
#[tokio::test]
async fn a_write_with_an_idempotency_key_is_applied_once(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let (server, store, _db) = start(Config::for_tests(), db).await;
    let mut client = server.native().await;
    let first = client
        .add_order(keyed(order("", "keyed"), "k-add"))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .add_order(keyed(order("", "keyed"), "k-add"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again, "the retry got the first answer");
    let other = client
        .add_order(keyed(order("", "something else"), "k-add"))
        .await
        .expect_err("the key with another request");
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    let next = client
        .add_order(order("", "unkeyed"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next.parse::<u64>().unwrap(),
        first.parse::<u64>().unwrap() + 1,
        "the retry used no ID"
    );

    let batch = || futures::stream::iter([order("", "batch"), order("b-own", "batch")]);
    let added = client
        .add_orders(keyed(batch(), "k-batch"))
        .await
        .unwrap()
        .into_inner();
    let replayed = client
        .add_orders(keyed(batch(), "k-batch"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added, replayed);
    let found: Vec<_> = futures::StreamExt::collect::<Vec<_>>(store.search("batch")).await;
    assert_eq!(found.len(), 2, "the batch was stored once: {found:?}");

    let update = || futures::stream::iter([order("104", "updated once")]);
    let updated = client
        .update_orders(keyed(update(), "k-update"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated, "updated 1 order: 104");
    let reused = client
        .update_orders(keyed(
            futures::stream::iter([order("105", "x")]),
            "k-update",
        ))
        .await
        .expect_err("the key with another request");
    assert_eq!(reused.code(), Code::FailedPrecondition);
    assert!(reused.message().contains("k-update"), "{reused:?}");

    // Keys are the caller's: another method's key of the same name is refused, not replayed.
    let across = client
        .add_order(keyed(order("", "keyed"), "k-batch"))
        .await
        .expect_err("a key of addOrders for addOrder");
    assert_eq!(across.code(), Code::FailedPrecondition);

    let bad = client
        .add_order(keyed(order("", "x"), "has space"))
        .await
        .expect_err("not a key");
    assert_eq!(bad.code(), Code::InvalidArgument);
}

/// A key whose first call is still running gets `ABORTED` (retry later), and the retry after it
/// ended gets its answer.
#[tokio::test]
async fn a_key_still_in_progress_is_aborted() {
    let (server, store, db) = start(Config::for_tests(), Db::Sqlite).await;
    let lock = WriteLock::take(&db.url).await;
    let mut client = server.native().await;
    let mut first_client = client.clone();
    let first = tokio::spawn(async move {
        first_client
            .add_order(keyed(order("", "slow"), "k-slow"))
            .await
    });
    // The first call is running (waiting for the lock).
    tokio::time::timeout(LIMIT, store.writes_in_flight().wait_for(|&n| n == 1))
        .await
        .expect("the first call runs")
        .unwrap();
    let status = client
        .add_order(keyed(order("", "slow"), "k-slow"))
        .await
        .expect_err("in progress");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    lock.release().await;
    let id = first
        .await
        .unwrap()
        .expect("the first call succeeds")
        .into_inner();
    settled(&store).await;
    let retried = client
        .add_order(keyed(order("", "slow"), "k-slow"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, id);
}

/// Over gRPC-Web the key is the same HTTP header.
#[tokio::test]
async fn the_key_works_over_grpc_web() {
    let (server, _store, _db) = start(Config::for_tests(), Db::Sqlite).await;
    let mut web = server.grpc_web();
    let first = web
        .add_order(keyed(order("", "web"), "k-web"))
        .await
        .unwrap()
        .into_inner();
    let again = web
        .add_order(keyed(order("", "web"), "k-web"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
}

/// SQLite's keys as the release before keys were found by hash left them: half in the key table
/// ordered by key, half in the log of recent keys. After the upgrade at start, every retry is
/// answered with its first answer, not applied again; a new key is a new write.
#[tokio::test]
async fn keys_stored_before_the_upgrade_still_answer_their_retries() {
    let db = Db::Sqlite.create().await;
    let server = TestServer::start_on_existing(config_on(&db)).await;
    let mut client = server.native().await;
    let request = |n: usize| {
        keyed(
            order("", &format!("upgrade {n}")),
            &format!("k-upgrade-{n}"),
        )
    };
    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(client.add_order(request(n)).await.unwrap().into_inner());
    }
    drop(client);
    server.stop().await.unwrap();
    let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "DROP TABLE idempotency_keys_by_hash;
         DROP TABLE idempotency_keys_indexed;
         DROP INDEX idempotency_keys_by_age;
         ALTER TABLE idempotency_keys RENAME TO hashed;
         CREATE TABLE idempotency_keys (
             caller TEXT NOT NULL, key TEXT NOT NULL, method TEXT NOT NULL,
             digest BLOB NOT NULL, answer TEXT NOT NULL, created INTEGER NOT NULL,
             PRIMARY KEY (caller, key)) WITHOUT ROWID;
         CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created);
         CREATE TABLE recent_keys (
             seq INTEGER PRIMARY KEY, hash INTEGER NOT NULL, caller TEXT NOT NULL,
             key TEXT NOT NULL, method TEXT NOT NULL, digest BLOB NOT NULL,
             answer TEXT NOT NULL, created INTEGER NOT NULL);
         INSERT INTO idempotency_keys
             SELECT caller, key, method, digest, answer, created FROM hashed WHERE seq % 2 = 0;
         INSERT INTO recent_keys SELECT * FROM hashed WHERE seq % 2 = 1;
         DROP TABLE hashed;
         DELETE FROM _sqlx_migrations WHERE version = 20261210000001;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let table: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(table, 20, "half the keys in the old key table");
    drop(conn);

    let server = TestServer::start_on_existing(config_on(&db)).await;
    let mut client = server.native().await;
    for (n, id) in ids.iter().enumerate() {
        let again = client.add_order(request(n)).await.unwrap().into_inner();
        assert_eq!(&again, id, "key k-upgrade-{n} answered anew");
    }
    let new = client.add_order(request(40)).await.unwrap().into_inner();
    assert!(!ids.contains(&new));
    server.stop().await.unwrap();
}

/// A key older than `--idempotency-ttl` is forgotten: the same request is a new write.
#[rstest]
#[tokio::test]
async fn an_expired_key_is_forgotten(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let mut config = Config::for_tests();
    config.idempotency_ttl = Duration::from_secs(3600);
    let (server, store, db) = start(config, db).await;
    let mut client = server.native().await;
    let first = client
        .add_order(keyed(order("", "ttl"), "k-ttl"))
        .await
        .unwrap()
        .into_inner();
    // Two hours pass for the key (on SQLite, in the log of recent keys or the key table).
    let age = "UPDATE idempotency_keys SET created = created - 7200000";
    match db.url.starts_with("sqlite:") {
        true => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query(age).execute(&mut conn).await.unwrap();
        }
        false => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query(age).execute(&mut conn).await.unwrap();
        }
    }
    let second = client
        .add_order(keyed(order("", "ttl"), "k-ttl"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(first, second, "an expired key was replayed");
    // The second write stored the key anew. The pruning forgets the expired row if the store
    // kept it (SQLite appends the new row; PostgreSQL replaces the old), never the new one.
    let forgotten = store.forget_expired_keys().await.unwrap();
    assert!(forgotten <= 1, "{forgotten} keys forgotten");
    let third = client
        .add_order(keyed(order("", "ttl"), "k-ttl"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second, third);
}

/// processOrders' only writes are the shipment numbers it takes: the same request with the same
/// key gets the same shipments, numbers included; another request is refused.
#[rstest]
#[tokio::test]
async fn a_keyed_process_gets_the_same_shipment_numbers(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let (server, _store, _db) = start(Config::for_tests(), db).await;
    let mut client = server.native().await;
    let process = |ids: &[&str], key: &str| {
        let ids: Vec<String> = ids.iter().map(|&id| id.to_owned()).collect();
        keyed(futures::stream::iter(ids), key)
    };
    let shipments = |mut client: order_api::pb::order_management_client::OrderManagementClient<
        tonic::transport::Channel,
    >,
                     request| async move {
        let mut stream = client.process_orders(request).await?.into_inner();
        let mut ids = Vec::new();
        while let Some(shipment) = stream.message().await? {
            ids.push(shipment.id);
        }
        Ok::<_, tonic::Status>(ids)
    };
    let all = ["102", "103", "104", "105", "106"];
    let first = shipments(client.clone(), process(&all, "k-process"))
        .await
        .unwrap();
    assert_eq!(first.len(), 2, "{first:?}");
    let again = shipments(client.clone(), process(&all, "k-process"))
        .await
        .unwrap();
    assert_eq!(first, again, "a retry took new shipment numbers");
    let unkeyed = client
        .process_orders(futures::stream::iter(vec!["102".to_owned()]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(!first.contains(&unkeyed.id));
    let other = shipments(client.clone(), process(&["102", "103"], "k-process"))
        .await
        .expect_err("the key with another request");
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    // A key of another method is refused at once.
    client
        .add_order(keyed(order("", "k"), "k-add-first"))
        .await
        .unwrap();
    let across = shipments(client.clone(), process(&all, "k-add-first"))
        .await
        .expect_err("a key of addOrder");
    assert_eq!(across.code(), Code::FailedPrecondition);
}

/// processOrders has the limit of the other client streams, and its idle timeout.
#[tokio::test]
async fn process_orders_is_bounded_like_the_other_client_streams() {
    let mut config = Config::for_tests();
    config.stream_idle_timeout = Duration::from_millis(300);
    // One shipment at the end: the limit comes first.
    config.batch_size = std::num::NonZeroUsize::new(1_000_000).unwrap();
    let (server, _store, _db) = start(config, Db::Sqlite).await;
    let mut client = server.native().await;
    let new = |n: usize| order(&format!("p{n}"), "limit");
    client
        .add_orders(futures::stream::iter((0..10_000).map(new)))
        .await
        .unwrap();
    client.add_order(new(10_000)).await.unwrap();
    let ids = (0..=10_000).map(|n| format!("p{n}"));
    let mut shipments = client
        .process_orders(futures::stream::iter(ids))
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        match shipments.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("10 001 IDs were taken"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("at most 10000"), "{status:?}");

    let (mut ids, stream) = mpsc::unbounded::<String>();
    ids.send("102".into()).await.unwrap();
    let mut shipments = client.process_orders(stream).await.unwrap().into_inner();
    let status = tokio::time::timeout(LIMIT, async {
        loop {
            match shipments.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended without an error"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("ended by the idle timeout");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("--stream-idle-timeout"));
    drop(ids);
}

/// `order` as one gRPC message frame.
fn framed(order: &Order) -> Vec<u8> {
    framed_message(&prost::Message::encode_to_vec(order))
}

#[tokio::test]
async fn a_client_stream_that_ends_in_the_middle_of_a_message_applies_nothing() {
    let server = TestServer::start().await;
    let order = Order {
        items: vec!["Cut short".into()],
        price: 1.0,
        destination: "Austin, TX".into(),
        ..Order::default()
    };
    // Whole orders, then the header of one more and none of it (tonic's decoder alone takes
    // that for a clean end), or the header and part of it.
    for cut in [&[0u8, 0, 0, 0, 9][..], &[0, 0, 0, 0, 9, 1, 2]] {
        let (response, mut body) =
            common::raw_h2_call(server.addr, "/OrderManagement/addOrders").await;
        let mut sent = [framed(&order), framed(&order)].concat();
        sent.extend_from_slice(cut);
        body.send_data(sent.into(), true).unwrap();
        let status = common::raw_h2_status(response).await;
        assert_eq!(status.as_deref(), Ok("10"), "ABORTED, after {cut:?}");
    }
    let stored = common::search(server.h2c(), "Cut short").await;
    assert!(stored.is_empty(), "{stored:?}");
}

/// Finding 1 over the Connect protocol: a streaming upload whose client goes away half-way, its
/// socket closed (HTTP/1.1, a chunked body never ended) or its stream reset (HTTP/2), stores
/// nothing, in JSON or binary.
#[rstest]
#[tokio::test]
async fn a_connect_upload_cut_off_half_way_stores_nothing(
    #[values("application/connect+json", "application/connect+proto")] content_type: &str,
    #[values(1, 2)] http: u8,
) {
    use tokio::io::AsyncWriteExt;

    let (server, store, _db) = start(Config::for_tests(), Db::Sqlite).await;
    let ids = ["cut1", "cut2", "cut3"];
    let sent: Vec<u8> = ids
        .iter()
        .flat_map(|id| match content_type {
            "application/connect+json" => {
                let json = format!(
                    r#"{{"id":"{id}","items":["cut off"],"price":1,"destination":"Galle"}}"#
                );
                framed_message(json.as_bytes())
            }
            _ => framed(&order(id, "cut off")),
        })
        .collect();
    let path = "/OrderManagement/addOrders";
    match http {
        1 => {
            let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\n\
                 transfer-encoding: chunked\r\n\r\n{:x}\r\n",
                server.addr,
                sent.len()
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(&sent).await.unwrap();
            socket.write_all(b"\r\n").await.unwrap();
            received(&server, "addOrders", 3.0).await;
            // The client dies: the socket closes with the body's last chunk never sent.
            drop(socket);
        }
        _ => {
            let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
            let (client, connection) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(connection);
            let mut client = client.ready().await.unwrap();
            let request = http::Request::post(format!("http://{}{path}", server.addr))
                .header("content-type", content_type)
                .body(())
                .unwrap();
            let (_response, mut body) = client.send_request(request, false).unwrap();
            body.send_data(sent.into(), false).unwrap();
            received(&server, "addOrders", 3.0).await;
            body.send_reset(h2::Reason::CANCEL);
        }
    }
    // The service fails the stream (`ABORTED`), whether it saw a reset or a body cut off.
    ended(&server, &store, "addOrders", &["Aborted"]).await;
    missing(&store, &ids).await;
    let stored = common::search(server.h2c(), "cut off").await;
    assert!(stored.is_empty(), "{stored:?}");
}

/// `message` as one frame of a Connect stream (the same five-byte header as gRPC's).
fn framed_message(message: &[u8]) -> Vec<u8> {
    common::framed(0, message).to_vec()
}
