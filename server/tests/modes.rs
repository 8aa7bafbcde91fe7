//! The four RPC modes of the tutorial's full service, natively and, where gRPC-Web can carry the
//! mode (unary and server streaming), through gRPC-Web too.

mod common;

use std::time::Duration;

use common::{config_on, open_store, search, Db, TestServer};
use futures::{channel::mpsc, SinkExt, StreamExt};
use order_api::pb::{CombinedShipment, Order};
use order_server::{Config, OrderService};
use rstest::rstest;
use tonic::{Code, Request};
use tonic_types::StatusExt;

/// Only a hang reaches this.
const LIMIT: Duration = Duration::from_secs(10);

fn order(id: &str, items: &[&str], destination: &str, price: f32) -> Order {
    Order {
        id: id.into(),
        items: items.iter().map(|&i| i.into()).collect(),
        description: "test order".into(),
        price,
        destination: destination.into(),
    }
}

fn ids(orders: &[Order]) -> Vec<&str> {
    orders.iter().map(|o| o.id.as_str()).collect()
}

// ---- addOrder ----------------------------------------------------------------------------------

#[rstest]
#[tokio::test]
async fn add_order_assigns_an_id_and_stores_the_order(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    let mut client = server.native().await;
    let new = order("", &["Pixel 9"], "Seattle, WA", 499.0);
    let id = client
        .add_order(new.clone())
        .await
        .expect("added")
        .into_inner();
    assert!(!id.is_empty());
    let stored = client
        .get_order(id.clone())
        .await
        .expect("stored")
        .into_inner();
    assert_eq!(
        stored,
        Order {
            id: id.clone(),
            ..new.clone()
        }
    );

    // Another one gets another ID; an explicit ID is kept.
    let second = client.add_order(new.clone()).await.unwrap().into_inner();
    assert_ne!(second, id);
    let named = client
        .add_order(order("A-1", &["Mug"], "Boston, MA", 9.5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(named, "A-1");
}

#[rstest]
#[tokio::test]
async fn add_order_over_grpc_web(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    let id = server
        .grpc_web()
        .add_order(order("", &["Lamp"], "Denver, CO", 20.0))
        .await
        .expect("added")
        .into_inner();
    let stored = server
        .native()
        .await
        .get_order(id)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.items, ["Lamp"]);
}

#[rstest]
#[tokio::test]
async fn an_existing_id_is_already_exists_and_the_order_is_untouched(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let server = TestServer::start_on(db).await;
    let mut client = server.native().await;
    let status = client
        .add_order(order("106", &["Something else"], "Nowhere", 1.0))
        .await
        .expect_err("106 exists");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("106"));
    let kept = client
        .get_order("106".to_string())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.items, ["Amazon Echo", "Apple iPhone XS"]);
}

/// The fields named in the status's google.rpc.BadRequest details.
fn violated_fields(status: &tonic::Status) -> Vec<String> {
    let bad_request = status
        .get_details_bad_request()
        .expect("BadRequest details");
    bad_request
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

#[rstest]
#[tokio::test]
async fn an_invalid_order_is_invalid_argument_with_one_violation_per_field(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let server = TestServer::start_on(db).await;
    let cases: [(Order, &[&str]); 6] = [
        (order("", &[], "Seattle, WA", 1.0), &["items"]),
        (order("", &["ok", ""], "Seattle, WA", 1.0), &["items[1]"]),
        (order("", &["ok"], "Seattle, WA", -5.0), &["price"]),
        (order("", &["ok"], "Seattle, WA", f32::NAN), &["price"]),
        (order("", &["ok"], "", 1.0), &["destination"]),
        (
            Order {
                description: "d".repeat(5_000),
                ..order("", &[], "  ", f32::INFINITY)
            },
            &["items", "description", "price", "destination"],
        ),
    ];
    for (bad, expected) in cases {
        for transport in ["native", "grpc-web"] {
            let result = match transport {
                "native" => server.native().await.add_order(bad.clone()).await,
                _ => server.grpc_web().add_order(bad.clone()).await,
            };
            let status = result.expect_err("invalid");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{transport}: {status:?}"
            );
            assert_eq!(violated_fields(&status), expected, "{transport}");
        }
    }
    // Nothing was stored.
    assert_eq!(search(server.native().await, "").await.len(), 5);
}

