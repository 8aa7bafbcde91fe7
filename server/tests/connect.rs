//! The Connect protocol against a live server, as `curl` and Connect clients send it: JSON and
//! binary unary calls, GET, streams with their end message, errors with their details, deadlines,
//! gzip, tokens and metrics, all through the same edge as gRPC.

mod common;

use std::io::Write;

use bytes::Bytes;
use common::{framed, messages, TestServer};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use order_api::pb::Order;
use prost::Message;
use tower::ServiceExt;

/// One HTTP/1.1 request: its status, headers and body.
async fn send(
    server: &TestServer,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{}{path_and_query}", server.url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = common::http1_client()
        .oneshot(request.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

const JSON: (&str, &str) = ("content-type", "application/json");

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("JSON: {body:?}"))
}

#[tokio::test]
async fn curl_with_json_gets_an_order_and_errors_as_connect_json() {
    let server = TestServer::start().await;
    let get = "/OrderManagement/getOrder";
    let (status, headers, body) = send(&server, Method::POST, get, &[JSON], "\"106\"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let order = json(&body);
    assert_eq!(order["id"], "106");
    assert_eq!(
        order["items"],
        serde_json::json!(["Amazon Echo", "Apple iPhone XS"])
    );
    assert_eq!(order["destination"], "Mountain View, CA");

    // charset is allowed in the content type; a missing order is 404 with Connect's error.
    let (status, _, body) = send(
        &server,
        Method::POST,
        get,
        &[("content-type", "application/json; charset=utf-8")],
        "\"999\"",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        json(&body),
        serde_json::json!({ "code": "not_found", "message": "order \"999\" not found" })
    );

    // Not JSON of the message's type.
    let (status, _, body) = send(&server, Method::POST, get, &[JSON], "{\"nope\": 1}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&body)["code"], "invalid_argument");

    // An invalid order: 400, each bad field in a BadRequest detail, readable as JSON too.
    let add = "/OrderManagement/addOrder";
    let bad = r#"{"items": [], "price": -1, "destination": ""}"#;
    let (status, _, body) = send(&server, Method::POST, add, &[JSON], bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = json(&body);
    assert_eq!(error["code"], "invalid_argument");
    let detail = &error["details"][0];
    assert_eq!(detail["type"], "google.rpc.BadRequest");
    let value = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        detail["value"].as_str().unwrap(),
    )
    .unwrap();
    let decoded = tonic_types::pb::BadRequest::decode(&value[..]).unwrap();
    let fields: Vec<_> = decoded
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["items", "price", "destination"]);
    assert_eq!(detail["debug"]["fieldViolations"][1]["field"], "price");

    // Binary: the message itself as the body.
    let (status, headers, body) = send(
        &server,
        Method::POST,
        get,
        &[("content-type", "application/proto")],
        "105".to_owned().encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/proto");
    assert_eq!(Order::decode(body).unwrap().id, "105");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn get_reads_the_message_from_the_query() {
    let server = TestServer::start().await;
    let (status, _, body) = send(
        &server,
        Method::GET,
        "/OrderManagement/getOrder?connect=v1&encoding=json&message=%22104%22",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(json(&body)["id"], "104");

    // Binary, in URL-safe base64.
    let message = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        "103".to_owned().encode_to_vec(),
    );
    let query = format!("/OrderManagement/getOrder?encoding=proto&base64=1&message={message}");
    let (status, _, body) = send(&server, Method::GET, &query, &[], Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Order::decode(body).unwrap().id, "103");

    // A GET without a query is the page's, not Connect's.
    let (status, _, _) = send(
        &server,
        Method::GET,
        "/OrderManagement/getOrder",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn streams_end_with_their_status_in_the_last_message() {
    let server = TestServer::start().await;
    let stream_json = [("content-type", "application/connect+json")];
    let (status, headers, body) = send(
        &server,
        Method::POST,
        "/OrderManagement/searchOrders",
        &stream_json,
        framed(0, b"\"google\""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/connect+json");
    let found = messages(&body);
    assert_eq!(found.len(), 3, "two orders and the end");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&found[0].1).unwrap()["id"],
        "102"
    );
    assert_eq!(found[2], (2, b"{}".to_vec()));

    // A client stream refused: the end message carries the error, HTTP status stays 200.
    let orders = [
        framed(0, br#"{"items":["lamp"],"price":1,"destination":"Reno"}"#),
        framed(0, br#"{"items":[],"price":1,"destination":"Reno"}"#),
    ]
    .concat();
    let (status, _, body) = send(
        &server,
        Method::POST,
        "/OrderManagement/addOrders",
        &stream_json,
        orders,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let found = messages(&body);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, 2);
    let end: serde_json::Value = serde_json::from_slice(&found[0].1).unwrap();
    assert_eq!(end["error"]["code"], "invalid_argument");
    assert_eq!(
        end["error"]["details"][0]["debug"]["fieldViolations"][0]["field"],
        "orders[1].items"
    );

    // Binary messages go through as they are.
    let (_, _, body) = send(
        &server,
        Method::POST,
        "/OrderManagement/searchOrders",
        &[("content-type", "application/connect+proto")],
        framed(0, &"echo".to_owned().encode_to_vec()),
    )
    .await;
    let found = messages(&body);
    assert_eq!(found.len(), 3);
    assert_eq!(Order::decode(&found[1].1[..]).unwrap().id, "106");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_edge_judges_connect_calls_as_any_other() {
    let server = TestServer::start().await;
    // Connect-Timeout-Ms is the call's deadline: a client stream whose client sends one order and
    // then nothing more ends with deadline_exceeded, in its end message.
    let (mut tx, rx) = futures::channel::mpsc::channel::<
        Result<http_body::Frame<Bytes>, std::convert::Infallible>,
    >(1);
    let request = Request::post(format!("{}/OrderManagement/addOrders", server.url()))
        .header("content-type", "application/connect+json")
        .header("connect-timeout-ms", "300")
        .body(http_body_util::StreamBody::new(rx))
        .unwrap();
    futures::SinkExt::send(
        &mut tx,
        Ok(http_body::Frame::data(framed(
            0,
            br#"{"items":["a"],"price":1,"destination":"B"}"#,
        ))),
    )
    .await
    .unwrap();
    let response = common::http1_client().oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let found = messages(&body);
    let end: serde_json::Value = serde_json::from_slice(&found.last().unwrap().1).unwrap();
    assert_eq!(end["error"]["code"], "deadline_exceeded", "{end}");
    drop(tx);
    let (status, _, body) = send(
        &server,
        Method::POST,
        "/OrderManagement/getOrder",
        &[JSON, ("connect-timeout-ms", "soon")],
        "\"106\"",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("Connect-Timeout-Ms"));

    // A streaming method called as unary: refused, naming the content type to use.
    let (status, _, body) = send(
        &server,
        Method::POST,
        "/OrderManagement/searchOrders",
        &[JSON],
        "\"google\"",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("application/connect+json"));

    // An unknown method: unimplemented, 501.
    let (status, _, body) = send(
        &server,
        Method::POST,
        "/OrderManagement/nope",
        &[JSON],
        "\"x\"",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(json(&body)["code"], "unimplemented");

    // Counted by the same metrics as gRPC calls.
    let metrics = server.metrics().await;
    let labels = [
        ("grpc_method", "addOrders"),
        ("grpc_code", "DeadlineExceeded"),
    ];
    assert!(metrics.value("grpc_server_handled_total", &labels) >= 1.0);

    // An idempotency key works as it does over gRPC: the same key, the same answer.
    let order = r#"{"items":["kettle"],"price":20,"destination":"Boise"}"#;
    let key = ("idempotency-key", "connect-key-1");
    let (_, _, first) = send(
        &server,
        Method::POST,
        "/OrderManagement/addOrder",
        &[JSON, key],
        order,
    )
    .await;
    let (_, _, again) = send(
        &server,
        Method::POST,
        "/OrderManagement/addOrder",
        &[JSON, key],
        order,
    )
    .await;
    assert_eq!(first, again);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn gzip_goes_both_ways() {
    let server = TestServer::start().await;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let items: Vec<String> = (0..50)
        .map(|i| format!("item {i} {}", "z".repeat(150)))
        .collect();
    let order =
        serde_json::json!({ "id": "CZ-1", "items": items, "price": 3, "destination": "Reno" });
    encoder.write_all(order.to_string().as_bytes()).unwrap();
    let compressed = encoder.finish().unwrap();
    let (status, _, body) = send(
        &server,
        Method::POST,
        "/OrderManagement/addOrder",
        &[JSON, ("content-encoding", "gzip")],
        compressed,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(json(&body), "CZ-1");

    let (status, headers, body) = send(
        &server,
        Method::POST,
        "/OrderManagement/getOrder",
        &[JSON, ("accept-encoding", "gzip")],
        "\"CZ-1\"",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_ENCODING], "gzip");
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&plain).unwrap()["items"][49],
        order["items"][49]
    );
    assert!(body.len() * 5 < plain.len());

    // A gzip bomb: refused at the message limit.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&vec![b' '; 64 << 20]).unwrap();
    let bomb = encoder.finish().unwrap();
    let (status, _, body) = send(
        &server,
        Method::POST,
        "/OrderManagement/addOrder",
        &[JSON, ("content-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(&body)["code"], "resource_exhausted");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_are_checked_as_for_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"a secret of the connect test").unwrap();
    let mut config = order_server::Config::for_tests();
    config.auth_secret_file = Some(secret);
    let server = TestServer::start_with(config).await;
    let get = "/OrderManagement/getOrder";
    let (status, _, body) = send(&server, Method::POST, get, &[JSON], "\"106\"").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json(&body)["code"], "unauthenticated");

    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": "alice", "scope": "orders:read", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(b"a secret of the connect test"),
    )
    .unwrap();
    let bearer = format!("Bearer {token}");
    let (status, _, body) = send(
        &server,
        Method::POST,
        get,
        &[JSON, ("authorization", &bearer)],
        "\"106\"",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    // Reading is not writing.
    let (status, _, body) = send(
        &server,
        Method::POST,
        "/OrderManagement/addOrder",
        &[JSON, ("authorization", &bearer)],
        r#"{"items":["x"],"price":1,"destination":"y"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(json(&body)["code"], "permission_denied");
    server.stop().await.unwrap();
}
