//! `searchOrders` on both engines: one table of cases with the same answers, whether an order is
//! found by walking the ID index or through the trigram index; the index kept right through
//! every kind of write; a database made before the index upgraded in place at start.

mod common;

use std::path::Path;

use common::{config_on, Db, TestDb, TestServer};
use futures::StreamExt;
use order_api::pb::{order_management_client::OrderManagementClient, Order};
use rstest::rstest;
use sqlx::Connection;
use tonic::{transport::Channel, Code};

fn order(id: &str, items: &[&str]) -> Order {
    Order {
        id: id.into(),
        items: items.iter().map(|item| item.to_string()).collect(),
        description: "case".into(),
        price: 1.0,
        destination: "Lyon".into(),
    }
}

/// The orders of the cases: each is stored three times, `A…` before the filler, `zz-late-A…`
/// after it and `zz-tail-A…` last. A rare term's walk reads the first window (4 096 orders) and
/// turns to the trigram index, so the early copy is found by walking, the late one through the
/// index and the last one, on SQLite, in the search tail (the newest orders, not indexed yet).
const CASE_ORDERS: &[(&str, &[&str])] = &[
    ("A1", &["Big Box", "Small Crate"]),
    ("A2", &["Hauptstraße 5"]),
    ("A3", &["İstanbul Bazaar"]),
    ("A4", &["50% off"]),
    ("A5", &["snake_case"]),
    ("A6", &["C:\\temp"]),
    ("A7", &["abc"]),
    ("A8", &["日本語の本"]),
    ("A9", &["ΣΑΣ tours"]),
    ("B1", &["Café"]),
    ("B2", &["Cafe\u{301} noir"]),
];

/// Search text, and the case orders it finds (each in both copies).
const CASES: &[(&str, &[&str])] = &[
    ("box", &["A1"]),
    ("BOX", &["A1"]),
    ("big box", &["A1"]),
    ("crate", &["A1"]),
    // Across two items is not within one.
    ("box\nsmall", &[]),
    ("STRASSE", &["A2"]),
    ("straße 5", &["A2"]),
    ("istanbul", &["A3"]),
    ("İSTANBUL", &["A3"]),
    ("zzqx", &[]),
    // Shorter than a trigram.
    ("ox", &["A1"]),
    ("x", &["A1"]),
    ("本語", &["A8"]),
    ("ς", &["A9"]),
    // LIKE's wildcards and escape are plain characters.
    ("0%", &["A4"]),
    ("%", &["A4"]),
    ("% o", &["A4"]),
    ("%off", &[]),
    ("e_c", &["A5"]),
    ("_", &["A5"]),
    ("a_c", &[]),
    (":\\t", &["A6"]),
    ("\\", &["A6"]),
    ("日本語の", &["A8"]),
    ("σας", &["A9"]),
    ("café", &["B1", "B2"]),
    ("CAFE\u{301}", &["B1", "B2"]),
    // Accents are not folded away.
    ("cafe", &[]),
];

/// Orders no case matches, numbered by the server: more than one walking window.
const FILLER: usize = 5_000;

fn late(id: &str) -> String {
    format!("zz-late-{id}")
}

fn last(id: &str) -> String {
    format!("zz-tail-{id}")
}

/// On SQLite, how many orders the search tail reaches before they are indexed.
const MERGE_AT: i64 = 100;

/// Sets SQLite's search tail to `merge_at` orders (1: every order indexed at once).
async fn set_search_tail(db: &TestDb, merge_at: i64) {
    let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE search_tail SET merge_at = ?1")
        .bind(merge_at)
        .execute(&mut conn)
        .await
        .unwrap();
}

/// On SQLite, whether each of `ids` is in the trigram index (or else in the tail).
async fn indexed(db: &TestDb, ids: &[String]) -> Vec<bool> {
    let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    let mut indexed = Vec::new();
    for id in ids {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM order_search JOIN orders ON orders.seq = order_search.rowid
             WHERE orders.id = ?1",
        )
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        indexed.push(count == 1);
    }
    indexed
}

async fn add_all(client: &mut OrderManagementClient<Channel>, orders: Vec<Order>) {
    client
        .add_orders(futures::stream::iter(orders))
        .await
        .expect("addOrders succeeds");
}

async fn found(client: &mut OrderManagementClient<Channel>, text: &str) -> Vec<String> {
    let mut stream = client
        .search_orders(text.to_string())
        .await
        .expect("searchOrders starts")
        .into_inner();
    let mut ids = Vec::new();
    while let Some(order) = stream.next().await {
        ids.push(order.expect("searchOrders streams").id);
    }
    ids
}