#[rstest]
#[tokio::test]
async fn an_oversized_field_is_invalid(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    let status = server
        .native()
        .await
        .add_order(order("", &[&"x".repeat(10_000)], "Seattle, WA", 1.0))
        .await
        .expect_err("too long");
    assert_eq!(violated_fields(&status), ["items[0]"]);
    assert!(
        status.message().len() < 300,
        "the message stays short: {}",
        status.message()
    );
}

// ---- searchOrders ------------------------------------------------------------------------------

#[rstest]
#[tokio::test]
async fn search_streams_every_match_in_a_stable_order(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    let native = search(server.native().await, "Google").await;
    assert_eq!(ids(&native), ["102", "104"]);
    let web = search(server.grpc_web(), "Google").await;
    assert_eq!(web, native);
    let text = search(server.grpc_web_text(), "Google").await;
    assert_eq!(text, native);
}

#[rstest]
#[tokio::test]
async fn search_ignores_case_and_an_empty_result_is_ok(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    let found = search(server.native().await, "amazon echo").await;
    assert_eq!(ids(&found), ["105", "106"]);
    assert!(search(server.native().await, "Nokia").await.is_empty());
    assert!(search(server.grpc_web(), "Nokia").await.is_empty());
}

// ---- updateOrders ------------------------------------------------------------------------------

#[rstest]
#[tokio::test]
async fn update_replaces_orders_and_names_them(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    let mut client = server.native().await;
    let updates = vec![
        order("102", &["Google Pixel 9"], "Mountain View, CA", 999.0),
        order("103", &["Apple Watch S10"], "San Jose, CA", 450.0),
    ];
    let summary = client
        .update_orders(futures::stream::iter(updates))
        .await
        .expect("updated")
        .into_inner();
    assert!(
        summary.contains("102") && summary.contains("103"),
        "{summary}"
    );
    assert_eq!(
        client
            .get_order("102".to_string())
            .await
            .unwrap()
            .into_inner()
            .items,
        ["Google Pixel 9"]
    );
    assert_eq!(
        client
            .get_order("103".to_string())
            .await
            .unwrap()
            .into_inner()
            .price,
        450.0
    );
}

#[rstest]
#[tokio::test]
async fn update_is_all_or_nothing(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    let mut client = server.native().await;

    let with_unknown = vec![
        order("102", &["Changed"], "Mountain View, CA", 1.0),
        order("999", &["Ghost"], "Nowhere, NV", 1.0),
    ];
    let status = client
        .update_orders(futures::stream::iter(with_unknown))
        .await
        .expect_err("999 unknown");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("999"));

    let with_invalid = vec![
        order("102", &["Changed"], "Mountain View, CA", 1.0),
        order("103", &["Watch"], "San Jose, CA", -1.0),
    ];
    let status = client
        .update_orders(futures::stream::iter(with_invalid))
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    // Named after its place in the stream: the second order.
    assert_eq!(violated_fields(&status), ["orders[1].price"]);

    let without_id = vec![order("", &["Anything"], "Anywhere", 1.0)];
    let status = client
        .update_orders(futures::stream::iter(without_id))
        .await
        .expect_err("no id");
    assert_eq!(violated_fields(&status), ["orders[0].id"]);

    // None of those calls changed 102.
    let kept = client
        .get_order("102".to_string())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.items, ["Google Pixel 3A", "Mac Book Pro"]);
}

// ---- addOrders ---------------------------------------------------------------------------------

#[rstest]
#[tokio::test]
async fn add_orders_stores_each_and_names_them_in_order(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let server = TestServer::start_on(db).await;
    let mut client = server.native().await;
    let new = vec![
        order("", &["Pixel 9"], "Seattle, WA", 499.0),
        order("A-1", &["Kindle"], "Austin, TX", 99.0),
        order("", &["Echo Dot"], "Austin, TX", 49.0),
    ];
    let summary = client
        .add_orders(futures::stream::iter(new.clone()))
        .await
        .expect("added")
        .into_inner();
    // The sample orders end at 106: the server numbers from 107, in the client's order.
    assert_eq!(summary, "added 3 orders: 107, A-1, 108");
    for (id, sent) in ["107", "A-1", "108"].into_iter().zip(new) {
        let stored = client
            .get_order(id.to_owned())
            .await
            .expect(id)
            .into_inner();
        assert_eq!(
            stored,
            Order {
                id: id.into(),
                ..sent
            }
        );
    }
}

