//! `/metrics`: what an operator's Prometheus scrapes, checked against calls the test makes.

mod common;

use common::{get_order, search, TestServer};
use futures::{channel::mpsc, SinkExt, StreamExt};
use order_api::pb::Order;
use order_server::Config;
use tonic::Code;

/// Only a broken server makes a test wait this long.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

fn rpc(method: &str) -> [(&str, &str); 2] {
    [("grpc_service", "OrderManagement"), ("grpc_method", method)]
}

fn with<'a>(base: [(&'a str, &'a str); 2], more: (&'a str, &'a str)) -> [(&'a str, &'a str); 3] {
    [base[0], base[1], more]
}

#[tokio::test]
async fn metrics_count_calls_by_rpc_and_code_time_them_and_count_stream_messages() {
    let server = TestServer::start().await;
    let before = server.metrics().await;
    assert_eq!(
        before.value("grpc_server_started_total", &rpc("getOrder")),
        0.0
    );

    // getOrder: twice found (native, gRPC-Web), once not.
    get_order(server.native().await, "106").await.unwrap();
    get_order(server.grpc_web(), "106").await.unwrap();
    let missing = get_order(server.native().await, "999").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // searchOrders: one message per match.
    let found = search(server.native().await, "Apple").await;
    assert!(found.len() >= 2);
    // updateOrders: two orders up, one answer.
    let mut client = server.native().await;
    let mut order = client
        .get_order("103".to_string())
        .await
        .unwrap()
        .into_inner();
    order.destination = "Colombo".into();
    let (mut tx, rx) = mpsc::unbounded::<Order>();
    tx.send(order.clone()).await.unwrap();
    tx.send(order).await.unwrap();
    drop(tx);
    client.update_orders(rx).await.unwrap();

    let m = server.metrics().await;
    let get = rpc("getOrder");
    assert_eq!(m.value("grpc_server_started_total", &get), 4.0, "{}", m.0);
    assert_eq!(
        m.value("grpc_server_handled_total", &with(get, ("grpc_code", "OK"))),
        3.0
    );
    assert_eq!(
        m.value(
            "grpc_server_handled_total",
            &with(get, ("grpc_code", "NotFound"))
        ),
        1.0
    );
    assert_eq!(m.value("grpc_server_handling_seconds_count", &get), 4.0);
    assert!(m.value("grpc_server_handling_seconds_sum", &get) > 0.0);
    // Every call fits in the largest bucket.
    assert_eq!(
        m.value(
            "grpc_server_handling_seconds_bucket",
            &with(get, ("le", "+Inf"))
        ),
        4.0
    );
    assert_eq!(m.value("grpc_server_msg_received_total", &get), 4.0);
    assert_eq!(m.value("grpc_server_msg_sent_total", &get), 3.0);
    assert_eq!(
        m.get(
            "grpc_server_started_total",
            &with(get, ("grpc_type", "unary"))
        ),
        Some(4.0)
    );

    let search = rpc("searchOrders");
    assert_eq!(
        m.value("grpc_server_msg_sent_total", &search),
        found.len() as f64
    );
    assert_eq!(
        m.value(
            "grpc_server_handled_total",
            &with(search, ("grpc_code", "OK"))
        ),
        1.0
    );
    let update = rpc("updateOrders");
    assert_eq!(m.value("grpc_server_msg_received_total", &update), 2.0);
    assert_eq!(
        m.get(
            "grpc_server_started_total",
            &with(update, ("grpc_type", "client_stream"))
        ),
        Some(1.0)
    );

    // The server's own gauges.
    assert!(
        m.value("order_server_open_connections", &[]) >= 1.0,
        "{}",
        m.0
    );
    assert_eq!(m.get("order_server_open_streams", &[]), Some(0.0));
    assert_eq!(
        m.get("order_server_database_connections_max", &[]),
        Some(8.0)
    );
    assert!(m
        .get("order_server_database_connections", &[("state", "idle")])
        .is_some());
    assert!(m.get("order_server_log_lines_dropped_total", &[]).is_some());
}

#[tokio::test]
async fn an_open_stream_shows_in_the_metrics_and_a_client_that_leaves_is_counted_canceled() {
    let server = TestServer::start().await;
    let (mut ids, ids_rx) = mpsc::unbounded::<String>();
    let mut shipments = server
        .native()
        .await
        .process_orders(ids_rx)
        .await
        .unwrap()
        .into_inner();
    ids.send("102".into()).await.unwrap();
    // Wait (on the metrics themselves) for the ID to arrive.
    let process = rpc("processOrders");
    let arrived = async {
        loop {
            let m = server.metrics().await;
            if m.value("grpc_server_msg_received_total", &process) == 1.0 {
                return m;
            }
            tokio::task::yield_now().await;
        }
    };
    let m = tokio::time::timeout(LIMIT, arrived)
        .await
        .expect("the ID arrives");
    assert_eq!(m.get("order_server_open_streams", &[]), Some(1.0));
    drop(ids);
    drop(shipments.next());
    drop(shipments);
    loop {
        let m = server.metrics().await;
        if m.value(
            "grpc_server_handled_total",
            &with(process, ("grpc_code", "Canceled")),
        ) == 1.0
        {
            break;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn refusals_are_counted_and_no_metrics_turns_the_endpoint_off() {
    let server = TestServer::start().await;
    let status = get_order(server.native().await, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let m = server.metrics().await;
    assert_eq!(
        m.value(
            "grpc_server_handled_total",
            &with(rpc("getOrder"), ("grpc_code", "InvalidArgument"))
        ),
        1.0
    );

    let mut config = Config::for_tests();
    config.no_metrics = true;
    let quiet = TestServer::start_with(config).await;
    let request = http::Request::get(format!("{}/metrics", quiet.url()))
        .body(http_body_util::Full::<bytes::Bytes>::default())
        .unwrap();
    let response = common::http1_client().request(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::NOT_FOUND);
}
