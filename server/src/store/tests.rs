//! The store's rules on an embedded SQLite file. The same rules on PostgreSQL are covered by the
//! integration tests, which run every RPC on both.

use futures::{StreamExt, TryStreamExt};

use super::*;

fn new_order(id: &str, item: &str) -> ValidOrder {
    ValidOrder::try_from(Order {
        id: id.into(),
        items: vec![item.into()],
        description: String::new(),
        price: 10.0,
        destination: "Austin, TX".into(),
    })
    .unwrap()
}

async fn open(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite:{}", dir.path().join("orders.db").display());
    Store::open(&StoreOptions::new(url)).await.expect("opens")
}

async fn search(store: &Store, text: &str) -> Vec<String> {
    store
        .search(text)
        .map_ok(|o| o.id)
        .try_collect()
        .await
        .unwrap()
}

fn updates(orders: Vec<ValidOrder>) -> OrderStream<'static> {
    futures::stream::iter(orders.into_iter().map(Ok)).boxed()
}

#[tokio::test]
async fn a_new_database_has_the_tutorials_sample_orders() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let order = store.get("106").await.expect("106 is a sample order");
    assert_eq!(order.items, ["Amazon Echo", "Apple iPhone XS"]);
    assert_eq!(order.destination, "Mountain View, CA");
    assert_eq!(order.price, 300.0);
    assert!(matches!(store.get("101").await, Err(Error::NotFound(_))));
    assert!(matches!(store.get("107").await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn an_existing_database_is_not_seeded_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store
        .update_all(updates(vec![new_order("103", "changed")]), None)
        .await
        .unwrap();
    drop(store);
    let store = open(&dir).await;
    assert_eq!(store.get("103").await.unwrap().items, ["changed"]);
}

#[tokio::test]
async fn no_sample_data_starts_empty_and_numbers_from_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("orders.db").display());
    let store = Store::open(&StoreOptions {
        sample_data: false,
        ..StoreOptions::new(url)
    })
    .await
    .unwrap();
    assert!(search(&store, "").await.is_empty());
    assert_eq!(store.add(new_order("", "a"), None).await.unwrap(), "1");
}

#[tokio::test]
async fn a_second_server_on_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(&dir).await;
    let url = format!("sqlite:{}", dir.path().join("orders.db").display());
    let error = Store::open(&StoreOptions::new(url)).await.unwrap_err();
    assert!(matches!(error, OpenError::Locked { .. }), "{error}");
    assert!(error.to_string().contains("PostgreSQL"), "{error}");
}

#[tokio::test]
async fn assigned_ids_follow_the_sequence_and_skip_taken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert_eq!(store.add(new_order("", "a"), None).await.unwrap(), "107");
    store.add(new_order("108", "b"), None).await.unwrap();
    assert_eq!(store.add(new_order("", "c"), None).await.unwrap(), "109");
    assert_eq!(store.get("109").await.unwrap().id, "109");
}

#[tokio::test]
async fn a_huge_explicit_id_is_just_a_string() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store
        .add(new_order("18446744073709551615", "x"), None)
        .await
        .unwrap();
    assert_eq!(store.add(new_order("", "a"), None).await.unwrap(), "107");
}

#[tokio::test]
async fn an_existing_id_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let err = store
        .add(new_order("106", "Other"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(id) if id == "106"));
    assert_eq!(store.get("106").await.unwrap().items[1], "Apple iPhone XS");
}

/// An order of `items` items of about 790 bytes (up to 80 KB, the most validation allows),
/// matching "big".
fn big_order(items: usize) -> ValidOrder {
    ValidOrder::try_from(Order {
        items: (0..items)
            .map(|_| format!("big {}", "\u{1D11E}".repeat(196)))
            .collect(),
        price: 1.0,
        destination: "Austin, TX".into(),
        ..Order::default()
    })
    .unwrap()
}

