//! Fuzz targets for what a hostile client controls: gRPC-Web bodies (framing, base64, protobuf)
//! through the whole app, and orders through validation. `make test` runs each for a fixed
//! number of random inputs; for a longer run, `BOLERO_RANDOM_ITERATIONS=1000000 cargo test
//! --release -p order-server --test fuzz` (or `cargo bolero test` with a fuzzing engine, see the
//! README).
//!
//! The properties: the app never panics and never answers a gRPC-Web call with anything but a
//! gRPC status; an order is either stored or refused with INVALID_ARGUMENT whose details stay
//! under 8 KiB.

use std::sync::OnceLock;

use axum::body::Body;
use base64::Engine;
use bolero::check;
use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use order_server::{App, Config, OrderService, Store, StoreOptions};
use prost::Message;
use tower::ServiceExt;

/// Random inputs per target in `make test`.
const ITERATIONS: usize = 3000;

/// The order service's RPCs, by wire path.
const PATHS: [&str; 6] = [
    "/OrderManagement/getOrder",
    "/OrderManagement/addOrder",
    "/OrderManagement/searchOrders",
    "/OrderManagement/updateOrders",
    "/OrderManagement/addOrders",
    "/OrderManagement/processOrders",
];

/// One runtime and one app (in-memory SQLite) for every input.
fn harness() -> &'static (tokio::runtime::Runtime, App) {
    static HARNESS: OnceLock<(tokio::runtime::Runtime, App)> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let app = runtime.block_on(async {
            let mut config = Config::for_tests();
            config.database_url = "sqlite::memory:".into();
            let store = Store::open(&StoreOptions::of(&config)).await.unwrap();
            order_server::app(OrderService::new(store, config.batch_size), &config).unwrap()
        });
        (runtime, app)
    })
}

/// The gRPC status of a gRPC-Web answer: from its headers, or from the trailer frame at the
/// end of its body (base64 in text mode). Also the size of grpc-message + details.
fn grpc_status(headers: &http::HeaderMap, body: &[u8], text: bool) -> Option<(String, usize)> {
    let size = |h: &http::HeaderMap| {
        ["grpc-message", "grpc-status-details-bin"]
            .iter()
            .filter_map(|name| h.get(*name))
            .map(|value| value.len())
            .sum::<usize>()
    };
    if let Some(status) = headers.get("grpc-status") {
        return Some((status.to_str().ok()?.to_owned(), size(headers)));
    }
    let body = if text {
        // Each frame is base64 on its own: chunks end after a run of padding.
        let mut decoded = Vec::new();
        let mut start = 0;
        for end in 1..=body.len() {
            let chunk_ends = end == body.len() || (body[end - 1] == b'=' && body[end] != b'=');
            if chunk_ends {
                let chunk = &body[start..end];
                decoded.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(chunk)
                        .ok()?,
                );
                start = end;
            }
        }
        decoded
    } else {
        body.to_vec()
    };
    let mut rest = &body[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let frame = rest.get(5..5 + len)?;
        if rest[0] & 0x80 != 0 {
            let trailers = String::from_utf8_lossy(frame);
            let mut status = None;
            let mut details = 0;
            for line in trailers.split("\r\n").filter(|line| !line.is_empty()) {
                let (name, value) = line.split_once(':')?;
                match name.trim().to_ascii_lowercase().as_str() {
                    "grpc-status" => status = Some(value.trim().to_owned()),
                    "grpc-message" | "grpc-status-details-bin" => details += value.trim().len(),
                    _ => {}
                }
            }
            return status.map(|status| (status, details));
        }
        rest = &rest[5 + len..];
    }
    None
}

/// Sends `body` to `path` as gRPC-Web (binary, or text when `text`) and returns the status.
fn call(path: &str, body: Vec<u8>, text: bool) -> (String, usize) {
    let (runtime, app) = harness();
    let content_type = if text {
        "application/grpc-web-text"
    } else {
        "application/grpc-web+proto"
    };
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT, content_type)
        .header("x-grpc-web", "1")
        .body(Body::from(body))
        .unwrap();
    runtime.block_on(async {
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("the body ends").to_bytes();
        // The answer is text only if the request's Accept asks for it (tonic-web); its
        // content type says which.
        let text_answer = parts.headers[header::CONTENT_TYPE]
            .as_bytes()
            .starts_with(b"application/grpc-web-text");
        grpc_status(&parts.headers, &body, text_answer)
            .unwrap_or_else(|| panic!("no gRPC status in {:?} {body:?}", parts.headers))
    })
}

/// A frame around `payload`: its length right, or (when `lie`) as the input says.
fn frame(flags: u8, payload: &[u8], lie: Option<u32>) -> Vec<u8> {
    let len = lie.unwrap_or(payload.len() as u32);
    let mut framed = vec![flags];
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(payload);
    framed
}

#[test]
fn grpc_web_bodies_always_get_a_grpc_status() {
    check!()
        .with_type::<(u8, u8, Option<u32>, bool, Vec<u8>)>()
        .with_iterations(ITERATIONS)
        .for_each(|(rpc, shape, lie, text, bytes)| {
            let path = PATHS[*rpc as usize % PATHS.len()];
            // Raw bytes, one frame (maybe lying about its length or compressed), or two.
            let body = match shape % 4 {
                0 => bytes.clone(),
                1 => frame(0, bytes, *lie),
                2 => frame(shape & 0x81, bytes, None),
                _ => {
                    let (a, b) = bytes.split_at(bytes.len() / 2);
                    [frame(0, a, None), frame(0, b, None)].concat()
                }
            };
            let body = if *text {
                base64::engine::general_purpose::STANDARD
                    .encode(&body)
                    .into_bytes()
            } else {
                body
            };
            let (status, details) = call(path, body, *text);
            assert!(
                status.parse::<u8>().is_ok_and(|code| code <= 16),
                "{status}"
            );
            assert!(details < 8 * 1024, "{details} bytes of error details");
        });
}

#[test]
fn any_order_is_stored_or_refused_with_bounded_details() {
    check!()
        .with_type::<(String, Vec<String>, String, f32, String)>()
        .with_iterations(ITERATIONS)
        .for_each(|(id, items, description, price, destination)| {
            let order = order_api::pb::Order {
                id: id.clone(),
                items: items.clone(),
                description: description.clone(),
                price: *price,
                destination: destination.clone(),
            };
            let (status, details) = call(PATHS[1], frame(0, &order.encode_to_vec(), None), false);
            // Stored (0), refused (3 INVALID_ARGUMENT), or its ID taken (6 ALREADY_EXISTS).
            assert!(
                ["0", "3", "6"].contains(&status.as_str()),
                "{status} for {order:?}"
            );
            assert!(details < 8 * 1024, "{details} bytes of error details");
        });
}
