//! `bench-ceiling`: what hyper alone can do on this machine, for `make bench` to compare against.
//!
//! Every request, whatever its path, gets the same pre-encoded answer: order 106, as native gRPC
//! (a data frame and `grpc-status: 0` trailers) or, for `application/grpc-web*` requests, as
//! gRPC-Web (the data frame and a trailer frame in the body). No routing, no decoding, no
//! service: the request body is drained and dropped. Usage: `bench-ceiling 127.0.0.1:PORT`.

use std::convert::Infallible;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header::CONTENT_TYPE, HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use prost::Message;

/// The encoded responses, made once at start.
#[derive(Clone)]
struct Answers {
    grpc_data: Bytes,
    web_body: Bytes,
    trailers: HeaderMap,
}

fn answers() -> Answers {
    let message = bench_ceiling::order_106().encode_to_vec();
    let mut data = BytesMut::new();
    data.put_u8(0);
    data.put_u32(message.len() as u32);
    data.put_slice(&message);
    let trailer_text = b"grpc-status:0\r\n";
    let mut web = data.clone();
    web.put_u8(0x80);
    web.put_u32(trailer_text.len() as u32);
    web.put_slice(trailer_text);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    Answers {
        grpc_data: data.freeze(),
        web_body: web.freeze(),
        trailers,
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    request: Request<Incoming>,
    answers: Answers,
) -> Result<Response<Body>, Infallible> {
    let web = request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc-web"));
    // Read the request to its end, as a real server must, without looking at it.
    let _ = request.into_body().collect().await;
    let response = if web {
        Response::builder()
            .header(CONTENT_TYPE, "application/grpc-web+proto")
            .body(http_body_util::Full::new(answers.web_body).boxed())
    } else {
        let body = GrpcBody {
            data: Some(answers.grpc_data),
            trailers: Some(answers.trailers),
        };
        Response::builder()
            .header(CONTENT_TYPE, "application/grpc")
            .body(body.boxed())
    };
    Ok(response.expect("a static response is valid"))
}

/// A native gRPC response body: one data frame, then the trailers.
struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.data.take() {
            Some(data) => Some(Frame::data(data)),
            None => self.trailers.take().map(Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

fn main() -> std::io::Result<()> {
    let answers = answers();
    let service = hyper::service::service_fn(move |request| answer(request, answers.clone()));
    bench_ceiling::run("bench-ceiling", "127.0.0.1:50052", service)
}
