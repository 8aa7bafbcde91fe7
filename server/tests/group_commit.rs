//! Group commit: writes that wait together share one transaction and one commit, and each keeps
//! its own outcome. The database is locked from outside while the calls arrive (SQLite's write
//! lock; PostgreSQL's `orders` table), so that they all wait for the same next batch.

mod common;

use std::time::Duration;

use common::{config_on, metrics_at, Db, TestDb, TestServer};
use order_api::pb::Order;
use rstest::rstest;
use sqlx::Connection;
use tonic::{Code, Request};

fn order(id: &str, item: &str) -> Order {
    Order {
        id: id.into(),
        items: vec![item.into()],
        description: "group".into(),
        price: 2.0,
        destination: "Porto".into(),
    }
}

fn keyed<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse().unwrap());
    request
}

/// `order_server_writes_in_flight` reaching `count`: every call is waiting for the database.
async fn wait_for_writes(url: &str, count: f64) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while metrics_at(url)
            .await
            .value("order_server_writes_in_flight", &[])
            < count
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the calls reach the store");
}

/// A server on a new database of `db`'s kind whose calls wait up to 30 s for the database (as
/// long as a test may hold its lock), and that database.
async fn start_waiting(db: Db) -> (TestDb, TestServer) {
    let db = db.create().await;
    let mut config = config_on(&db);
    config.database_timeout = Duration::from_secs(30);
    let server = TestServer::start_on_existing(config).await;
    (db, server)
}

/// A lock taken from outside that keeps the server's next write waiting.
enum Hold {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Hold {
    async fn take(url: &str) -> Self {
        if url.starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .unwrap();
            Hold::Sqlite(conn)
        } else {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            for sql in ["BEGIN", "LOCK TABLE orders IN EXCLUSIVE MODE"] {
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
            Hold::Postgres(conn)
        }
    }

