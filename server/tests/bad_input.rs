//! Whatever a client sends, it gets a clear answer (a non-OK grpc-status or a 4xx) quickly, never
//! a panic, a hang or a 5xx, and the server keeps serving everyone else.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{decode_text_body, h2c_client, http1_client, TestServer};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use order_server::Config;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// Generous bound that only a hang exceeds; answers normally take milliseconds.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
enum Transport {
    /// HTTP/1.1, as browsers send gRPC-Web.
    Http1,
    /// HTTP/2 cleartext with prior knowledge, as native gRPC clients connect.
    H2c,
}

struct Case {
    name: &'static str,
    transport: Transport,
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    headers: &'static [(&'static str, &'static str)],
    body: Vec<u8>,
    /// A specific grpc-status the answer must carry, where one is the right answer.
    expect_code: Option<tonic::Code>,
}

/// A gRPC length-prefixed message.
fn frame(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![flags];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An encoded google.protobuf.StringValue holding these bytes.
fn string_value(bytes: &[u8]) -> Vec<u8> {
    let mut message = vec![0x0a];
    let mut len = bytes.len();
    while len >= 0x80 {
        message.push((len as u8) | 0x80);
        len >>= 7;
    }
    message.push(len as u8);
    message.extend_from_slice(bytes);
    message
}

fn rpc(
    name: &'static str,
    transport: Transport,
    content_type: &'static str,
    body: Vec<u8>,
) -> Case {
    Case {
        name,
        transport,
        method: Method::POST,
        path: "/OrderManagement/getOrder",
        content_type: Some(content_type),
        headers: &[],
        body,
        expect_code: None,
    }
}

const WEB: &str = "application/grpc-web+proto";
const NATIVE: &str = "application/grpc";
use Transport::{H2c, Http1};

fn cases() -> Vec<Case> {
    let lying_length = {
        let mut body = vec![0, 0xff, 0xff, 0xff, 0xff];
        body.extend(string_value(b"106"));
        body
    };
    let short_body = {
        let mut body = vec![0, 0, 0, 0, 100];
        body.extend(string_value(b"106"));
        body
    };
    let not_protobuf = frame(0, &[0xff, 0xff, 0xff, 0xff, 0xff]);
    let bad_utf8 = frame(0, &string_value(&[0xff, 0xfe, 0xfd]));
    let compressed = frame(1, &string_value(b"106"));
    let garbage = b"this is not a gRPC frame at all".to_vec();

    let mut cases = Vec::new();
    for (transport, content_type) in [(Http1, WEB), (H2c, WEB), (H2c, NATIVE)] {
        cases.extend([
            rpc("garbage body", transport, content_type, garbage.clone()),
            rpc(
                "length prefix 0xFFFFFFFF",
                transport,
                content_type,
                lying_length.clone(),
            ),
            rpc(
                "length prefix longer than the body",
                transport,
                content_type,
                short_body.clone(),
            ),
            rpc(
                "truncated frame header",
                transport,
                content_type,
                vec![0, 0, 0],
            ),
            rpc(
                "bytes that are not protobuf",
                transport,
                content_type,
                not_protobuf.clone(),
            ),
            rpc(
                "invalid UTF-8 in a string field",
                transport,
                content_type,
                bad_utf8.clone(),
            ),
            rpc(
                "compressed flag without grpc-encoding",
                transport,
                content_type,
                compressed.clone(),
            ),
            Case {
                headers: &[("grpc-encoding", "snappy-nonsense")],
                expect_code: Some(tonic::Code::Unimplemented),
                ..rpc(
                    "unsupported grpc-encoding",
                    transport,
                    content_type,
                    compressed.clone(),
                )
            },
        ]);
    }
    cases.extend([
        rpc(
            "invalid base64 in text mode",
            Http1,
            "application/grpc-web-text",
            b"!!!! not base64 ####".to_vec(),
        ),
        rpc(
            "text mode, base64 of garbage",
            Http1,
            "application/grpc-web-text",
            b"aGVsbG8gd29ybGQ=".to_vec(),
        ),
        rpc(
            "native gRPC over HTTP/1.1",
            Http1,
            NATIVE,
            frame(0, &string_value(b"106")),
        ),
        rpc(
            "unknown grpc-web subtype",
            Http1,
            "application/grpc-web+json",
            frame(0, &string_value(b"106")),
        ),
        rpc(
            "text/plain on an RPC path",
            Http1,
            "text/plain",
            b"106".to_vec(),
        ),
        rpc(
            "JSON on an RPC path",
            Http1,
            "application/json",
            br#"{"value":"106"}"#.to_vec(),
        ),
        rpc(
            "form on an RPC path",
            H2c,
            "application/x-www-form-urlencoded",
            b"value=106".to_vec(),
        ),
        Case {
            method: Method::GET,
            body: Vec::new(),
            ..rpc(
                "GET on an RPC path with gRPC-Web content type",
                Http1,
                WEB,
                Vec::new(),
            )
        },
        Case {
            method: Method::GET,
            content_type: None,
            ..rpc("GET on an RPC path", Http1, WEB, Vec::new())
        },
        Case {
            method: Method::PUT,
            ..rpc("PUT on an RPC path", Http1, "text/plain", b"106".to_vec())
        },
        Case {
            method: Method::GET,
            path: "/%2e%2e/Cargo.toml",
            content_type: None,
            ..rpc("`..` in a static path", Http1, WEB, Vec::new())
        },
    ]);
    cases
}

/// What the server answered: the HTTP status and the grpc-status, wherever it was carried.
#[derive(Debug)]
struct Answer {
    http: StatusCode,
    grpc_status: Option<i32>,
}

async fn send(server: &TestServer, case: &Case) -> Answer {
    let mut request = Request::builder().method(case.method.clone()).uri(format!(
        "{}{}",
        server.url(),
        case.path
    ));
    if let Some(content_type) = case.content_type {
        request = request.header(http::header::CONTENT_TYPE, content_type);
    }
    for (name, value) in case.headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(case.body.clone())))
        .unwrap();
    let response = match case.transport {
        Http1 => http1_client().request(request).await,
        H2c => h2c_client().request(request).await,
    }
    .unwrap_or_else(|e| panic!("{}: no HTTP answer: {e:?}", case.name));
    let (parts, body) = response.into_parts();
    let header_status = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().parse::<i32>().unwrap())
    };
    let mut grpc_status = header_status(&parts.headers);
    let collected = body.collect().await;
    if let Ok(collected) = collected {
        if let Some(trailers) = collected.trailers() {
            grpc_status = grpc_status.or(header_status(trailers));
        }
        let mut bytes = collected.to_bytes().to_vec();
        let content_type = parts.headers.get(http::header::CONTENT_TYPE);
        if content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/grpc-web-text")) {
            bytes = decode_text_body(&bytes).unwrap();
        }
        grpc_status = grpc_status.or(grpc_web_trailer_status(&bytes));
    }
    Answer {
        http: parts.status,
        grpc_status,
    }
}