#[rstest]
#[tokio::test]
async fn add_orders_numbers_skip_ids_orders_already_have(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let server = TestServer::start_on(db).await;
    let mut client = server.native().await;
    client
        .add_order(order("108", &["Own ID"], "Reno, NV", 1.0))
        .await
        .expect("108 added");
    let new = (0..3).map(|n| order("", &[&format!("Numbered {n}")], "Reno, NV", 1.0));
    let summary = client
        .add_orders(futures::stream::iter(new))
        .await
        .expect("added")
        .into_inner();
    // Numbered in the order sent, past 108; a store may leave gaps, as sequences do.
    let numbers: Vec<u64> = summary
        .strip_prefix("added 3 orders: ")
        .expect(&summary)
        .split(", ")
        .map(|id| id.parse().expect("a number"))
        .collect();
    assert_eq!(numbers[0], 107, "{summary}");
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{summary}");
    assert!(!numbers.contains(&108), "{summary}");
    let kept = client
        .get_order("108".to_string())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.items, ["Own ID"]);
}

#[rstest]
#[tokio::test]
async fn add_orders_is_all_or_nothing(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    let mut client = server.native().await;
    let fresh = || order("", &["Fresh"], "Boise, ID", 5.0);

    let cases = [
        (
            vec![fresh(), order("103", &["Taken"], "San Jose, CA", 1.0)],
            Code::AlreadyExists,
            "103",
        ),
        (
            vec![
                fresh(),
                order("N-1", &["Once"], "Reno, NV", 1.0),
                order("N-1", &["Twice"], "Reno, NV", 1.0),
            ],
            Code::AlreadyExists,
            "N-1",
        ),
        (
            vec![fresh(), fresh(), order("", &["Bad"], "Reno, NV", -1.0)],
            Code::InvalidArgument,
            "orders[2].price",
        ),
    ];
    for (orders, code, named) in cases {
        let status = client
            .add_orders(futures::stream::iter(orders))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(named), "{status:?}");
    }
    assert_eq!(
        violated_fields(
            &client
                .add_orders(futures::stream::iter([order("", &[], "", 1.0)]))
                .await
                .unwrap_err()
        ),
        ["orders[0].items", "orders[0].destination"]
    );
    // Every bad order of the stream is named in the one answer, not only the first.
    let bad_rows = vec![
        fresh(),
        order("", &["Bad"], "Reno, NV", -1.0),
        fresh(),
        order("", &[], "Reno, NV", 1.0),
    ];
    assert_eq!(
        violated_fields(
            &client
                .add_orders(futures::stream::iter(bad_rows))
                .await
                .unwrap_err()
        ),
        ["orders[1].price", "orders[3].items"]
    );

    // Nothing of those calls was stored: no order has the item "Fresh", and N-1 does not exist.
    assert!(search(server.native().await, "Fresh").await.is_empty());
    let status = client.get_order("N-1".to_string()).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

/// The server applies a gRPC-Web upload as it streams: it has counted the first orders while the
/// client still holds back the last, and the call completes once the client ends its stream.
#[tokio::test]
async fn add_orders_over_grpc_web_is_read_as_it_streams() {
    let server = TestServer::start().await;
    let (mut orders, orders_rx) = mpsc::channel::<Order>(1);
    let call = tokio::spawn({
        let mut client = server.grpc_web();
        async move { client.add_orders(orders_rx).await }
    });
    for n in 0..3 {
        orders
            .send(order("", &[&format!("Streamed {n}")], "Boise, ID", 1.0))
            .await
            .unwrap();
    }
    let received = async {
        loop {
            let m = server.metrics().await;
            let labels = [("grpc_method", "addOrders")];
            if m.value("grpc_server_msg_received_total", &labels) == 3.0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(LIMIT, received)
        .await
        .expect("the server counts the first three orders before the stream ends");
    assert!(!call.is_finished());
    orders
        .send(order("", &["Streamed 3"], "Boise, ID", 1.0))
        .await
        .unwrap();
    drop(orders);
    let summary = tokio::time::timeout(LIMIT, call)
        .await
        .expect("answered")
        .unwrap()
        .expect("added")
        .into_inner();
    assert_eq!(summary, "added 4 orders: 107, 108, 109, 110");
    assert_eq!(search(server.grpc_web(), "streamed").await.len(), 4);
}

// ---- processOrders -----------------------------------------------------------------------------

fn shipment_ids(shipment: &CombinedShipment) -> Vec<&str> {
    ids(&shipment.orders_list)
}

#[rstest]
#[tokio::test]
async fn process_ships_each_full_group_at_once_and_the_rest_at_the_end(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let server = TestServer::start_on(db).await;
    let mut client = server.native().await;
    let (mut ids_tx, ids_rx) = mpsc::unbounded::<String>();
    let mut shipments = client
        .process_orders(ids_rx)
        .await
        .expect("started")
        .into_inner();

    // Three orders for Mountain View fill a batch (default size 3): it comes while the client's
    // stream is still open.
    for id in ["102", "103", "104", "106"] {
        ids_tx.send(id.to_string()).await.unwrap();
    }
    let first = tokio::time::timeout(LIMIT, shipments.message())
        .await
        .expect("a full batch ships")
        .unwrap()
        .unwrap();
    assert_eq!(first.destination(), "Mountain View, CA");
    assert_eq!(shipment_ids(&first), ["102", "104", "106"]);
    assert_eq!(first.status, "Processed");
    assert!(!first.id.is_empty());

    ids_tx.send("105".to_string()).await.unwrap();
    drop(ids_tx);
    let rest: Vec<CombinedShipment> =
        tokio::time::timeout(LIMIT, shipments.map(|s| s.unwrap()).collect::<Vec<_>>())
            .await
            .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].destination(), "San Jose, CA");
    assert_eq!(shipment_ids(&rest[0]), ["103", "105"]);
    assert_ne!(rest[0].id, first.id);
}

