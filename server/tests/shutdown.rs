//! Graceful shutdown: once the signal comes, no new connections are taken, and a call already in
//! flight still gets its full answer.

mod common;

use std::time::Duration;

use common::TestServer;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_call_in_flight_finishes_after_the_shutdown_signal() {
    let mut server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();

    // A gRPC-Web call whose body is held back: `Expect: 100-continue` makes the server say when
    // the call has reached the service and it is waiting for the body.
    let body = [0u8, 0, 0, 0, 5, 0x0a, 3, b'1', b'0', b'6'];
    let head = format!(
        "POST /OrderManagement/getOrder HTTP/1.1\r\nHost: {}\r\ncontent-type: application/grpc-web+proto\r\n\
         content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        server.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut continue_line = [0u8; 25];
    timeout(LIMIT, stream.read_exact(&mut continue_line))
        .await
        .expect("100 Continue")
        .unwrap();
    assert!(continue_line.starts_with(b"HTTP/1.1 100 Continue"));

    server.begin_shutdown();
    // The server stops taking connections...
    timeout(LIMIT, async {
        while TcpStream::connect(server.addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the listener closes on shutdown");

    // ...but the call in flight completes.
    stream.write_all(&body).await.unwrap();
    let mut response = Vec::new();
    timeout(LIMIT, stream.read_to_end(&mut response))
        .await
        .expect("the connection closes after the answer")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("Apple iPhone XS"), "{text}");
    assert!(text.contains("grpc-status:0"), "{text}");

    timeout(LIMIT, server.stop())
        .await
        .expect("the server stops once its calls are done")
        .expect("clean stop");
}
