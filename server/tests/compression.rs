//! gzip both ways, as clients ask for it: gRPC messages (`grpc-encoding`, `grpc-accept-encoding`)
//! from tonic's own client and from raw HTTP/2 frames, and browser answers as gzip content.

mod common;

use std::io::{Read, Write};

use bytes::Bytes;
use common::{framed, messages, TestServer};
use http::{header, Request};
use http_body_util::BodyExt;
use order_api::pb::Order;
use tonic::codec::CompressionEncoding;
use tower::ServiceExt;

/// An order of about `kb` KB: big enough to be worth compressing.
fn big_order(id: &str, kb: usize) -> Order {
    Order {
        id: id.into(),
        items: (0..kb * 5)
            .map(|i| format!("item {i} {}", "x".repeat(180)))
            .collect(),
        description: "a big order".into(),
        price: 10.0,
        destination: "Reno, NV".into(),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test]
async fn tonic_compressing_both_ways_round_trips_a_big_order() {
    let server = TestServer::start().await;
    let mut client = server
        .native()
        .await
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let order = big_order("GZ-1", 19);
    client
        .add_order(order.clone())
        .await
        .expect("a gzip request is taken");
    let found = client
        .get_order("GZ-1".to_owned())
        .await
        .expect("a gzip answer is read");
    assert_eq!(found.metadata().get("grpc-encoding").unwrap(), "gzip");
    assert_eq!(found.into_inner(), order);
    server.stop().await.unwrap();
}

/// Sends `body` as a native call to `path` with `headers`; the answer's headers, body and status.
async fn raw_call(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (http::HeaderMap, Vec<u8>, String) {
    let (response, mut send) = common::raw_h2_call_with(server.addr, path, headers).await;
    send.send_data(body, true).unwrap();
    let response = response.await.unwrap();
    let head = response.headers().clone();
    let mut answer = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk.unwrap();
        let _ = answer.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = answer.trailers().await.unwrap().unwrap_or_default();
    let status = head
        .get("grpc-status")
        .or(trailers.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (head, data, status)
}

fn string_value(text: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&text.to_owned())
}

#[tokio::test]
async fn only_answers_over_the_threshold_go_compressed_and_only_to_clients_that_take_gzip() {
    let server = TestServer::start().await;
    server
        .native()
        .await
        .add_order(big_order("GZ-2", 8))
        .await
        .unwrap();
    let get = "/OrderManagement/getOrder";
    let takes_gzip = [("grpc-accept-encoding", "identity,deflate,gzip")];

    // A big order, to a client that takes gzip: compressed, and flagged.
    let (head, body, status) =
        raw_call(&server, get, &takes_gzip, framed(0, &string_value("GZ-2"))).await;
    assert_eq!(status, "0");
    assert_eq!(head["grpc-encoding"], "gzip");
    let [(flag, message)] = &messages(&body)[..] else {
        panic!("one message: {body:?}")
    };
    assert_eq!(*flag, 1, "flagged compressed");
    let order: Order = prost::Message::decode(&gunzip(message)[..]).unwrap();
    assert_eq!(order, big_order("GZ-2", 8));
    assert!(
        message.len() < order.items.len() * 200,
        "{} bytes",
        message.len()
    );

    // A small one: as it is, gzip would not pay.
    let (_, body, status) =
        raw_call(&server, get, &takes_gzip, framed(0, &string_value("106"))).await;
    assert_eq!(status, "0");
    assert_eq!(messages(&body)[0].0, 0);

    // A client that did not ask: never compressed.
    let (head, body, _) = raw_call(&server, get, &[], framed(0, &string_value("GZ-2"))).await;
    assert!(!head.contains_key("grpc-encoding"));
    assert_eq!(messages(&body)[0].0, 0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_gzip_request_is_inflated_and_a_gzip_bomb_is_refused_at_the_message_limit() {
    let server = TestServer::start().await;
    let add = "/OrderManagement/addOrder";
    let gzip_header = [("grpc-encoding", "gzip")];
    let order = prost::Message::encode_to_vec(&big_order("GZ-3", 2));
    let (_, body, status) = raw_call(&server, add, &gzip_header, framed(1, &gzip(&order))).await;
    assert_eq!(status, "0");
    let [(_, id)] = &messages(&body)[..] else {
        panic!()
    };
    assert_eq!(id, &string_value("GZ-3"));

    // 64 MiB of zeros in about 64 KB: refused once 4 MiB (the default limit) are out.
    let bomb = gzip(&vec![0; 64 << 20]);
    let (head, _, status) = raw_call(&server, add, &gzip_header, framed(1, &bomb)).await;
    assert_eq!(status, "8", "RESOURCE_EXHAUSTED: {head:?}");
    // The server is fine and still answers.
    let mut client = server.native().await;
    assert_eq!(
        client
            .get_order("106".to_owned())
            .await
            .unwrap()
            .into_inner()
            .id,
        "106"
    );

    // An encoding this server does not take: UNIMPLEMENTED, naming the one it does.
    let (head, _, status) = raw_call(
        &server,
        add,
        &[("grpc-encoding", "snappy")],
        framed(1, b"??"),
    )
    .await;
    assert_eq!(status, "12");
    assert_eq!(head["grpc-accept-encoding"], "gzip");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_browsers_search_arrives_as_gzip_content() {
    let server = TestServer::start().await;
    let mut client = server.native().await;
    for i in 0..50 {
        client
            .add_order(big_order(&format!("B-{i}"), 2))
            .await
            .unwrap();
    }
    // What a browser's fetch sends: gRPC-Web with Origin and Accept-Encoding.
    let search = |accept: &'static str| {
        Request::post(format!("{}/OrderManagement/searchOrders", server.url()))
            .header(header::CONTENT_TYPE, "application/grpc-web+proto")
            .header(header::ORIGIN, server.url())
            .header(header::ACCEPT_ENCODING, accept)
            .body(http_body_util::Full::new(framed(
                0,
                &string_value("item 1"),
            )))
            .unwrap()
    };
    let response = common::http1_client()
        .oneshot(search("gzip, deflate, br, zstd"))
        .await
        .unwrap();
    assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
    let wire = response.into_body().collect().await.unwrap().to_bytes();
    let plain = gunzip(&wire);
    let found = messages(&plain);
    // 50 orders and the trailers frame.
    assert_eq!(found.len(), 51);
    assert_eq!(found[50].0, 0x80, "gRPC-Web trailers last");
    assert!(
        wire.len() * 10 < plain.len(),
        "{} bytes for {}",
        wire.len(),
        plain.len()
    );

    let response = common::http1_client()
        .oneshot(search("identity"))
        .await
        .unwrap();
    assert!(!response.headers().contains_key(header::CONTENT_ENCODING));
    server.stop().await.unwrap();
}

/// A browser's unary call is answered whole (`Content-Length`, one write): its message and its
/// trailers frame, gzipped together as HTTP content when they reach the threshold.
#[tokio::test]
async fn a_browsers_unary_answer_is_gzipped_whole_when_large() {
    let server = TestServer::start().await;
    let big = big_order("BW-1", 8);
    server.native().await.add_order(big.clone()).await.unwrap();
    let get = |id: &str| {
        Request::post(format!("{}/OrderManagement/getOrder", server.url()))
            .header(header::CONTENT_TYPE, "application/grpc-web+proto")
            .header(header::ORIGIN, server.url())
            .header(header::ACCEPT_ENCODING, "gzip, deflate, br, zstd")
            .body(http_body_util::Full::new(framed(0, &string_value(id))))
            .unwrap()
    };
    let response = common::http1_client().oneshot(get("BW-1")).await.unwrap();
    assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
    let length: usize = response.headers()[header::CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let wire = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(wire.len(), length);
    let found = messages(&gunzip(&wire));
    assert_eq!(found.len(), 2, "the order and the trailers frame");
    let order: Order = prost::Message::decode(&found[0].1[..]).unwrap();
    assert_eq!(order, big);
    assert_eq!(found[1].0, 0x80, "gRPC-Web trailers last");
    assert!(wire.len() * 2 < found[0].1.len(), "{} bytes", wire.len());

    // Order 106 is small: as it is.
    let response = common::http1_client().oneshot(get("106")).await.unwrap();
    assert!(!response.headers().contains_key(header::CONTENT_ENCODING));
    let wire = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(messages(&wire).len(), 2);
    server.stop().await.unwrap();
}

/// A compressed upload keeps the write promise of a plain one: a client stream of gzip messages
/// that ends in the middle of one (its header cut, or its compressed bytes cut) or is reset
/// half-way stores none of its orders.
#[tokio::test]
async fn a_compressed_client_stream_cut_off_stores_nothing() {
    let server = TestServer::start().await;
    let gzip_frame = |id: &str| framed(1, &gzip(&prost::Message::encode_to_vec(&big_order(id, 2))));
    let whole = [gzip_frame("GZCUT-1"), gzip_frame("GZCUT-2")].concat();
    let third = gzip_frame("GZCUT-3");
    let gzip_call = || {
        common::raw_h2_call_with(
            server.addr,
            "/OrderManagement/addOrders",
            &[("grpc-encoding", "gzip")],
        )
    };
    // Two whole orders, then part of a third's header, or its header and half its bytes.
    for cut in [5 - 2, third.len() / 2] {
        let (response, mut body) = gzip_call().await;
        let mut sent = whole.clone();
        sent.extend_from_slice(&third[..cut]);
        body.send_data(sent.into(), true).unwrap();
        let status = common::raw_h2_status(response).await;
        assert_eq!(
            status.as_deref(),
            Ok("10"),
            "ABORTED, cut after {cut} bytes of the third"
        );
    }
    // Two whole orders, then the client resets its stream.
    const RECEIVED: &str = "grpc_server_msg_received_total";
    let add_orders = [("grpc_method", "addOrders")];
    let before = server.metrics().await.value(RECEIVED, &add_orders);
    let (response, mut body) = gzip_call().await;
    body.send_data(Bytes::from(whole), false).unwrap();
    // The server receives both orders.
    server.counted(RECEIVED, &add_orders, before + 2.0).await;
    body.send_reset(h2::Reason::CANCEL);
    drop(response);
    // The reset call ends (counted ABORTED) before anything is looked for.
    let aborted = [("grpc_method", "addOrders"), ("grpc_code", "Aborted")];
    server
        .counted("grpc_server_handled_total", &aborted, 3.0)
        .await;
    let mut client = server.native().await;
    for id in ["GZCUT-1", "GZCUT-2", "GZCUT-3"] {
        let status = client.get_order(id.to_owned()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{id} was stored");
    }
}