trait Destination {
    fn destination(&self) -> &str;
}

impl Destination for CombinedShipment {
    /// All orders of a shipment share its destination; checked here for every shipment.
    fn destination(&self) -> &str {
        let destination = self.orders_list[0].destination.as_str();
        assert!(
            self.orders_list
                .iter()
                .all(|o| o.destination == destination),
            "{self:?}"
        );
        destination
    }
}

#[rstest]
#[tokio::test]
async fn every_order_is_in_exactly_one_shipment_whatever_the_batch_size(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    for batch_size in [1, 2, 3, 10] {
        let mut config = Config::for_tests();
        config.batch_size = batch_size.try_into().unwrap();
        let server = TestServer::start_with_on(config, db).await;
        let all = ["102", "103", "104", "105", "106"].map(String::from);
        let shipments: Vec<CombinedShipment> = server
            .native()
            .await
            .process_orders(futures::stream::iter(all.clone()))
            .await
            .unwrap()
            .into_inner()
            .map(|s| s.unwrap())
            .collect()
            .await;
        let mut shipped: Vec<&str> = shipments.iter().flat_map(shipment_ids).collect();
        shipped.sort();
        assert_eq!(shipped, all, "batch size {batch_size}");
        for shipment in &shipments {
            shipment.destination();
            assert!(shipment.orders_list.len() <= batch_size);
        }
    }
}

#[rstest]
#[tokio::test]
async fn process_ends_with_not_found_naming_an_unknown_id(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let server = TestServer::start_on(db).await;
    let ids = ["102", "404-nope"].map(String::from);
    let mut shipments = server
        .native()
        .await
        .process_orders(futures::stream::iter(ids))
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        match shipments.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("404-nope"),
        "{}",
        status.message()
    );
}

// ---- deadlines, cancellation, concurrency ------------------------------------------------------

#[rstest]
#[tokio::test]
async fn a_client_deadline_ends_a_call_that_would_wait_forever(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let server = TestServer::start_on(db).await;
    // A client that sends grpc-timeout but does not enforce it itself.
    let mut client = server.h2c();

    // A client stream that never ends: without the deadline both calls would wait for ever.
    let (_keep_open, ids_rx) = mpsc::unbounded::<String>();
    let mut request = Request::new(ids_rx);
    request.set_timeout(Duration::from_millis(300));
    let mut shipments = client
        .process_orders(request)
        .await
        .expect("started")
        .into_inner();
    let status = tokio::time::timeout(LIMIT, shipments.message())
        .await
        .expect("ended by the deadline")
        .expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded);

    let (_keep_open, orders_rx) = mpsc::unbounded::<Order>();
    let mut request = Request::new(orders_rx);
    request.set_timeout(Duration::from_millis(300));
    let status = tokio::time::timeout(LIMIT, client.update_orders(request))
        .await
        .expect("ended by the deadline")
        .expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded);
}

