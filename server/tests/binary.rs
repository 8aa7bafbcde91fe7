//! The `order-server` binary as an operator runs it: started with flags, stopped with SIGTERM.

mod common;

use std::process::Command;

use common::process::ServerProcess;

#[test]
fn the_server_serves_and_stops_cleanly_on_sigterm() {
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", db.path().join("orders.db").display());
    let mut server = ServerProcess::start(&["--database", &url]);

    // The client's runtime (and with it its connection) is gone before the signal, as when a
    // CLI call ends.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let order = runtime
        .block_on(async { common::get_order(server.client().await, "106").await })
        .expect("order 106");
    drop(runtime);
    assert_eq!(order.destination, "Mountain View, CA");

    let status = server.terminate();
    assert!(
        status.success(),
        "order-server exits cleanly on SIGTERM: {status}"
    );
    // The log ends when the process does.
    let log: Vec<String> = server.log.iter().collect();
    assert!(
        log.iter().any(|line| line.contains("shutting down")),
        "{log:?}"
    );
}

#[test]
fn server_rejects_a_bad_flag_with_a_clear_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_order-server"))
        .args(["--cors-origin", "localhost:8080"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("expected scheme://host[:port]"), "{stderr}");
}

#[test]
fn a_database_that_cannot_be_opened_stops_the_start_with_a_clear_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_order-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database",
            "mysql://shop@db/orders",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("use sqlite:PATH"), "{stderr}");
}

#[test]
fn an_unread_stderr_does_not_stop_the_server() {
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", db.path().join("orders.db").display());
    let server = ServerProcess::start_unread(&["--database", &url]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = server.client().await;
        // Each add logs an INFO line; a 64 KiB pipe nobody reads is full long before the end.
        for n in 0..1500 {
            let order = order_api::pb::Order {
                items: vec![format!(
                    "Item {n} with a long enough name to fill the pipe faster"
                )],
                destination: "Reno, NV".into(),
                price: 1.0,
                ..Default::default()
            };
            let mut request = tonic::Request::new(order);
            request.set_timeout(std::time::Duration::from_secs(10));
            client.add_order(request).await.unwrap_or_else(|status| {
                panic!("add {n} failed while stderr was not read: {status}")
            });
        }
    });
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", db.path().join("orders.db").display());
    let mut server = ServerProcess::start(&["--database", &url, "--log-format", "json"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = server.client().await;
        client
            .add_order(order_api::pb::Order {
                items: vec!["Sony".into()],
                destination: "Colombo".into(),
                price: 1.0,
                ..Default::default()
            })
            .await
            .unwrap();
    });
    drop(runtime);
    assert!(server.terminate().success());
    let lines: Vec<String> = server.log.iter().collect();
    assert!(lines.len() >= 2, "{lines:?}");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    for event in &events {
        assert!(
            event["timestamp"].is_string() && event["level"].is_string(),
            "{event}"
        );
    }
    // The write's log line, with its fields as JSON fields.
    assert!(
        events
            .iter()
            .any(|event| event["fields"]["message"] == "order added"
                && event["fields"]["id"] == "107"),
        "{events:?}"
    );
}
