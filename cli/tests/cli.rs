//! `order-client` as a person uses it, against a live `order-server` (the library, in this
//! process, on `127.0.0.1:0` and a SQLite database of its own).

use std::{process::Command, thread::JoinHandle};

use clap::Parser;

/// A server on its own runtime thread, stopped when dropped.
struct LiveServer {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _data: tempfile::TempDir,
}

impl LiveServer {
    fn start() -> Self {
        Self::start_with(&[], tempfile::tempdir().unwrap())
    }

    /// A server with these extra flags, its database in `data`.
    fn start_with(flags: &[&str], data: tempfile::TempDir) -> Self {
        let database = format!("sqlite:{}", data.path().join("orders.db").display());
        let mut args = vec!["order-server", "--database", &database];
        args.extend_from_slice(flags);
        let config = order_server::Config::parse_from(args);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime
                .block_on(order_server::run(listener, config, async {
                    let _ = stopped.await;
                }))
                .expect("the server runs");
        });
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
            _data: data,
        }
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn client_calls_over_tls_with_a_token_and_says_why_a_call_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = data.path();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("secret"), "cli test secret\n").unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    let (cert_path, key_path, secret_path) = (path("cert.pem"), path("key.pem"), path("secret"));
    let secret = order_server::read_secret(dir.join("secret").as_ref()).unwrap();
    let token = |scope: &str| {
        order_server::sign_token(
            &secret,
            "cli",
            scope,
            std::time::Duration::from_secs(600),
            None,
            None,
        )
        .unwrap()
    };
    let server = LiveServer::start_with(
        &[
            "--tls-cert",
            &cert_path,
            "--tls-key",
            &key_path,
            "--auth-secret-file",
            &secret_path,
        ],
        data,
    );
    let url = format!("https://localhost:{}", server.addr.port());
    let call = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_order-client"))
            .args(["--addr", &url, "--ca-cert", &cert_path])
            .args(extra)
            .output()
            .unwrap()
    };

    let read = token("orders:read");
    let found = call(&["--token", &read, "get", "106"]);
    assert!(found.status.success(), "{found:?}");
    assert!(String::from_utf8_lossy(&found.stdout).contains("Order 106"));

    let anonymous = call(&["get", "106"]);
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(!anonymous.status.success());
    assert!(
        stderr.contains("Unauthenticated") && stderr.contains("no token"),
        "{stderr}"
    );

    let refused = call(&[
        "--token",
        &read,
        "add",
        "--item",
        "Lamp",
        "--destination",
        "X",
        "--price",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("orders:write"),
        "{stderr}"
    );

    let write = token("orders:write");
    let added = Command::new(env!("CARGO_BIN_EXE_order-client"))
        .args(["--addr", &url, "--ca-cert", &cert_path])
        .env("ORDER_TOKEN", &write)
        .args([
            "add",
            "--item",
            "Lamp",
            "--destination",
            "X",
            "--price",
            "1",
        ])
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
}

fn client(server: &LiveServer, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_order-client"))
        .arg("--addr")
        .arg(format!("http://{}", server.addr))
        .args(args)
        .output()
        .expect("order-client runs")
}

#[test]
fn client_gets_an_order_and_reports_not_found() {
    let server = LiveServer::start();

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
}