    async fn release(self) {
        match self {
            Hold::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
            Hold::Postgres(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
        }
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_together_share_one_commit_and_one_failure_fails_no_other(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let (db, server) = start_waiting(db).await;
    let url = server.url();
    let client = server.native().await;
    client
        .clone()
        .add_order(keyed(order("gc-keyed", "first"), "gc-key"))
        .await
        .unwrap();
    let before = metrics_at(&url).await;

    let hold = Hold::take(&db.url).await;
    let mut calls = tokio::task::JoinSet::new();
    let mut c = client.clone();
    calls.spawn(async move {
        (
            "ok",
            c.add_order(order("gc-ok", "fine"))
                .await
                .map(|r| r.into_inner()),
        )
    });
    let mut c = client.clone();
    calls.spawn(async move {
        (
            "taken",
            c.add_order(order("102", "again"))
                .await
                .map(|r| r.into_inner()),
        )
    });
    let mut c = client.clone();
    calls.spawn(async move {
        let reused = keyed(order("gc-other", "another request"), "gc-key");
        ("reused", c.add_order(reused).await.map(|r| r.into_inner()))
    });
    let mut c = client.clone();
    calls.spawn(async move {
        (
            "numbered",
            c.add_order(order("", "numbered"))
                .await
                .map(|r| r.into_inner()),
        )
    });
    let mut c = client.clone();
    calls.spawn(async move {
        let orders = futures::stream::iter([order("103", "changed"), order("gc-none", "x")]);
        (
            "unknown",
            c.update_orders(orders).await.map(|r| r.into_inner()),
        )
    });
    let mut c = client.clone();
    calls.spawn(async move {
        let orders = futures::stream::iter([order("104", "changed")]);
        (
            "update",
            c.update_orders(orders).await.map(|r| r.into_inner()),
        )
    });
    let mut c = client.clone();
    calls.spawn(async move {
        let orders = futures::stream::iter([order("gc-many-1", "m"), order("gc-many-2", "m")]);
        ("many", c.add_orders(orders).await.map(|r| r.into_inner()))
    });
    wait_for_writes(&url, 7.0).await;
    hold.release().await;

    let mut outcomes = std::collections::HashMap::new();
    while let Some(joined) = calls.join_next().await {
        let (name, outcome) = joined.unwrap();
        outcomes.insert(name, outcome);
    }
    assert_eq!(outcomes["ok"].as_ref().unwrap(), "gc-ok");
    assert_eq!(
        outcomes["taken"].as_ref().unwrap_err().code(),
        Code::AlreadyExists
    );
    assert_eq!(
        outcomes["reused"].as_ref().unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert!(outcomes["numbered"]
        .as_ref()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    assert_eq!(
        outcomes["unknown"].as_ref().unwrap_err().code(),
        Code::NotFound
    );
    assert!(outcomes["update"].as_ref().unwrap().contains("104"));
    assert!(outcomes["many"].as_ref().unwrap().contains("gc-many-2"));

    let mut c = client.clone();
    let get = |id: &'static str| {
        let mut c = c.clone();
        async move {
            c.get_order(id.to_string())
                .await
                .map(|r| r.into_inner().items)
        }
    };
    assert_eq!(get("gc-ok").await.unwrap(), ["fine"]);
    assert_eq!(get("gc-many-1").await.unwrap(), ["m"]);
    assert_eq!(get("104").await.unwrap(), ["changed"]);
    assert_eq!(
        get("103").await.unwrap(),
        ["Apple Watch S4"],
        "a failed update changed 103"
    );
    assert_eq!(get("gc-none").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(get("gc-other").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(get("gc-keyed").await.unwrap(), ["first"]);
    c.get_order("102".to_string()).await.unwrap();

    // Four calls wrote; they shared at most two commits (the first to arrive may have had
    // one of its own, begun before the others came).
    let after = metrics_at(&url).await;
    let delta = |name: &str| after.value(name, &[]) - before.value(name, &[]);
    assert_eq!(delta("order_server_committed_writes_total"), 4.0);
    assert!(
        delta("order_server_commits_total") <= 2.0,
        "{}",
        delta("order_server_commits_total")
    );
}

/// A batch bigger than one statement (SQLite takes 64 rows a statement): 150 keyed `addOrder`s
/// held together, every tenth naming an ID already taken. Each taken one alone fails, every other
/// is stored, and the same 150 calls again get the same answers from their keys.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_several_statements_keeps_each_calls_outcome(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    const CALLS: usize = 150;
    let (db, server) = start_waiting(db).await;
    let url = server.url();
    let client = server.native().await;
    let all_calls = || {
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..CALLS {
            let mut client = client.clone();
            calls.spawn(async move {
                let id = match n % 10 {
                    7 => "102".to_owned(),
                    _ => format!("big-{n}"),
                };
                let request = keyed(order(&id, "big"), &format!("big-key-{n}"));
                (n, client.add_order(request).await.map(|r| r.into_inner()))
            });
        }
        calls
    };
    let answers = |mut calls: tokio::task::JoinSet<(usize, Result<String, tonic::Status>)>| async move {
        let mut answers = std::collections::BTreeMap::new();
        while let Some(joined) = calls.join_next().await {
            let (n, answer) = joined.unwrap();
            answers.insert(n, answer.map_err(|status| status.code()));
        }
        answers
    };

    let hold = Hold::take(&db.url).await;
    let calls = all_calls();
    wait_for_writes(&url, CALLS as f64).await;
    hold.release().await;
    let first = answers(calls).await;
    for (n, answer) in &first {
        match n % 10 {
            7 => assert_eq!(answer, &Err(Code::AlreadyExists), "call {n}"),
            _ => assert_eq!(answer, &Ok(format!("big-{n}")), "call {n}"),
        }
    }
    let again = answers(all_calls()).await;
    assert_eq!(first, again, "the same calls again");
    let mut c = client.clone();
    for n in (0..CALLS).filter(|n| n % 10 != 7) {
        let stored = c.get_order(format!("big-{n}")).await.unwrap().into_inner();
        assert_eq!(stored.items, ["big"], "big-{n}");
    }
}

/// A batch's key lookup reads only its own keys, never the whole key table, even when its plan
/// was made while the table was empty (as it is at start, and then cached on each connection):
/// the very statement the store runs, planned on a new database.
#[tokio::test]
async fn the_key_lookup_goes_through_the_index_even_planned_on_an_empty_table() {
    let db = Db::Postgres.create().await;
    let store = common::open_store(&config_on(&db)).await;
    let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let sql = include_str!("../src/store/stored_keys.pg.sql");
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
        .bind(["anonymous"])
        .bind(["a-key"])
        .bind([0_i64])
        .fetch_all(&mut connection)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using idempotency_keys_pkey"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan on idempotency_keys"), "{plan}");
    drop(store);
}

/// An `addOrder` alone on an idle server takes the next number no order has as its own ID. On
/// PostgreSQL it is one statement, its own transaction, as before group commit: a batch's
/// transaction takes four round trips (`BEGIN`, the number, the insert, `COMMIT`), which made one
/// call at a time half as slow again.
#[rstest]
#[tokio::test]
async fn an_add_order_alone_is_one_statement_and_skips_a_number_taken(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let test_db = db.create().await;
    let server = TestServer::start_on_existing(config_on(&test_db)).await;
    let mut client = server.native().await;
    client.add_order(order("107", "own ID")).await.unwrap();
    let id = client
        .add_order(order("", "numbered"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(id, "108");
    if db == Db::Postgres {
        let mut connection = sqlx::PgConnection::connect(&test_db.url).await.unwrap();
        let last: Vec<(String, String)> = sqlx::query_as(
            "SELECT state, query FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'order-server'",
        )
        .fetch_all(&mut connection)
        .await
        .unwrap();
        // Each connection's last statement: the insert's, outside any transaction block.
        let inserts: Vec<_> = last
            .iter()
            .filter(|(_, query)| {
                query.trim_start().starts_with("INSERT INTO orders")
                    && query.contains("nextval('order_ids')")
            })
            .collect();
        assert_eq!(inserts.len(), 1, "{last:#?}");
        assert_eq!(inserts[0].0, "idle", "{last:#?}");
    }
}