#[tokio::test]
async fn search_pages_are_bounded_in_bytes_and_a_spent_budget_reads_one_order_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("orders.db").display());
    // Orders of various sizes, around the size of a page, and many small ones between them.
    let mut added = Vec::new();
    let store = Store::open(&StoreOptions::new(url.clone())).await.unwrap();
    for (n, items) in [1, 100, 4, 100, 50, 1, 100, 100, 100, 2]
        .into_iter()
        .enumerate()
    {
        added.push(store.add(big_order(items), None).await.unwrap());
        for _ in 0..(n * 7) {
            store.add(new_order("", "small"), None).await.unwrap();
        }
    }
    assert_eq!(search(&store, "big").await, added);
    assert_eq!(search(&store, "small").await.len(), 7 * 45);
    // The budget is given back whole once a search is done or dropped.
    let budget = store.search_memory.available_permits();
    let mut unread = store.search("big");
    assert!(unread.next().await.is_some());
    assert!(store.search_memory.available_permits() < budget);
    drop(unread);
    assert_eq!(store.search_memory.available_permits(), budget);
    drop(store);
    // A budget too small for any page: every page is one order, and all come in order.
    let mut options = StoreOptions::new(url);
    options.search_memory_bytes = 1;
    let starved = Store::open(&options).await.unwrap();
    assert_eq!(search(&starved, "big").await, added);
    assert_eq!(search(&starved, "small").await.len(), 7 * 45);
}

#[tokio::test]
async fn search_ignores_case_and_keeps_id_order_across_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store
        .add(new_order("99", "google glass"), None)
        .await
        .unwrap();
    // More than a page of non-matching orders between the matches.
    for _ in 0..(2 * SEARCH_PAGE) {
        store.add(new_order("", "mug"), None).await.unwrap();
    }
    store
        .add(new_order("zzzz", "Google TV"), None)
        .await
        .unwrap();
    assert_eq!(search(&store, "GOOGLE").await, ["99", "102", "104", "zzzz"]);
    assert!(search(&store, "no such thing").await.is_empty());
    assert_eq!(search(&store, "mug").await.len() as i64, 2 * SEARCH_PAGE);
}

#[tokio::test]
async fn update_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    // Read once so the cache holds the old 102.
    store.get("102").await.unwrap();
    let err = store
        .update_all(
            updates(vec![new_order("102", "changed"), new_order("777", "x")]),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(id) if id == "777"));
    assert_eq!(store.get("102").await.unwrap().items[0], "Google Pixel 3A");

    let updated = store
        .update_all(
            updates(vec![new_order("102", "changed"), new_order("103", "too")]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(updated.to_string(), "updated 2 orders: 102, 103");
    assert_eq!(store.get("102").await.unwrap().items, ["changed"]);
}

#[tokio::test]
async fn a_failing_update_stream_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let orders = futures::stream::iter([
        Ok(new_order("102", "changed")),
        Err(Error::Client(tonic::Status::cancelled("client went away"))),
    ])
    .boxed();
    assert!(store.update_all(orders, None).await.is_err());
    assert_eq!(store.get("102").await.unwrap().items[0], "Google Pixel 3A");
}

#[test]
fn a_long_update_summary_counts_the_rest() {
    let mut updated = Written::updated();
    let mut seen = std::collections::HashSet::new();
    for i in 0..25 {
        updated.record(&i.to_string(), &mut seen);
    }
    // Named again: still 25 orders.
    updated.record("3", &mut seen);
    let summary = updated.to_string();
    assert!(
        summary.starts_with("updated 25 orders: 0, 1, 2"),
        "{summary}"
    );
    assert!(summary.ends_with("19 and 5 more"), "{summary}");
}

#[tokio::test]
async fn concurrent_adds_get_distinct_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..10 {
                    ids.push(store.add(new_order("", "Widget"), None).await.unwrap());
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 80);
    assert_eq!(search(&store, "widget").await.len(), 80);
}

#[test]
fn passwords_stay_out_of_logs() {
    assert_eq!(
        redact("postgres://shop:s3cret@db:5432/orders"),
        "postgres://shop:***@db:5432/orders"
    );
    assert_eq!(
        redact("postgres://shop@db/orders"),
        "postgres://shop@db/orders"
    );
    assert_eq!(redact("sqlite:data/orders.db"), "sqlite:data/orders.db");
}