/// The case orders, the filler, and their late copies.
async fn load_cases(client: &mut OrderManagementClient<Channel>) {
    let early = CASE_ORDERS.iter().map(|(id, items)| order(id, items));
    add_all(client, early.collect()).await;
    let filler = (0..FILLER).map(|n| order("", &[&format!("plain filler {n}")]));
    add_all(client, filler.collect()).await;
    let late = CASE_ORDERS
        .iter()
        .map(|(id, items)| order(&late(id), items));
    add_all(client, late.collect()).await;
    // More than the tail holds, to move the late copies into the index.
    let more = (0..2 * MERGE_AT).map(|n| order("", &[&format!("more filler {n}")]));
    add_all(client, more.collect()).await;
    let tail = CASE_ORDERS
        .iter()
        .map(|(id, items)| order(&last(id), items));
    add_all(client, tail.collect()).await;
}

#[rstest]
#[tokio::test]
async fn both_engines_answer_the_same_table_of_cases_by_walking_and_through_the_index(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let test_db = db.create().await;
    let mut config = config_on(&test_db);
    config.no_sample_data = true;
    let server = TestServer::start_on_existing(config).await;
    if db == Db::Sqlite {
        set_search_tail(&test_db, MERGE_AT).await;
    }
    let mut client = server.native().await;
    load_cases(&mut client).await;
    if db == Db::Sqlite {
        let copies: Vec<String> = [late("A1"), last("A1")].into();
        assert_eq!(indexed(&test_db, &copies).await, [true, false]);
    }

    let mut wrong = Vec::new();
    for (text, ids) in CASES {
        let expected: Vec<String> = ids
            .iter()
            .map(|id| id.to_string())
            .chain(ids.iter().map(|id| late(id)))
            .chain(ids.iter().map(|id| last(id)))
            .collect();
        let got = found(&mut client, text).await;
        if got != expected {
            wrong.push(format!("{text:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every order, in ID order, for an empty search.
    assert_eq!(
        found(&mut client, "").await.len(),
        3 * CASE_ORDERS.len() + FILLER + 2 * MERGE_AT as usize
    );
    assert_eq!(found(&mut client, "plain filler 4999").await.len(), 1);
}

/// On SQLite twice: with every order indexed at once, and with the newest in the search tail.
#[rstest]
#[case::sqlite_indexed_at_once(Db::Sqlite, Some(1))]
#[case::sqlite_with_a_tail(Db::Sqlite, None)]
#[case::postgres(Db::Postgres, None)]
#[tokio::test]
async fn the_index_follows_every_write_and_none_that_failed(
    #[case] db: Db,
    #[case] merge_at: Option<i64>,
) {
    let db = db.create().await;
    let server = TestServer::start_on_existing(config_on(&db)).await;
    if let Some(merge_at) = merge_at {
        set_search_tail(&db, merge_at).await;
    }
    let mut client = server.native().await;
    let filler = (0..FILLER).map(|n| order("", &[&format!("plain filler {n}")]));
    add_all(&mut client, filler.collect()).await;

    client
        .add_order(order("zz-w1", &["Quartz lamp"]))
        .await
        .unwrap();
    assert_eq!(found(&mut client, "quartz").await, ["zz-w1"]);

    client
        .update_orders(futures::stream::iter([order("zz-w1", &["Velvet lamp"])]))
        .await
        .unwrap();
    assert_eq!(found(&mut client, "quartz").await, Vec::<String>::new());
    assert_eq!(found(&mut client, "velvet").await, ["zz-w1"]);

    // A batch that fails (an ID taken) and an update that fails (an unknown ID) leave nothing in
    // the index.
    let taken = client
        .add_orders(futures::stream::iter([
            order("zz-w2", &["Opal ring"]),
            order("zz-w1", &["Opal ring"]),
        ]))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    let unknown = client
        .update_orders(futures::stream::iter([
            order("zz-w1", &["Jade bowl"]),
            order("zz-none", &["Jade bowl"]),
        ]))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(found(&mut client, "opal").await, Vec::<String>::new());
    assert_eq!(found(&mut client, "jade").await, Vec::<String>::new());
    assert_eq!(found(&mut client, "velvet").await, ["zz-w1"]);

    // A numbered order, and a batch large enough to be staged in the database.
    let id = client
        .add_order(order("", &["Amber clock"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found(&mut client, "amber").await, [id]);
    let padding = "x".repeat(200);
    let staged: Vec<Order> = (0..400)
        .map(|n| {
            let mut staged = order(&format!("zz-s{n:03}"), &[&format!("Staged onyx {n}")]);
            staged
                .items
                .extend(std::iter::repeat_n(padding.clone(), 20));
            staged
        })
        .collect();
    add_all(&mut client, staged).await;
    let onyx = found(&mut client, "onyx").await;
    assert_eq!(onyx.len(), 400);
    assert_eq!(onyx.first().map(String::as_str), Some("zz-s000"));
}

/// Runs the migrations named before `before` (the first that release did not have) on `url`, as
/// that release did, and stores `orders` the way it stored them: with their search text (folded
/// ASCII) if it had one, in one transaction.
async fn make_old_database(db: Db, url: &str, before: &str, orders: &[Order]) {
    let folder = match db {
        Db::Sqlite => "sqlite",
        Db::Postgres => "postgres",
    };
    let old = tempfile::tempdir().unwrap();
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(folder);
    for entry in std::fs::read_dir(&migrations).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_str().unwrap() < before {
            std::fs::copy(migrations.join(&name), old.path().join(&name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
    let search_text = before > "20261206";
    match db {
        Db::Sqlite => {
            let options = url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            migrator.run(&pool).await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            for order in orders {
                let insert = match search_text {
                    true => {
                        "INSERT INTO orders (id, items, description, price, destination, search_text)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                    }
                    false => {
                        "INSERT INTO orders (id, items, description, price, destination)
                         VALUES (?1, ?2, ?3, ?4, ?5)"
                    }
                };
                let mut query = sqlx::query(insert)
                    .bind(&order.id)
                    .bind(serde_json::to_string(&order.items).unwrap())
                    .bind(&order.description)
                    .bind(order.price)
                    .bind(&order.destination);
                if search_text {
                    query = query.bind(order.items.join("\n").to_lowercase());
                }
                query.execute(&mut *tx).await.unwrap();
            }
            sqlx::query("INSERT INTO store_info (key, value) VALUES ('created', 'then')")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            pool.close().await;
        }
        Db::Postgres => {
            assert!(!search_text, "only the release before the index is made");
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            migrator.run(&pool).await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            for order in orders {
                sqlx::query(
                    "INSERT INTO orders (id, items, description, price, destination)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&order.id)
                .bind(&order.items)
                .bind(&order.description)
                .bind(order.price)
                .bind(&order.destination)
                .execute(&mut *tx)
                .await
                .unwrap();
            }
            sqlx::query("INSERT INTO store_info (key, value) VALUES ('created', 'then')")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            pool.close().await;
        }
    }
}

#[rstest]
#[tokio::test]
async fn a_database_made_before_the_index_is_upgraded_at_start_with_nothing_lost(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let test_db = db.create().await;
    let orders: Vec<Order> = (0..2500)
        .map(|n| match n % 500 {
            0 => order(&format!("{n}"), &["Old", "Rare Garnet"]),
            _ => order(&format!("{n}"), &[&format!("old order {n}")]),
        })
        .collect();
    make_old_database(db, &test_db.url, "20261206", &orders).await;

    let server = TestServer::start_on_existing(config_on(&test_db)).await;
    let mut client = server.native().await;
    for id in ["0", "1", "1499", "2499"] {
        let stored = client.get_order(id.to_string()).await.unwrap().into_inner();
        assert_eq!(stored, orders[id.parse::<usize>().unwrap()]);
    }
    assert_eq!(found(&mut client, "").await.len(), orders.len());
    assert_eq!(
        found(&mut client, "GARNET").await,
        ["0", "500", "1000", "1500", "2000"]
    );
    // Written after the upgrade: indexed like the rest.
    client
        .add_order(order("9999", &["New garnet"]))
        .await
        .unwrap();
    assert_eq!(found(&mut client, "garnet").await.len(), 6);
}

/// A SQLite database made by the release before the search tail, where the triggers put every
/// order in the trigram index: at start the tail begins above them, so a rare term is still
/// found through the index, and the orders added after the upgrade wait in the tail.
#[tokio::test]
async fn a_database_made_before_the_search_tail_keeps_every_order_found() {
    let test_db = Db::Sqlite.create().await;
    let orders: Vec<Order> = (0..6000)
        .map(|n| match n % 1000 {
            999 => order(&format!("{n}"), &["Rare Topaz"]),
            _ => order(&format!("{n}"), &[&format!("old order {n}")]),
        })
        .collect();
    make_old_database(Db::Sqlite, &test_db.url, "20261208", &orders).await;
    let mut conn = sqlx::SqliteConnection::connect(&test_db.url).await.unwrap();
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(migrations, 4);
    drop(conn);

    let server = TestServer::start_on_existing(config_on(&test_db)).await;
    let mut client = server.native().await;
    let rare: Vec<String> = (0..6).map(|n| format!("{}", n * 1000 + 999)).collect();
    assert_eq!(indexed(&test_db, &rare).await, [true; 6]);
    // The first four in the first walking window, the last two through the index.
    assert_eq!(found(&mut client, "TOPAZ").await, rare);
    let id = client
        .add_order(order("zz-new", &["New topaz"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(indexed(&test_db, std::slice::from_ref(&id)).await, [false]);
    assert_eq!(found(&mut client, "topaz").await.last(), Some(&id));
    assert_eq!(found(&mut client, "").await.len(), orders.len() + 1);
}
