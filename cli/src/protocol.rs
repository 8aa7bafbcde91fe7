//! The three protocols the server speaks, from one tonic client: `--protocol grpc` (the channel
//! as it is), `grpc-web` (tonic-web's client layer over it) and `connect` ([`Connect`], below).
//! Each goes over the same tonic channel (HTTP/2, with TLS for `https://`).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use bytes::{BufMut, BytesMut};
use http::{header, HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::{body::Body, transport::Channel, Code, Status};
use tower::{util::BoxCloneService, ServiceExt};

/// The protocol a call goes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Native gRPC.
    Grpc,
    /// gRPC-Web, binary, as browsers send it.
    GrpcWeb,
    /// The Connect protocol, binary messages.
    Connect,
}

/// Any of the three, as the generated client's transport.
pub type Transport = BoxCloneService<Request<Body>, Response<Body>, tonic::codegen::StdError>;

/// `channel` speaking `protocol`.
pub fn transport(channel: Channel, protocol: Protocol) -> Transport {
    match protocol {
        Protocol::Grpc => BoxCloneService::new(channel.map_err(Into::into)),
        Protocol::GrpcWeb => BoxCloneService::new(
            tower::ServiceBuilder::new()
                .map_response(|response: Response<_>| response.map(Body::new))
                .map_err(Into::into)
                .layer(tonic_web::GrpcWebClientLayer::new())
                .map_request(|request: Request<tonic_web::GrpcWebCall<Body>>| {
                    request.map(Body::new)
                })
                .service(channel),
        ),
        Protocol::Connect => BoxCloneService::new(Connect(channel)),
    }
}