#[tokio::test]
async fn an_unknown_scheme_is_refused_clearly() {
    let error = Store::open(&StoreOptions::new("mysql://x/y"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("sqlite:PATH"), "{error}");
}

#[tokio::test]
async fn writes_cancelled_at_any_point_leave_no_connection_inside_a_transaction() {
    // A client that goes away mid-call drops the call's future wherever it is, BEGIN included.
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    for n in 0..3000u64 {
        let cut = std::time::Duration::from_nanos(n * 97 % 400_000);
        let _ = tokio::time::timeout(cut, store.add(new_order("", "cancelled"), None)).await;
        if n % 10 == 0 {
            let _ = tokio::time::timeout(
                cut,
                store.update_all(updates(vec![new_order("103", "cancelled")]), None),
            )
            .await;
        }
    }
    // Every connection of the pool is used again: none may still be in a transaction.
    for n in 0..100 {
        store
            .add(new_order("", "after"), None)
            .await
            .unwrap_or_else(|error| panic!("write {n} after the cancellations: {error}"));
    }
}

/// A server starting on a new file starts, every time (the pool's first connections once raced
/// for the switch to WAL; see `sqlite::connect_pool`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_database_file_opens_every_time() {
    for _ in 0..50 {
        open(&tempfile::tempdir().unwrap()).await;
    }
}

/// A key keeps its answer wherever the store keeps it: in the tail of recent keys, in the index
/// once the tail is indexed, after a restart. A key that expired is stored anew, and the newer
/// answer is the one found once both rows are indexed.
#[tokio::test]
async fn keys_keep_their_answers_through_the_tail_the_index_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = |n: usize| Key::new("anonymous".into(), &format!("key-{n:05}")).unwrap();
    let request = |n: usize| new_order("", &format!("keyed {n}"));
    let add_all = |store: Store, from: usize, to: usize| async move {
        let mut ids = Vec::new();
        for chunk in (from..to).collect::<Vec<_>>().chunks(64) {
            let added = futures::future::join_all(
                chunk.iter().map(|&n| store.add(request(n), Some(key(n)))),
            )
            .await;
            ids.extend(added.into_iter().map(Result::unwrap));
        }
        ids
    };
    // The tail indexed twice, and a hundred keys left in it.
    let total = 2 * sqlite_keys::MERGE_AT as usize + 100;
    let store = open(&dir).await;
    let ids = add_all(store.clone(), 0, total).await;
    let sample: Vec<usize> = (0..total).step_by(97).chain([total - 1]).collect();
    let replays = |store: Store, restarted: bool| {
        let (sample, ids) = (&sample, &ids);
        async move {
            for &n in sample {
                let again = store.add(request(n), Some(key(n))).await.unwrap();
                assert_eq!(again, ids[n], "key {n}, restarted: {restarted}");
                let other = store.add(request(n + 1), Some(key(n))).await;
                assert!(
                    matches!(other, Err(Error::KeyReused { .. })),
                    "key {n}, restarted: {restarted}: {other:?}"
                );
            }
        }
    };
    replays(store, false).await;
    replays(open(&dir).await, true).await;
    let url = format!("sqlite:{}", dir.path().join("orders.db").display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(orders as usize, sample_orders().len() + total);
    // Two days pass for every key; key 0 (indexed) is stored anew, then the tail is indexed.
    sqlx::query("UPDATE idempotency_keys SET created = created - 2 * 86400000")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let store = open(&dir).await;
    let anew = store.add(request(0), Some(key(0))).await.unwrap();
    assert_ne!(anew, ids[0]);
    add_all(store.clone(), total, total + sqlite_keys::MERGE_AT as usize).await;
    assert_eq!(store.add(request(0), Some(key(0))).await.unwrap(), anew);
}

/// One `addOrder` on an idle server is one commit: it writes the order's pages, not a new
/// segment of the trigram index as well (10 pages to the WAL instead of 4, a third longer a
/// call). The newest orders wait in the search tail; they are found all the same.
#[tokio::test]
async fn one_added_order_writes_its_own_pages_and_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let orders: Vec<ValidOrder> = (0..3000)
        .map(|n| new_order("", &format!("crate number {n}")))
        .collect();
    store.add_all(updates(orders), None).await.unwrap();
    sqlite::wal::empty(dir.path()).await;
    let id = store
        .add(new_order("", "a rare gadget"), None)
        .await
        .unwrap();
    let frames = sqlite::wal::pages(dir.path());
    assert!(frames <= 5, "{frames} pages written to add one order");
    assert_eq!(search(&store, "RARE GADGET").await, [id]);
    assert_eq!(search(&store, "number 2999").await.len(), 1);
}
