//! The two binaries as a person uses them: `order-server` started with flags and stopped with
//! SIGTERM, and `order-client get`.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

struct Server {
    child: Child,
    addr: String,
    log: mpsc::Receiver<String>,
}

/// Starts the real binary on an ephemeral port and reads the port from its log.
fn start_server() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_order-server"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("order-server starts");
    let stderr = child.stderr.take().unwrap();
    let (lines, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let serving = log
        .recv_timeout(Duration::from_secs(20))
        .expect("a first log line");
    let addr = serving
        .split_whitespace()
        .find_map(|word| word.strip_prefix("address="))
        .unwrap_or_else(|| panic!("no address in {serving:?}"))
        .to_string();
    Server { child, addr, log }
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

    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.child.wait().unwrap();
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