#[rstest]
#[tokio::test]
async fn a_call_without_grpc_timeout_cannot_hold_its_stream_forever(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let mut config = Config::for_tests();
    config.max_call_duration = Duration::from_millis(500);
    let server = TestServer::start_with_on(config, db).await;
    let mut client = server.native().await;

    // updateOrders that sends one order and then neither more nor its end: without the ceiling
    // it would hold its transaction (and, on SQLite, every other write) for ever.
    let (mut orders_tx, orders_rx) = mpsc::unbounded::<Order>();
    orders_tx
        .send(order("103", &["Sony"], "Colombo", 1.0))
        .await
        .unwrap();
    let status = tokio::time::timeout(LIMIT, client.update_orders(orders_rx))
        .await
        .expect("ended by the server's ceiling")
        .expect_err("past the ceiling");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        status.message().contains("--max-call-duration"),
        "{status:?}"
    );
    // Nothing of it was applied, and writes go on.
    let added = tokio::time::timeout(LIMIT, client.add_order(order("", &["x"], "Kandy", 1.0)))
        .await
        .expect("a write after the ended update does not wait");
    added.expect("added");
    let kept = client
        .get_order("103".to_string())
        .await
        .unwrap()
        .into_inner();
    assert_ne!(kept.destination, "Colombo");

    // processOrders whose IDs never end.
    let (_keep_open, ids_rx) = mpsc::unbounded::<String>();
    let mut shipments = client.process_orders(ids_rx).await.unwrap().into_inner();
    let status = tokio::time::timeout(LIMIT, shipments.message())
        .await
        .expect("ended by the server's ceiling")
        .expect_err("past the ceiling");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    drop(orders_tx);
}

#[rstest]
#[tokio::test]
async fn a_stream_stops_when_its_client_goes_away(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let db = db.create().await;
    let config = config_on(&db);
    let orders = OrderService::new(open_store(&config).await, config.batch_size);
    let mut open = orders.open_streams();
    let server = TestServer::start_service(orders, config).await;

    let (ids_tx, ids_rx) = mpsc::unbounded::<String>();
    let client = server.native().await;
    let shipments = client
        .clone()
        .process_orders(ids_rx)
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(LIMIT, open.wait_for(|&n| n == 1))
        .await
        .expect("the stream opens")
        .unwrap();

    // The client goes away mid-call.
    drop(shipments);
    drop(ids_tx);
    drop(client);
    tokio::time::timeout(LIMIT, open.wait_for(|&n| n == 0))
        .await
        .expect("the server drops the stream")
        .unwrap();
}

#[rstest]
#[tokio::test]
async fn many_clients_at_once_see_one_consistent_store(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    let mut tasks = Vec::new();
    for client_number in 0..16 {
        let mut client = server.native().await;
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..20 {
                let item = format!("Widget {client_number}-{n}");
                ids.push(
                    client
                        .add_order(order("", &[&item], "Reno, NV", 1.0))
                        .await
                        .unwrap()
                        .into_inner(),
                );
                // Reads interleave with the writes of the other clients.
                client.get_order("106".to_string()).await.unwrap();
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), count, "every added order got its own ID");
    let widgets = search(server.native().await, "widget").await;
    assert_eq!(widgets.len(), 16 * 20);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_with_one_id_have_exactly_one_winner(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let server = TestServer::start_on(db).await;
    let mut racers = Vec::new();
    for n in 0..16 {
        let mut client = server.native().await;
        racers.push(tokio::spawn(async move {
            let item = format!("Racer {n}");
            client
                .add_order(order("RACE-1", &[&item], "Reno, NV", 1.0))
                .await
                .map(|_| item)
        }));
    }
    let mut winners = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            Ok(item) => winners.push(item),
            Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = server
        .native()
        .await
        .get_order("RACE-1".to_string())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.items, winners, "the stored order is the winner's");
}

#[tokio::test]
async fn an_order_invalid_in_every_field_gets_a_bounded_invalid_argument() {
    let server = TestServer::start().await;
    let bad = Order {
        id: "\u{1}".repeat(1000),
        items: vec!["x".repeat(10_000); 100],
        description: "d".repeat(100_000),
        price: f32::NAN,
        destination: " ".repeat(1000),
    };
    // Through tonic's client, whose header limit is 16 KiB: a bigger answer is a transport error.
    let status = server.native().await.add_order(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.details().len();
    assert!(
        status.message().len() + details < 8 * 1024,
        "{} + {details} bytes",
        status.message().len()
    );
    assert!(status.message().ends_with("more"), "{}", status.message());
    let bad_request = status.get_details_bad_request().expect("details");
    assert_eq!(bad_request.field_violations.len(), 10);
}
