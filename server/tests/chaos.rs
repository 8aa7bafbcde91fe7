//! The write guarantees under chaos: 16 writers add and update orders with idempotency keys and
//! retries while the test cancels their calls, gives them tiny deadlines, holds SQLite's write
//! lock from outside, `kill -9`s and restarts the server (the real binary) and, on PostgreSQL,
//! restarts the database. Afterwards every write any attempt saw `OK` is stored exactly once with
//! its content, no abandoned write is stored in part, and `getOrder` agrees with the database.
//!
//! 60 seconds per store by default; `ORDER_CHAOS_SECS` sets another length.

mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{postgres::Cluster, process::ServerProcess, Db};
use futures::StreamExt;
use order_api::pb::{order_management_client::OrderManagementClient, Order};
use sqlx::Connection;
use tokio::sync::watch;
use tonic::{transport::Channel, Code, Request, Status};

const WRITERS: usize = 16;

/// How long the chaos lasts.
fn length() -> Duration {
    let secs = std::env::var("ORDER_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// What happened, counted.
#[derive(Debug, Default)]
struct Counts {
    calls: AtomicU64,
    ok: AtomicU64,
    retries: AtomicU64,
    cancels: AtomicU64,
    tiny_deadlines: AtomicU64,
    abandoned: AtomicU64,
    kills: AtomicU64,
    locks: AtomicU64,
    database_restarts: AtomicU64,
}

impl Counts {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One write and what its client saw.
#[derive(Debug, Clone)]
enum Write {
    /// addOrder of one order marked `marker`.
    Add { marker: String },
    /// addOrders of orders marked `marker-0`, `marker-1`…
    AddMany { marker: String, count: usize },
    /// updateOrders of the orders `ids` (added with the markers `added`), each to items
    /// `[marker, its added marker]`.
    Update {
        marker: String,
        ids: Vec<String>,
        added: Vec<String>,
    },
}

#[derive(Debug)]
struct Outcome {
    write: Write,
    /// The answer an attempt saw `OK` with; `None`: the client gave up on it.
    answer: Option<String>,
}

fn new_order(marker: &str) -> Order {
    Order {
        id: String::new(),
        items: vec![marker.to_owned()],
        description: "chaos".into(),
        price: 1.0,
        destination: "Trincomalee".into(),
    }
}

/// The IDs an `added N orders: a, b, …` answer names (all of them: batches stay under 20).
fn answered_ids(answer: &str) -> Vec<String> {
    answer
        .split_once(": ")
        .map(|(_, ids)| ids.split(", ").map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Codes after which a write's outcome is unknown: retried with its key.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Unknown
            | Code::Cancelled
    )
}

/// A client of whatever server is current.
struct Target {
    addr: watch::Receiver<String>,
    current: Option<(String, OrderManagementClient<Channel>)>,
}

impl Target {
    fn client(&mut self) -> OrderManagementClient<Channel> {
        let addr = self.addr.borrow().clone();
        match &self.current {
            Some((at, client)) if *at == addr => client.clone(),
            _ => {
                let channel = Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_timeout(Duration::from_millis(500))
                    .connect_lazy();
                let client = OrderManagementClient::new(channel);
                self.current = Some((addr, client.clone()));
                client
            }
        }
    }
}

/// One attempt of `write` with `key`, chaos included: some attempts are cancelled by the client
/// after a random moment, some carry a deadline of a few milliseconds.
async fn attempt(
    client: &mut OrderManagementClient<Channel>,
    write: &Write,
    key: &str,
    counts: &Counts,
) -> Result<String, Status> {
    let chaos = fastrand::u32(0..10);
    let keyed = |request: &mut tonic::metadata::MetadataMap| {
        request.insert("idempotency-key", key.parse().unwrap());
    };
    let deadline = match chaos {
        0 => {
            Counts::add(&counts.tiny_deadlines);
            Duration::from_millis(fastrand::u64(1..30))
        }
        _ => Duration::from_secs(10),
    };
    // A stream sends its orders a millisecond apart, so that cancels land mid-stream too.
    let slow = |orders: Vec<Order>| {
        async_stream::stream! {
            for order in orders {
                tokio::time::sleep(Duration::from_millis(1)).await;
                yield order;
            }
        }
    };
    let call = async {
        match write {
            Write::Add { marker } => {
                let mut request = Request::new(new_order(marker));
                keyed(request.metadata_mut());
                request.set_timeout(deadline);
                client.add_order(request).await
            }
            Write::AddMany { marker, count } => {
                let orders = (0..*count)
                    .map(|i| new_order(&format!("{marker}-{i}")))
                    .collect();
                let mut request = Request::new(slow(orders));
                keyed(request.metadata_mut());
                request.set_timeout(deadline);
                client.add_orders(request).await
            }
            Write::Update { marker, ids, added } => {
                let orders = ids
                    .iter()
                    .zip(added)
                    .map(|(id, added)| Order {
                        id: id.clone(),
                        items: vec![marker.clone(), added.clone()],
                        ..new_order(marker)
                    })
                    .collect();
                let mut request = Request::new(slow(orders));
                keyed(request.metadata_mut());
                request.set_timeout(deadline);
                client.update_orders(request).await
            }
        }
    };
    let answer = if chaos == 1 {
        // The client cancels: the call is dropped (RST_STREAM) after a random moment.
        let cut = Duration::from_millis(fastrand::u64(0..15));
        match tokio::time::timeout(cut, call).await {
            Ok(answer) => answer,
            Err(_) => {
                Counts::add(&counts.cancels);
                Err(Status::cancelled("cancelled by the chaos"))
            }
        }
    } else {
        call.await
    };
    answer.map(tonic::Response::into_inner)
}

/// A writer: writes until `stop`, each write with a key of its own, retried while its outcome is
/// unknown, given up now and then.
async fn writer(
    n: usize,
    addr: watch::Receiver<String>,
    stop: watch::Receiver<bool>,
    counts: Arc<Counts>,
) -> Vec<Outcome> {
    let mut connection = Target {
        addr,
        current: None,
    };
    let mut outcomes = Vec::new();
    // Orders this writer added and has not updated yet, with their markers.
    let mut updatable: Vec<(String, String)> = Vec::new();
    let mut seq = 0;
    while !*stop.borrow() {
        seq += 1;
        let marker = format!("chaos-{n}-{seq}");
        let write = match fastrand::u32(0..10) {
            0..=3 => Write::Add { marker },
            4..=6 => Write::AddMany {
                marker,
                count: fastrand::usize(2..6),
            },
            _ if updatable.len() >= 2 => {
                let (ids, added) = updatable.drain(..2).unzip();
                Write::Update { marker, ids, added }
            }
            _ => Write::Add { marker },
        };
        let key = format!("key-{n}-{seq}");
        let mut answer = None;
        loop {
            Counts::add(&counts.calls);
            let mut client = connection.client();
            match attempt(&mut client, &write, &key, &counts).await {
                Ok(ok) => {
                    Counts::add(&counts.ok);
                    answer = Some(ok);
                    break;
                }
                Err(status) if retryable(status.code()) => {
                    if fastrand::u32(0..10) == 0 {
                        Counts::add(&counts.abandoned);
                        break;
                    }
                    Counts::add(&counts.retries);
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(5..100))).await;
                }
                Err(status) => panic!("write {key} ({write:?}) failed for good: {status:?}"),
            }
        }
        if let Some(answer) = &answer {
            match &write {
                Write::Add { marker } => updatable.push((answer.clone(), marker.clone())),
                Write::AddMany { marker, .. } => updatable.extend(
                    answered_ids(answer)
                        .into_iter()
                        .enumerate()
                        .map(|(i, id)| (id, format!("{marker}-{i}"))),
                ),
                Write::Update { .. } => {}
            }
        }
        outcomes.push(Outcome { write, answer });
    }
    outcomes
}

/// The orders in the database, read directly: ID to items.
async fn stored(url: &str) -> HashMap<String, Vec<String>> {
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, items FROM orders")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        rows.into_iter()
            .map(|(id, items)| (id, serde_json::from_str(&items).unwrap()))
            .collect()
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let rows: Vec<(String, Vec<String>)> = sqlx::query_as("SELECT id, items FROM orders")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        rows.into_iter().collect()
    }
}