/// The grpc-status in a gRPC-Web trailer frame (flag 0x80) of a response body.
fn grpc_web_trailer_status(mut body: &[u8]) -> Option<i32> {
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let payload = body.get(5..5 + len)?;
        if body[0] & 0x80 != 0 {
            let text = String::from_utf8_lossy(payload);
            return text.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("grpc-status")
                    .then(|| value.trim().parse().ok())?
            });
        }
        body = &body[5 + len..];
    }
    None
}

async fn assert_still_serving(server: &TestServer, after: &str) {
    let order = timeout(ANSWER_WITHIN, async {
        server.native().await.get_order("106".to_string()).await
    })
    .await
    .unwrap_or_else(|_| panic!("server hung after {after}"))
    .unwrap_or_else(|e| panic!("server broken after {after}: {e}"));
    assert_eq!(order.into_inner().id, "106");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    for case in cases() {
        let answer = timeout(ANSWER_WITHIN, send(&server, &case))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} ({:?}): no answer, the call hung",
                    case.name, case.transport
                )
            });
        let what = format!("{} ({:?}): {answer:?}", case.name, case.transport);
        assert!(!answer.http.is_server_error(), "{what}");
        let refused = answer.http.is_client_error() || answer.grpc_status.is_some_and(|s| s != 0);
        assert!(refused, "{what}: expected a 4xx or a non-OK grpc-status");
        if let Some(code) = case.expect_code {
            assert_eq!(answer.grpc_status, Some(code as i32), "{what}");
        }
        assert_still_serving(&server, case.name).await;
    }
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_answered_out_of_range() {
    let mut config = Config::for_tests();
    config.max_message_size = 1024;
    let server = TestServer::start_with(config).await;
    let big = frame(0, &string_value(&[b'7'; 2000]));
    for (transport, content_type) in [(Http1, WEB), (H2c, WEB), (H2c, NATIVE)] {
        let case = rpc("over the size limit", transport, content_type, big.clone());
        let answer = timeout(ANSWER_WITHIN, send(&server, &case))
            .await
            .expect("answered");
        assert_eq!(
            answer.grpc_status,
            Some(tonic::Code::OutOfRange as i32),
            "{transport:?} {content_type}: {answer:?}"
        );
    }
    // Through the generated client as well.
    let status = server
        .native()
        .await
        .get_order("7".repeat(2000))
        .await
        .expect_err("too big");
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert_still_serving(&server, "an oversized message").await;
}