#[test]
fn orders_are_json_in_the_protos_field_names() {
    let server = LiveServer::start();
    let unknown_field = client(&server, &["update", r#"{"id":"103","colour":"red"}"#]);
    let stderr = String::from_utf8_lossy(&unknown_field.stderr);
    assert!(!unknown_field.status.success());
    assert!(stderr.contains("is not an order"), "{stderr}");
    assert!(stderr.contains("unknown field `colour`"), "{stderr}");

    // Fields left out keep their defaults; here the server then names the one that is required.
    let no_items = client(&server, &["update", r#"{"id":"103","destination":"X"}"#]);
    let stderr = String::from_utf8_lossy(&no_items.stderr);
    assert!(!no_items.status.success());
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(stderr.contains("items"), "{stderr}");
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
fn client_covers_all_four_modes() {
    let server = LiveServer::start();
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
}

#[test]
fn client_imports_json_lines_from_standard_input_all_or_nothing() {
    use std::io::Write;
    let server = LiveServer::start();
    let stdout =
        |output: &std::process::Output| String::from_utf8_lossy(&output.stdout).into_owned();
    let import = |lines: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_order-client"))
            .arg("--addr")
            .arg(format!("http://{}", server.addr))
            .args(["import", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("order-client runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let rejected = import(concat!(
        r#"{"items":["Imported lamp"],"destination":"Reno, NV","price":20}"#,
        "\n",
        r#"{"items":["Imported desk"],"destination":"Reno, NV","price":-1}"#,
        "\n",
    ));
    assert!(!rejected.status.success());
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(
        stderr.contains("orders[1].price: must not be negative"),
        "{stderr}"
    );
    assert!(stdout(&client(&server, &["search", "imported"])).contains("no order has"));

    let imported = import(concat!(
        r#"{"items":["Imported lamp"],"destination":"Reno, NV","price":20}"#,
        "\n",
        r#"{"id":"L-2","items":["Imported desk"],"destination":"Reno, NV","price":80}"#,
        "\n",
    ));
    assert!(imported.status.success(), "{imported:?}");
    assert_eq!(stdout(&imported).trim(), "added 2 orders: 107, L-2");
    assert!(stdout(&client(&server, &["get", "L-2"])).contains("Imported desk"));
}

/// The count `grpc_server_handled_total` of `method` ending with `code`, from `/metrics`.
fn handled(server: &LiveServer, method: &str, code: &str) -> f64 {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(server.addr).unwrap();
    write!(
        socket,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    socket.read_to_string(&mut text).unwrap();
    let series = format!("grpc_method=\"{method}\"");
    let code = format!("grpc_code=\"{code}\"");
    text.lines()
        .filter(|line| line.starts_with("grpc_server_handled_total{"))
        .filter(|line| line.contains(&series) && line.contains(&code))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_write_whose_outcome_is_unknown_is_retried_with_its_key_and_applied_once() {
    let data = tempfile::tempdir().unwrap();
    let database = format!("sqlite:{}", data.path().join("orders.db").display());
    let server = LiveServer::start_with(&["--database-timeout", "0.3"], data);
    // Serving: the database exists.
    assert!(client(&server, &["get", "106"]).status.success());
    // Another process holds SQLite's write lock: the first attempts get UNAVAILABLE.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut lock = runtime.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&database).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    });
    let add = Command::new(env!("CARGO_BIN_EXE_order-client"))
        .args([
            "--addr",
            &format!("http://{}", server.addr),
            "--retries",
            "30",
        ])
        .args([
            "add",
            "--item",
            "retried mug",
            "--destination",
            "Jaffna",
            "--price",
            "4",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while handled(&server, "addOrder", "Unavailable") < 1.0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "no attempt failed"
        );
        std::thread::yield_now();
    }
    runtime.block_on(async {
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    });
    let added = add.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(added.status.success(), "{added:?}");
    assert!(stderr.contains("Unavailable"), "{stderr}");
    assert!(stderr.contains("same idempotency key"), "{stderr}");
    let stdout = String::from_utf8_lossy(&added.stdout);
    assert_eq!(stdout.trim(), "added order 107");
    let found = client(&server, &["search", "retried mug"]);
    let found = String::from_utf8_lossy(&found.stdout);
    assert_eq!(found.matches("Order ").count(), 1, "{found}");
}

#[test]
fn the_same_idempotency_key_from_another_run_gets_the_first_answer() {
    let server = LiveServer::start();
    let add = |key: &str| {
        let args = [
            "--idempotency-key",
            key,
            "add",
            "--item",
            "mug",
            "--destination",
            "Jaffna",
            "--price",
            "4",
        ];
        let output = client(&server, &args);
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(add("run-1"), "added order 107");
    assert_eq!(
        add("run-1"),
        "added order 107",
        "the second run was applied"
    );
    assert_eq!(add("run-2"), "added order 108");
}

#[test]
fn every_protocol_covers_all_four_modes_and_errors_with_details() {
    let server = LiveServer::start();
    for protocol in ["grpc", "grpc-web", "connect"] {
        let run = |args: &[&str]| {
            let output = client(&server, &[&["--protocol", protocol][..], args].concat());
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            (output, text)
        };
        let (found, text) = run(&["get", "106"]);
        assert!(found.status.success(), "{protocol}: {found:?}");
        assert!(text.contains("Apple iPhone XS"), "{protocol}: {text}");

        let (missing, _) = run(&["get", "999"]);
        let stderr = String::from_utf8_lossy(&missing.stderr);
        assert!(stderr.contains("NotFound"), "{protocol}: {stderr}");

        let (rejected, _) = run(&["add", "--item", "", "--destination", "X", "--price", "-1"]);
        let stderr = String::from_utf8_lossy(&rejected.stderr);
        assert!(
            stderr.contains("  price: must not be negative"),
            "{protocol}: {stderr}"
        );

        let id = format!("P-{protocol}");
        let (added, text) = run(&[
            "add",
            "--id",
            &id,
            "--item",
            "Lamp",
            "--destination",
            "Reno, NV",
            "--price",
            "5",
        ]);
        assert!(added.status.success(), "{protocol}: {added:?}");
        assert_eq!(text.trim(), format!("added order {id}"));

        let (_, text) = run(&["search", "lamp"]);
        assert!(text.contains(&format!("Order {id}")), "{protocol}: {text}");

        let update =
            format!(r#"{{"id":"{id}","items":["Lamp"],"destination":"Reno, NV","price":6}}"#);
        let (updated, text) = run(&["update", &update]);
        assert!(updated.status.success(), "{protocol}: {updated:?}");
        assert!(text.contains(&id), "{protocol}: {text}");

        let (processed, text) = run(&["process", "102", &id]);
        assert!(processed.status.success(), "{protocol}: {processed:?}");
        assert_eq!(text.lines().count(), 2, "{protocol}: {text}");
    }
}