/// Waits until the server at `addr` runs no write (its callers gone or not).
async fn settled(addr: &str) {
    let metrics = format!("http://{addr}");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let m = common::metrics_at(&metrics).await;
            if m.value("order_server_writes_in_flight", &[]) == 0.0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the writes settle");
}

async fn chaos(db: Db) {
    let (url, cluster, _dir) = match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite:{}", dir.path().join("orders.db").display());
            (url, None, Some(dir))
        }
        Db::Postgres => {
            // A cluster of its own: restarting it must not disturb other tests.
            let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await.unwrap());
            (cluster.create_database().await, Some(cluster), None)
        }
    };
    let args: Vec<String> = [
        "--database",
        &url,
        "--database-timeout",
        "1",
        "--database-connections",
        "4",
    ]
    .map(str::to_owned)
    .to_vec();
    let start = {
        let args = args.clone();
        move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ServerProcess::start(&args)
        }
    };
    let mut server = tokio::task::spawn_blocking(start.clone()).await.unwrap();
    let (addr_tx, addr) = watch::channel(server.addr.clone());
    let (stop_tx, stop) = watch::channel(false);
    let counts = Arc::new(Counts::default());
    let writers: Vec<_> = (0..WRITERS)
        .map(|n| tokio::spawn(writer(n, addr.clone(), stop.clone(), counts.clone())))
        .collect();

    // The chaos itself, until the time is up.
    let end = tokio::time::Instant::now() + length();
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(500..2500))).await;
        match (fastrand::u32(0..3), db) {
            (0, _) => {
                server.kill();
                Counts::add(&counts.kills);
                server = tokio::task::spawn_blocking(start.clone()).await.unwrap();
                addr_tx.send_replace(server.addr.clone());
            }
            (_, Db::Sqlite) => {
                let mut lock = sqlx::SqliteConnection::connect(&url).await.unwrap();
                if sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut lock)
                    .await
                    .is_ok()
                {
                    Counts::add(&counts.locks);
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(200..1500))).await;
                    let _ = sqlx::query("ROLLBACK").execute(&mut lock).await;
                }
            }
            (_, Db::Postgres) => {
                let cluster = cluster.clone().unwrap();
                tokio::task::spawn_blocking(move || {
                    cluster.stop();
                    cluster.restart();
                })
                .await
                .unwrap();
                Counts::add(&counts.database_restarts);
            }
        }
    }
    stop_tx.send_replace(true);
    let mut outcomes = Vec::new();
    for writer in writers {
        outcomes.extend(writer.await.expect("a writer panicked"));
    }
    settled(&server.addr).await;

    // Every write as its client saw it, against the database.
    let orders = stored(&url).await;
    // An added order keeps its marker as its last item, through any update.
    let mut by_marker: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, items) in &orders {
        if let Some(marker) = items.last() {
            by_marker.entry(marker).or_default().push(id);
        }
    }
    let found = |marker: &str| by_marker.get(marker).map_or(0, Vec::len);
    let mut duplicates = 0;
    let mut checked = 0;
    for Outcome { write, answer } in &outcomes {
        match write {
            Write::Add { marker } => {
                let n = found(marker);
                duplicates += n.saturating_sub(1);
                if let Some(id) = answer {
                    assert_eq!(n, 1, "{write:?}, answered {id}, is stored {n} times");
                    assert_eq!(by_marker[marker.as_str()], [id.as_str()], "{write:?}");
                    checked += 1;
                }
            }
            Write::AddMany { marker, count } => {
                let each: Vec<usize> = (0..*count)
                    .map(|i| found(&format!("{marker}-{i}")))
                    .collect();
                duplicates += each.iter().map(|n| n.saturating_sub(1)).sum::<usize>();
                match answer {
                    Some(answer) => {
                        assert!(
                            each.iter().all(|&n| n == 1),
                            "{write:?} ({answer}) stored {each:?}"
                        );
                        let ids = answered_ids(answer);
                        for (i, id) in ids.iter().enumerate() {
                            let marker = format!("{marker}-{i}");
                            assert_eq!(by_marker[marker.as_str()], [id.as_str()], "{write:?}");
                        }
                        checked += 1;
                    }
                    None => assert!(
                        each.iter().all(|&n| n == 0) || each.iter().all(|&n| n == 1),
                        "{write:?}, given up, was stored in part: {each:?}"
                    ),
                }
            }
            Write::Update { marker, ids, .. } => {
                let updated: Vec<bool> = ids
                    .iter()
                    .map(|id| orders.get(id).and_then(|items| items.first()) == Some(marker))
                    .collect();
                match answer {
                    Some(_) => {
                        assert!(updated.iter().all(|&u| u), "{write:?} saw OK: {updated:?}");
                        checked += 1;
                    }
                    None => assert!(
                        updated.iter().all(|&u| u) || updated.iter().all(|&u| !u),
                        "{write:?}, given up, was applied in part"
                    ),
                }
            }
        }
    }
    assert_eq!(duplicates, 0, "orders stored more than once");

    // getOrder (the cache, on SQLite) agrees with the database for every order.
    let client = server.client().await;
    let checks = futures::stream::iter(&orders).map(|(id, items)| {
        let mut client = client.clone();
        async move {
            let served = client.get_order(id.clone()).await.unwrap().into_inner();
            assert_eq!(
                &served.items, items,
                "getOrder {id} disagrees with the database"
            );
        }
    });
    checks.buffer_unordered(16).collect::<()>().await;

    let c = &counts;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    eprintln!(
        "chaos on {db:?} for {:?}: {} writes ({} seen OK, {} checked, {} given up), {} calls, \
         {} retries, {} cancels, {} tiny deadlines, {} kill -9, {} lock holds, {} database \
         restarts, {} orders, duplicates = {duplicates}",
        length(),
        outcomes.len(),
        load(&c.ok),
        checked,
        load(&c.abandoned),
        load(&c.calls),
        load(&c.retries),
        load(&c.cancels),
        load(&c.tiny_deadlines),
        load(&c.kills),
        load(&c.locks),
        load(&c.database_restarts),
        orders.len(),
    );
    assert!(load(&c.ok) > 100, "too little was written to mean anything");
    assert!(load(&c.kills) > 0 && load(&c.cancels) > 0 && load(&c.retries) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_hold_under_chaos_on_sqlite() {
    chaos(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_hold_under_chaos_on_postgres() {
    chaos(Db::Postgres).await;
}