/// Reads what the server sends until it closes the connection.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    timeout(ANSWER_WITHIN, stream.read_to_end(&mut received))
        .await
        .expect("the server closes a connection that sends junk")
        .ok();
    received
}

#[tokio::test]
async fn junk_on_an_http2_connection_closes_it() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xde\xad\xbe\xef junk that is no HTTP/2 frame\x00\x00\x00\x00\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let received = read_until_closed(&mut stream).await;
    assert!(!received.starts_with(b"HTTP/1.1 5"));
    assert_still_serving(&server, "junk on HTTP/2").await;
}

#[tokio::test]
async fn junk_on_an_http1_connection_gets_a_4xx() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"\x16\x03\x01 GARBAGE NOT HTTP\r\n\r\n")
        .await
        .unwrap();
    let received = read_until_closed(&mut stream).await;
    assert!(
        received.is_empty() || received.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert_still_serving(&server, "junk on HTTP/1").await;
}

#[tokio::test]
async fn raw_dot_dot_paths_do_not_leave_the_static_folder() {
    let server = TestServer::start().await;
    for path in [
        "/../Cargo.toml",
        "/../../server/Cargo.toml",
        "/pkg/../../Cargo.toml",
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let received = read_until_closed(&mut stream).await;
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 4"), "{path}: {text}");
        assert!(!text.contains("[package]"), "{path} leaked a file");
    }
}

#[tokio::test]
async fn hundreds_of_idle_connections_do_not_stop_the_service() {
    let server = TestServer::start().await;
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        match i % 3 {
            // Connected and silent.
            0 => {}
            // Half an HTTP/1.1 request.
            1 => stream
                .write_all(b"POST /OrderManagement/getOrder HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap(),
            // The HTTP/2 preface and nothing more.
            _ => stream
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap(),
        }
        idle.push(stream);
    }
    assert_still_serving(&server, "300 idle connections").await;
    let order = timeout(
        ANSWER_WITHIN,
        server.grpc_web().get_order("106".to_string()),
    )
    .await
    .expect("gRPC-Web answered")
    .expect("106");
    assert_eq!(order.into_inner().id, "106");
    drop(idle);
}

/// A server that gives up on silent clients after one second.
async fn impatient_server() -> TestServer {
    let mut config = Config::for_tests();
    config.header_read_timeout = Duration::from_secs(1);
    config.http2_keepalive = Duration::from_secs(1);
    TestServer::start_with(config).await
}

/// Waits (up to a bound only a hang reaches) for the server to close `stream`.
async fn closed_by_the_server(mut stream: TcpStream) -> bool {
    let mut buffer = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    timeout(Duration::from_secs(20), closed).await.is_ok()
}

#[tokio::test]
async fn a_socket_that_sends_nothing_is_closed() {
    let server = impatient_server().await;
    let silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_by_the_server(silent).await);
    assert_still_serving(&server, "a silent socket").await;
}

#[tokio::test]
async fn half_a_request_head_is_closed() {
    let server = impatient_server().await;
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(closed_by_the_server(stalled).await);
    assert_still_serving(&server, "half a request head").await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_request() {
    let server = impatient_server().await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // Answered, kept alive, then never used again.
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    assert!(closed_by_the_server(idle).await);
}

#[tokio::test]
async fn an_http2_preface_and_then_nothing_is_closed() {
    let server = impatient_server().await;
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    // The preface and an empty SETTINGS frame, then silence: no answer to the server's pings.
    stalled
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(closed_by_the_server(stalled).await);
    assert_still_serving(&server, "a silent HTTP/2 connection").await;
}