/// The methods of the contract whose request and answer are one message each.
fn unary(path: &str) -> bool {
    let set = <prost_types::FileDescriptorSet as Message>::decode(order_api::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set embedded at build time is valid");
    set.file
        .iter()
        .flat_map(|file| &file.service)
        .any(|service| {
            service.method.iter().any(|method| {
                path == format!("/{}/{}", service.name(), method.name())
                    && !method.client_streaming()
                    && !method.server_streaming()
            })
        })
}

/// A gRPC call sent as a Connect one, and its Connect answer read back as gRPC's.
#[derive(Clone)]
struct Connect(Channel);

type BoxFuture =
    Pin<Box<dyn Future<Output = Result<Response<Body>, tonic::codegen::StdError>> + Send>>;

impl tower::Service<Request<Body>> for Connect {
    type Response = Response<Body>;
    type Error = tonic::codegen::StdError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.0, cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> BoxFuture {
        let channel = self.0.clone();
        Box::pin(async move {
            if unary(request.uri().path()) {
                call_unary(channel, request).await
            } else {
                call_stream(channel, request).await
            }
        })
    }
}

/// Connect's request headers from gRPC's: gRPC's own dropped, `content_type` set.
fn connect_headers(headers: &mut HeaderMap, content_type: &'static str) {
    let grpc: Vec<_> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("grpc-") || *name == header::TE)
        .cloned()
        .collect();
    // A deadline in gRPC's units (`100m`, `5S`…) becomes Connect's milliseconds.
    let timeout = headers.get("grpc-timeout").and_then(|value| {
        let value = value.to_str().ok()?;
        let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
        let n: u64 = digits.parse().ok()?;
        let ms = match unit {
            "H" => n * 3_600_000,
            "M" => n * 60_000,
            "S" => n * 1000,
            "m" => n,
            "u" => n / 1000,
            "n" => n / 1_000_000,
            _ => return None,
        };
        HeaderValue::from_str(&ms.to_string()).ok()
    });
    for name in grpc {
        headers.remove(name);
    }
    if let Some(timeout) = timeout {
        headers.insert("connect-timeout-ms", timeout);
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("connect-protocol-version", HeaderValue::from_static("1"));
}

async fn call_unary(
    channel: Channel,
    request: Request<Body>,
) -> Result<Response<Body>, tonic::codegen::StdError> {
    let (mut parts, body) = request.into_parts();
    let framed = body.collect().await?.to_bytes();
    // One message, after its five-byte header.
    let message = framed.slice(5.min(framed.len())..);
    connect_headers(&mut parts.headers, "application/proto");
    let request = Request::from_parts(parts, Body::new(http_body_util::Full::new(message)));
    let response = channel.oneshot(request).await?;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await?.to_bytes();
    if !parts.status.is_success() {
        return Ok(status_of_json(&bytes).into_http());
    }
    let mut out = BytesMut::new();
    out.put_u8(0);
    out.put_u32(bytes.len() as u32);
    out.put_slice(&bytes);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = http_body_util::StreamBody::new(futures::stream::iter([
        Ok::<_, Status>(Frame::data(out.freeze())),
        Ok(Frame::trailers(trailers)),
    ]));
    let mut response = Response::new(Body::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

async fn call_stream(
    channel: Channel,
    request: Request<Body>,
) -> Result<Response<Body>, tonic::codegen::StdError> {
    let (mut parts, body) = request.into_parts();
    connect_headers(&mut parts.headers, "application/connect+proto");
    // Connect frames messages as gRPC does: the request body goes as it is.
    let response = channel.oneshot(Request::from_parts(parts, body)).await?;
    let (parts, body) = response.into_parts();
    if !parts.status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        return Ok(status_of_json(&bytes).into_http());
    }
    let mut buffer = BytesMut::new();
    let mut body = body;
    // The messages as they come; the end message becomes the trailers.
    let frames = async_stream::try_stream! {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            buffer.extend_from_slice(&data);
            while buffer.len() >= 5 {
                let length = u32::from_be_bytes(buffer[1..5].try_into().expect("four bytes")) as usize;
                if buffer.len() < 5 + length {
                    break;
                }
                let flag = buffer[0];
                let message = buffer.split_to(5 + length).freeze();
                if flag & 0x02 != 0 {
                    let status = end_status(&message[5..]);
                    yield Frame::trailers(trailers_of(&status));
                } else {
                    yield Frame::data(message);
                }
            }
        }
    };
    let frames = futures::StreamExt::map(frames, |frame: Result<_, Status>| frame);
    let mut response = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

/// gRPC's trailers for `status`.
fn trailers_of(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    let _ = status.add_header(&mut trailers);
    trailers
}

/// The status a stream's end message carries: OK without an `error`.
fn end_status(json: &[u8]) -> Status {
    let end: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
    match end.get("error") {
        None => Status::ok(""),
        Some(error) => status_of_error(error),
    }
}

/// The status of a Connect unary error body.
fn status_of_json(json: &[u8]) -> Status {
    match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(error) => status_of_error(&error),
        Err(_) => Status::unknown(format!(
            "the server answered with an error that is not Connect's: {}",
            String::from_utf8_lossy(json)
        )),
    }
}

/// A Connect error object (`code`, `message`, `details`) as a gRPC status with the same details.
fn status_of_error(error: &serde_json::Value) -> Status {
    let code = match error["code"].as_str().unwrap_or_default() {
        "canceled" => Code::Cancelled,
        "invalid_argument" => Code::InvalidArgument,
        "deadline_exceeded" => Code::DeadlineExceeded,
        "not_found" => Code::NotFound,
        "already_exists" => Code::AlreadyExists,
        "permission_denied" => Code::PermissionDenied,
        "resource_exhausted" => Code::ResourceExhausted,
        "failed_precondition" => Code::FailedPrecondition,
        "aborted" => Code::Aborted,
        "out_of_range" => Code::OutOfRange,
        "unimplemented" => Code::Unimplemented,
        "internal" => Code::Internal,
        "unavailable" => Code::Unavailable,
        "data_loss" => Code::DataLoss,
        "unauthenticated" => Code::Unauthenticated,
        _ => Code::Unknown,
    };
    let message = error["message"].as_str().unwrap_or_default().to_owned();
    let details: Vec<prost_types::Any> = error["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|detail| {
            let value = STANDARD_NO_PAD
                .decode(detail["value"].as_str()?.trim_end_matches('='))
                .ok()?;
            Some(prost_types::Any {
                type_url: format!("type.googleapis.com/{}", detail["type"].as_str()?),
                value,
            })
        })
        .collect();
    if details.is_empty() {
        return Status::new(code, message);
    }
    let rich = tonic_types::pb::Status {
        code: code as i32,
        message: message.clone(),
        details,
    };
    Status::with_details(code, message, rich.encode_to_vec().into())
}
