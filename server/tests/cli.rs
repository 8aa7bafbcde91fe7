//! The two binaries as a person uses them: `order-server` started with flags and stopped with
//! SIGTERM, and `order-client get`.

mod common;

use std::process::Command;

use common::process::ServerProcess;
use tempfile::TempDir;

struct Server {
    process: ServerProcess,
    _db: TempDir,
}

impl std::ops::Deref for Server {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

/// Starts the real binary on an ephemeral port and a database of its own.
fn start_server() -> Server {
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", db.path().join("orders.db").display());
    Server {
        process: ServerProcess::start(&["--database", &url]),
        _db: db,
    }
}

fn client(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_order-client"))
        .arg("--addr")
        .arg(format!("http://{}", server.addr))
        .args(args)
        .output()
        .expect("order-client runs")
}

#[test]
fn client_gets_an_order_and_reports_not_found_and_server_stops_on_sigterm() {
    let mut server = start_server();

    let found = client(&server, &["get", "106"]);
    let stdout = String::from_utf8_lossy(&found.stdout);
    assert!(found.status.success(), "{found:?}");
    assert!(stdout.contains("Order 106"), "{stdout}");
    assert!(stdout.contains("Apple iPhone XS"), "{stdout}");
    assert!(stdout.contains("Mountain View, CA"), "{stdout}");
    assert!(stdout.contains("300.00"), "{stdout}");

    let missing = client(&server, &["get", "999"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(stderr.contains("NotFound"), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");

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
fn client_explains_an_unreachable_server() {
    let output = Command::new(env!("CARGO_BIN_EXE_order-client"))
        .args([
            "--addr",
            "http://127.0.0.1:1",
            "--timeout",
            "2",
            "get",
            "106",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("cannot connect to http://127.0.0.1:1"),
        "{stderr}"
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
fn client_covers_all_four_modes() {
    let mut server = start_server();
    let stdout =
        |output: &std::process::Output| String::from_utf8_lossy(&output.stdout).into_owned();

    let added = client(
        &server,
        &[
            "add",
            "--item",
            "Pixel 9",
            "--item",
            "Case",
            "--destination",
            "Seattle, WA",
            "--price",
            "549",
        ],
    );
    assert!(added.status.success(), "{added:?}");
    assert_eq!(stdout(&added).trim(), "added order 107");

    let rejected = client(
        &server,
        &["add", "--item", "", "--destination", "X", "--price", "-1"],
    );
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(!rejected.status.success());
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(stderr.contains("  items[0]: must not be empty"), "{stderr}");
    assert!(stderr.contains("  price: must not be negative"), "{stderr}");

    let found = client(&server, &["search", "google"]);
    let text = stdout(&found);
    let orders: Vec<&str> = text.lines().filter(|l| l.starts_with("Order ")).collect();
    assert_eq!(orders, ["Order 102", "Order 104"]);

    let updated = client(
        &server,
        &[
            "update",
            r#"{"id":"103","items":["Apple Watch S10"],"destination":"San Jose, CA","price":450}"#,
        ],
    );
    assert!(updated.status.success(), "{updated:?}");
    assert!(stdout(&updated).contains("103"));
    assert!(stdout(&client(&server, &["get", "103"])).contains("Apple Watch S10"));

    let processed = client(
        &server,
        &["process", "102", "103", "104", "105", "106", "107"],
    );
    let text = stdout(&processed);
    assert!(processed.status.success(), "{processed:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].ends_with("to Mountain View, CA: orders 102, 104, 106"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("to San Jose, CA: orders 103, 105")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("to Seattle, WA: orders 107")),
        "{text}"
    );

    let unknown = client(&server, &["process", "102", "999"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains(r#"order "999" not found"#));

    let _ = server.child.kill();
    let _ = server.child.wait();
}
