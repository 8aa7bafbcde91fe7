//! The Connect protocol (<https://connectrpc.com/docs/protocol>) on the same port, as a translation
//! in front of the native gRPC stack: a Connect call becomes a gRPC call to the same edge and the
//! same service (so the same auth, idempotency keys, metrics, limits and logs), and its answer
//! becomes Connect's. Nothing of it runs for a gRPC or gRPC-Web call.
//!
//! - **Unary** (`POST` with `application/json` or `application/proto`, or `GET` with
//!   `?encoding=json|proto&message=…`): the body is the message itself. An error is HTTP status
//!   from its code and a JSON body `{"code", "message", "details"}`, each detail as `type`, `value`
//!   (base64) and `debug` (its JSON, for `google.rpc.BadRequest`).
//! - **Streaming** (`application/connect+json`, `application/connect+proto`): messages framed as
//!   gRPC frames them (a flag byte, then a four-byte length), the last one flagged `0x02` and
//!   holding the end of the call as JSON (`{"error": …, "metadata": …}`).
//! - `Connect-Timeout-Ms` is the call's deadline; gzip is `Content-Encoding` for a unary body and
//!   `Connect-Content-Encoding` for streamed messages, their answers compressed when
//!   `Accept-Encoding` / `Connect-Accept-Encoding` take gzip.
//!
//! JSON is protobuf's JSON mapping for the generated types (`order-api`'s `serde` feature, by
//! pbjson), for the order service's methods; other services (health, reflection) take Connect in
//! binary only.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use base64::{
    engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
    Engine,
};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, Limited};
use order_api::pb::{CombinedShipment, Order};
use prost::Message;
use tonic::{body::Body as GrpcBody, Code, Status};

use crate::grpc::compress::{self, Frames, GRPC_ACCEPT_ENCODING, GRPC_ENCODING};

const CONNECT_TIMEOUT_MS: HeaderName = HeaderName::from_static("connect-timeout-ms");
const CONNECT_CONTENT_ENCODING: HeaderName = HeaderName::from_static("connect-content-encoding");
const CONNECT_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("connect-accept-encoding");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The flag of a Connect stream's end message.
const END_STREAM: u8 = 0x02;

/// The two encodings of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Json,
    Proto,
}

/// What kind of Connect request a request is, from its method and content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Unary(Codec),
    /// A unary call in a `GET`'s query.
    Get,
    Stream(Codec),
}

impl Shape {
    /// `None`: not Connect.
    pub(crate) fn of<B>(request: &Request<B>) -> Option<Shape> {
        if request.method() == Method::GET {
            let query = request.uri().query()?;
            let connect = query.split('&').any(|pair| pair.starts_with("encoding="));
            return (connect && crate::grpc::methods::order_method(request.uri().path()).is_some())
                .then_some(Shape::Get);
        }
        if request.method() != Method::POST {
            return None;
        }
        let content_type = request.headers().get(header::CONTENT_TYPE)?.as_bytes();
        let essence = content_type
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        match essence {
            b"application/json" => Some(Shape::Unary(Codec::Json)),
            b"application/proto" => Some(Shape::Unary(Codec::Proto)),
            b"application/connect+json" => Some(Shape::Stream(Codec::Json)),
            b"application/connect+proto" => Some(Shape::Stream(Codec::Proto)),
            _ => None,
        }
    }
}

/// The message types of a method, for JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    /// `google.protobuf.StringValue`: a JSON string.
    String,
    Order,
    Shipment,
    /// Anything else: binary only.
    Other,
}

impl Type {
    fn of(name: &str) -> Type {
        match name {
            ".google.protobuf.StringValue" => Type::String,
            ".Order" => Type::Order,
            ".CombinedShipment" => Type::Shipment,
            _ => Type::Other,
        }
    }

    /// The binary message of `json`.
    fn encode_json(self, json: &[u8]) -> Result<Vec<u8>, Status> {
        fn parse<T: serde::de::DeserializeOwned + Message>(json: &[u8]) -> Result<Vec<u8>, Status> {
            serde_json::from_slice::<T>(json)
                .map(|message| message.encode_to_vec())
                .map_err(|error| {
                    Status::invalid_argument(format!(
                        "the message is not valid JSON for its type: {error}"
                    ))
                })
        }
        match self {
            Type::String => parse::<String>(json),
            Type::Order => parse::<Order>(json),
            Type::Shipment => parse::<CombinedShipment>(json),
            Type::Other => Err(json_unsupported()),
        }
    }

    /// The JSON of the binary message `bytes`.
    fn decode_to_json(self, bytes: &[u8]) -> Result<Vec<u8>, Status> {
        fn print<T: serde::Serialize + Message + Default>(bytes: &[u8]) -> Result<Vec<u8>, Status> {
            let message = T::decode(bytes).map_err(|error| Status::internal(error.to_string()))?;
            serde_json::to_vec(&message).map_err(|error| Status::internal(error.to_string()))
        }
        match self {
            Type::String => print::<String>(bytes),
            Type::Order => print::<Order>(bytes),
            Type::Shipment => print::<CombinedShipment>(bytes),
            Type::Other => Err(json_unsupported()),
        }
    }
}

fn json_unsupported() -> Status {
    Status::unimplemented(
        "JSON is served for the OrderManagement service only: use application/proto",
    )
}

/// The input and output types of every method served, and whether it is unary, by wire path.
pub(crate) struct Methods(Vec<(String, Type, Type, bool)>);

impl Methods {
    pub(crate) fn new() -> Self {
        Self(
            crate::grpc::methods::served_methods()
                .into_iter()
                .map(|m| {
                    let unary = m.kind == crate::grpc::methods::Kind::Unary;
                    (m.path(), Type::of(&m.input), Type::of(&m.output), unary)
                })
                .collect(),
        )
    }

    /// The types of the method at `path`, and whether it streams; unknown methods are left to
    /// the edge, which refuses them.
    fn of(&self, path: &str) -> (Type, Type, bool) {
        self.0.iter().find(|(p, ..)| p == path).map_or(
            (Type::Other, Type::Other, false),
            |&(_, input, output, unary)| (input, output, !unary),
        )
    }
}

/// The Connect side of a gRPC stack: translates, calls `inner` (the native stack), translates back.
#[derive(Clone)]
pub(crate) struct ConnectService<S> {
    inner: S,
    methods: Arc<Methods>,
    max_message_size: usize,
}

impl<S> ConnectService<S> {
    pub(crate) fn new(inner: S, methods: Arc<Methods>, max_message_size: usize) -> Self {
        Self {
            inner,
            methods,
            max_message_size,
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<GrpcBody>, Infallible>> + Send>>;

impl<S, B> tower::Service<Request<B>> for ConnectService<S>
where
    S: tower::Service<Request<GrpcBody>, Response = Response<GrpcBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> BoxFuture {
        let inner = self.inner.clone();
        let methods = self.methods.clone();
        let limit = self.max_message_size;
        Box::pin(async move {
            let Some(shape) = Shape::of(&request) else {
                return Ok(unary_error(
                    &Status::unimplemented("not a Connect request"),
                    HeaderMap::new(),
                ));
            };
            let (input, output, streams) = methods.of(request.uri().path());
            Ok(match shape {
                Shape::Stream(codec) => stream(inner, request, codec, (input, output), limit).await,
                // One message in, one out: a streaming method would lose the rest of its answer.
                Shape::Unary(_) | Shape::Get if streams => {
                    let status = Status::unimplemented(format!(
                        "{} streams: call it with application/connect+json or application/connect+proto",
                        request.uri().path()
                    ));
                    unary_error(&status, HeaderMap::new())
                }
                Shape::Unary(_) | Shape::Get => {
                    unary(inner, request, shape, input, output, limit).await
                }
            })
        })
    }
}

/// The gRPC request of a Connect one: its headers but Connect's own, its deadline, `body`.
fn grpc_request(parts: &http::request::Parts, body: GrpcBody) -> Result<Request<GrpcBody>, Status> {
    let mut request = Request::new(body);
    *request.method_mut() = Method::POST;
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(parts.uri.path())
        .build()
        .map_err(|error| Status::invalid_argument(error.to_string()))?;
    *request.version_mut() = parts.version;
    *request.extensions_mut() = parts.extensions.clone();
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        let connect = name.as_str().starts_with("connect-");
        let replaced = matches!(
            *name,
            header::CONTENT_TYPE
                | header::CONTENT_LENGTH
                | header::CONTENT_ENCODING
                | header::ACCEPT_ENCODING
                | header::TE
        ) || name == GRPC_TIMEOUT
            || name == GRPC_ENCODING
            || name == GRPC_ACCEPT_ENCODING;
        if !connect && !replaced {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(timeout) = parts.headers.get(CONNECT_TIMEOUT_MS) {
        let ms = timeout
            .to_str()
            .ok()
            .filter(|ms| !ms.is_empty() && ms.len() <= 10 && ms.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                Status::invalid_argument(
                    "Connect-Timeout-Ms must be a number of milliseconds, at most 10 digits",
                )
            })?;
        // gRPC's own unit: at most 8 digits, so whole seconds past that.
        let value = if ms.len() <= 8 {
            format!("{ms}m")
        } else {
            format!("{}S", ms.parse::<u64>().unwrap_or(0) / 1000)
        };
        headers.insert(GRPC_TIMEOUT, value.parse().expect("digits"));
    }
    Ok(request)
}

/// One Connect unary call.
async fn unary<S, B>(
    mut inner: S,
    request: Request<B>,
    shape: Shape,
    input: Type,
    output: Type,
    limit: usize,
) -> Response<GrpcBody>
where
    S: tower::Service<Request<GrpcBody>, Response = Response<GrpcBody>, Error = Infallible>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    let (parts, body) = request.into_parts();
    let gzip_answer = compress::accepts_gzip(&parts.headers);
    let read = match shape {
        Shape::Get => message_of_query(parts.uri.query().unwrap_or_default(), limit),
        Shape::Unary(codec) => read_body(body, &parts.headers, limit)
            .await
            .map(|bytes| (codec, bytes)),
        Shape::Stream(_) => unreachable!("streams are not unary"),
    };
    let (codec, message) = match read.and_then(|(codec, bytes)| match codec {
        Codec::Json => input.encode_json(&bytes).map(|proto| (codec, proto)),
        Codec::Proto => Ok((codec, bytes.to_vec())),
    }) {
        Ok(read) => read,
        Err(status) => return unary_error(&status, HeaderMap::new()),
    };
    let mut framed = BytesMut::new();
    compress::put_message(&mut framed, 0, &message);
    let grpc = match grpc_request(&parts, GrpcBody::new(Full::new(framed.freeze()))) {
        Ok(grpc) => grpc,
        Err(status) => return unary_error(&status, HeaderMap::new()),
    };
    let response = match inner.call(grpc).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (head, body) = response.into_parts();
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(status) => return unary_error(&status, HeaderMap::new()),
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = Status::from_header_map(&head.headers)
        .or_else(|| Status::from_header_map(&trailers))
        .unwrap_or_else(|| Status::unknown("the call ended without a status"));
    if status.code() != Code::Ok {
        return unary_error(&status, metadata_of(&head.headers, &trailers));
    }
    let mut frames = Frames::default();
    frames.push(collected.to_bytes());
    let Some((_, message)) = frames.next() else {
        return unary_error(
            &Status::internal("the call answered no message"),
            HeaderMap::new(),
        );
    };
    let body = match codec {
        Codec::Json => match output.decode_to_json(&message) {
            Ok(json) => Bytes::from(json),
            Err(status) => return unary_error(&status, HeaderMap::new()),
        },
        Codec::Proto => message,
    };
    let mut response = Response::new(GrpcBody::empty());
    let headers = response.headers_mut();
    headers.extend(metadata_of(&head.headers, &trailers));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match codec {
            Codec::Json => "application/json",
            Codec::Proto => "application/proto",
        }),
    );
    let body = match gzip_answer
        .then(|| compress::gzip_whole(headers, &[&body]))
        .flatten()
    {
        Some(compressed) => compressed,
        None => body,
    };
    *response.body_mut() = GrpcBody::new(Full::new(body));
    response
}

/// A unary request's message: the whole body, inflated if it says gzip, at most `limit` bytes.
async fn read_body<B>(body: B, headers: &HeaderMap, limit: usize) -> Result<Bytes, Status>
where
    B: Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    let encoding = headers.get(header::CONTENT_ENCODING);
    let gzip = compress::is_gzip("Content-Encoding", encoding.map(HeaderValue::as_bytes))?;
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                Status::resource_exhausted(format!(
                    "the message is over the limit of {limit} bytes (--max-message-size)"
                ))
            } else {
                Status::from_error(error)
            }
        })?
        .to_bytes();
    if gzip {
        compress::inflate(&bytes, limit).map(Bytes::from)
    } else {
        Ok(bytes)
    }
}

/// The message of a `GET`: `encoding`, `message` (percent-encoded; URL-safe base64 with
/// `base64=1`), `compression`.
fn message_of_query(query: &str, limit: usize) -> Result<(Codec, Bytes), Status> {
    let (mut codec, mut message, mut base64, mut gzip) = (None, None, false, false);
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value =
            percent_encoding::percent_decode_str(&value.replace('+', " ")).collect::<Vec<u8>>();
        match name {
            "encoding" => {
                codec = Some(match &value[..] {
                    b"json" => Codec::Json,
                    b"proto" => Codec::Proto,
                    _ => return Err(Status::invalid_argument("encoding must be json or proto")),
                })
            }
            "message" => message = Some(value),
            "base64" => base64 = value == b"1",
            // An empty value names none, as leaving it out does.
            "compression" => {
                let named = Some(&value[..]).filter(|value| !value.is_empty());
                gzip |= compress::is_gzip("compression", named)?;
            }
            _ => {}
        }
    }
    let codec = codec.ok_or_else(|| {
        Status::invalid_argument("a Connect GET needs encoding=json or encoding=proto")
    })?;
    let mut message = message.unwrap_or_default();
    if base64 {
        message = [URL_SAFE_NO_PAD, URL_SAFE]
            .iter()
            .find_map(|engine| engine.decode(&message).ok())
            .ok_or_else(|| Status::invalid_argument("message is not URL-safe base64"))?;
    }
    if gzip {
        message = compress::inflate(&message, limit)?;
    }
    if message.len() > limit {
        return Err(Status::resource_exhausted(format!(
            "the message is over the limit of {limit} bytes"
        )));
    }
    Ok((codec, message.into()))
}

/// Connect's name of a code.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The HTTP status of a unary error, as Connect maps codes.
pub(crate) fn http_status(code: Code) -> StatusCode {
    let status = match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    };
    StatusCode::from_u16(status).expect("a valid status")
}

/// Connect's JSON error of `status`: code, message, and each detail as type, base64 value and,
/// for the details this server sends, its JSON as `debug`.
pub(crate) fn error_json(status: &Status) -> serde_json::Value {
    let mut error = serde_json::json!({ "code": code_name(status.code()) });
    if !status.message().is_empty() {
        error["message"] = status.message().into();
    }
    let details: Vec<serde_json::Value> = tonic_types::pb::Status::decode(status.details())
        .map(|rich| rich.details)
        .unwrap_or_default()
        .into_iter()
        .map(|any| {
            let kind = any.type_url.rsplit('/').next().unwrap_or_default().to_owned();
            let mut detail = serde_json::json!({ "type": kind, "value": STANDARD_NO_PAD.encode(&any.value) });
            if kind == "google.rpc.BadRequest" {
                if let Ok(bad) = tonic_types::pb::BadRequest::decode(&any.value[..]) {
                    let violations: Vec<_> = bad
                        .field_violations
                        .iter()
                        .map(|v| serde_json::json!({ "field": v.field, "description": v.description }))
                        .collect();
                    detail["debug"] = serde_json::json!({ "fieldViolations": violations });
                }
            }
            detail
        })
        .collect();
    if !details.is_empty() {
        error["details"] = details.into();
    }
    error
}

/// A unary call's error answer, with the call's metadata as headers.
fn unary_error(status: &Status, metadata: HeaderMap) -> Response<GrpcBody> {
    let body = serde_json::to_vec(&error_json(status)).expect("JSON of JSON values");
    let mut response = Response::new(GrpcBody::new(Full::new(Bytes::from(body))));
    *response.status_mut() = http_status(status.code());
    response.headers_mut().extend(metadata);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The metadata of a gRPC answer as Connect unary headers: its headers, and its trailers as
/// `trailer-` headers, gRPC's own left out.
fn metadata_of(headers: &HeaderMap, trailers: &HeaderMap) -> HeaderMap {
    let mut metadata = HeaderMap::new();
    let own = |name: &HeaderName| {
        name.as_str().starts_with("grpc-")
            || matches!(
                *name,
                header::CONTENT_TYPE | header::CONTENT_LENGTH | header::DATE
            )
    };
    for (name, value) in headers.iter().filter(|(name, _)| !own(name)) {
        metadata.append(name.clone(), value.clone());
    }
    for (name, value) in trailers.iter().filter(|(name, _)| !own(name)) {
        if let Ok(name) = HeaderName::try_from(format!("trailer-{name}")) {
            metadata.append(name, value.clone());
        }
    }
    metadata
}

/// One Connect streaming call.
async fn stream<S, B>(
    mut inner: S,
    request: Request<B>,
    codec: Codec,
    (input, output): (Type, Type),
    limit: usize,
) -> Response<GrpcBody>
where
    S: tower::Service<Request<GrpcBody>, Response = Response<GrpcBody>, Error = Infallible>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    let (parts, body) = request.into_parts();
    let content_type = HeaderValue::from_static(match codec {
        Codec::Json => "application/connect+json",
        Codec::Proto => "application/connect+proto",
    });
    let encoding = parts.headers.get(CONNECT_CONTENT_ENCODING);
    let gzip_in = match compress::is_gzip(
        "Connect-Content-Encoding",
        encoding.map(HeaderValue::as_bytes),
    ) {
        Ok(gzip) => gzip,
        Err(status) => return end_only(&status, content_type),
    };
    let gzip_out = parts
        .headers
        .get(CONNECT_ACCEPT_ENCODING)
        .is_some_and(compress::lists_gzip);
    // Binary messages go as they are; JSON ones are encoded, one by one as each is whole.
    let body = match codec {
        Codec::Proto => GrpcBody::new(body),
        Codec::Json => GrpcBody::new(compress::MapMessages::new(
            body,
            move |flag, message, out: &mut BytesMut| {
                let json = compress::plain(flag, message, limit)?;
                compress::put_message(out, 0, &input.encode_json(&json)?);
                Ok(())
            },
        )),
    };
    let mut grpc = match grpc_request(&parts, body) {
        Ok(grpc) => grpc,
        Err(status) => return end_only(&status, content_type),
    };
    if gzip_in {
        // The edge inflates flagged messages (JSON ones are inflated here first).
        if codec == Codec::Proto {
            grpc.headers_mut()
                .insert(GRPC_ENCODING, HeaderValue::from_static("gzip"));
        }
    }
    let response = match inner.call(grpc).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (head, body) = response.into_parts();
    let metadata = metadata_of(&head.headers, &HeaderMap::new());
    let mut response = Response::new(GrpcBody::new(AnswerMessages {
        inner: body,
        frames: Frames::default(),
        codec,
        output,
        gzip: gzip_out,
        limit,
        head: Some(head.headers),
        done: false,
    }));
    let headers = response.headers_mut();
    headers.extend(metadata);
    headers.insert(header::CONTENT_TYPE, content_type);
    if gzip_out {
        headers.insert(CONNECT_CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// A stream answered with its end alone.
fn end_only(status: &Status, content_type: HeaderValue) -> Response<GrpcBody> {
    let mut out = BytesMut::new();
    compress::put_message(
        &mut out,
        END_STREAM,
        &end_json(Some(status), &HeaderMap::new()),
    );
    let mut response = Response::new(GrpcBody::new(Full::new(out.freeze())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

/// The end-of-stream message: the error, if any, and the trailers as metadata.
fn end_json(status: Option<&Status>, trailers: &HeaderMap) -> Vec<u8> {
    let mut end = serde_json::json!({});
    if let Some(status) = status.filter(|status| status.code() != Code::Ok) {
        end["error"] = error_json(status);
    }
    let mut metadata = serde_json::Map::new();
    for (name, value) in trailers
        .iter()
        .filter(|(name, _)| !name.as_str().starts_with("grpc-"))
    {
        if let Ok(value) = value.to_str() {
            let values = metadata
                .entry(name.as_str())
                .or_insert_with(|| serde_json::json!([]));
            values.as_array_mut().expect("an array").push(value.into());
        }
    }
    if !metadata.is_empty() {
        end["metadata"] = metadata.into();
    }
    serde_json::to_vec(&end).expect("JSON of JSON values")
}

pin_project_lite::pin_project! {
    /// A gRPC answer as a Connect stream: its messages, then the end-of-stream message.
    struct AnswerMessages {
        #[pin]
        inner: GrpcBody,
        frames: Frames,
        codec: Codec,
        output: Type,
        gzip: bool,
        limit: usize,
        // The answer's headers, where a trailers-only answer has its status.
        head: Option<HeaderMap>,
        done: bool,
    }
}

impl Body for AnswerMessages {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        loop {
            let trailers = match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let (codec, output, limit, gzip) =
                            (*this.codec, *this.output, *this.limit, *this.gzip);
                        let translated = this.frames.map(data, |flag, message, out| {
                            let message = compress::plain(flag, message, limit)?;
                            let message = match codec {
                                Codec::Proto => message,
                                Codec::Json => output.decode_to_json(&message)?.into(),
                            };
                            match gzip {
                                true => compress::put_deflated(out, &message),
                                false => compress::put_message(out, 0, &message),
                            }
                            Ok(())
                        })?;
                        match translated {
                            Some(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                            None => continue,
                        }
                    }
                    Err(frame) => frame.into_trailers().unwrap_or_default(),
                },
                Some(Err(status)) => {
                    *this.done = true;
                    let end = end_json(Some(&status), &HeaderMap::new());
                    let mut out = BytesMut::new();
                    compress::put_message(&mut out, END_STREAM, &end);
                    return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                }
                None => HeaderMap::new(),
            };
            *this.done = true;
            let head = this.head.take().unwrap_or_default();
            let status = Status::from_header_map(&trailers)
                .or_else(|| Status::from_header_map(&head))
                .unwrap_or_else(|| Status::unknown("the call ended without a status"));
            let mut out = BytesMut::new();
            compress::put_message(&mut out, END_STREAM, &end_json(Some(&status), &trailers));
            return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code table of the Connect protocol's specification ("Error Codes").
    #[test]
    fn codes_have_connects_names_and_http_statuses() {
        let table = [
            (Code::Cancelled, "canceled", 499),
            (Code::Unknown, "unknown", 500),
            (Code::InvalidArgument, "invalid_argument", 400),
            (Code::DeadlineExceeded, "deadline_exceeded", 504),
            (Code::NotFound, "not_found", 404),
            (Code::AlreadyExists, "already_exists", 409),
            (Code::PermissionDenied, "permission_denied", 403),
            (Code::ResourceExhausted, "resource_exhausted", 429),
            (Code::FailedPrecondition, "failed_precondition", 400),
            (Code::Aborted, "aborted", 409),
            (Code::OutOfRange, "out_of_range", 400),
            (Code::Unimplemented, "unimplemented", 501),
            (Code::Internal, "internal", 500),
            (Code::Unavailable, "unavailable", 503),
            (Code::DataLoss, "data_loss", 500),
            (Code::Unauthenticated, "unauthenticated", 401),
        ];
        for (code, name, http) in table {
            assert_eq!(code_name(code), name);
            assert_eq!(http_status(code).as_u16(), http, "{name}");
        }
    }

    /// The specification's GET example, `?connect=v1&encoding=json&message=…`, and its base64 form.
    #[test]
    fn a_get_query_gives_its_message() {
        let (codec, message) = message_of_query(
            "connect=v1&encoding=json&message=%7B%22sentence%22%3A%22Hello%22%7D",
            1024,
        )
        .unwrap();
        assert_eq!(codec, Codec::Json);
        assert_eq!(&message[..], br#"{"sentence":"Hello"}"#);
        let (codec, message) =
            message_of_query("encoding=proto&base64=1&message=CgVIZWxsbw", 1024).unwrap();
        assert_eq!(codec, Codec::Proto);
        assert_eq!(&message[..], b"\n\x05Hello");
        for bad in [
            "message=x",
            "encoding=xml&message=x",
            "encoding=proto&base64=1&message=%%%",
        ] {
            let status = message_of_query(bad, 1024).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        }
        let status = message_of_query("encoding=json&compression=br&message=x", 1024).unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);
    }

    /// The specification's error example: code, message, and a detail's type, value and debug.
    #[test]
    fn an_error_is_connects_json() {
        let status = Status::not_found("order 999 not found");
        assert_eq!(
            error_json(&status),
            serde_json::json!({ "code": "not_found", "message": "order 999 not found" })
        );
        let details =
            tonic_types::ErrorDetails::with_bad_request_violation("price", "must not be negative");
        let status = <Status as tonic_types::StatusExt>::with_error_details(
            Code::InvalidArgument,
            "bad order",
            details,
        );
        let json = error_json(&status);
        assert_eq!(json["details"][0]["type"], "google.rpc.BadRequest");
        assert_eq!(
            json["details"][0]["debug"]["fieldViolations"][0]["field"],
            "price"
        );
        let value = STANDARD_NO_PAD
            .decode(json["details"][0]["value"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            tonic_types::pb::BadRequest::decode(&value[..])
                .unwrap()
                .field_violations[0]
                .description,
            "must not be negative"
        );
    }

    /// The end of a stream: `{}` when it succeeded, the error otherwise, and the trailers.
    #[test]
    fn a_stream_ends_with_its_status_and_trailers() {
        assert_eq!(end_json(Some(&Status::ok("")), &HeaderMap::new()), b"{}");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-shipments", "3".parse().unwrap());
        trailers.insert("grpc-status", "5".parse().unwrap());
        let end: serde_json::Value =
            serde_json::from_slice(&end_json(Some(&Status::not_found("gone")), &trailers)).unwrap();
        assert_eq!(end["error"]["code"], "not_found");
        assert_eq!(end["metadata"], serde_json::json!({ "x-shipments": ["3"] }));
    }

    #[test]
    fn connect_requests_are_told_by_method_and_content_type() {
        let request = |method: Method, uri: &str, content_type: Option<&str>| {
            let mut builder = Request::builder().method(method).uri(uri);
            if let Some(content_type) = content_type {
                builder = builder.header(header::CONTENT_TYPE, content_type);
            }
            Shape::of(&builder.body(()).unwrap())
        };
        let path = "/OrderManagement/getOrder";
        assert_eq!(
            request(Method::POST, path, Some("application/json")),
            Some(Shape::Unary(Codec::Json))
        );
        assert_eq!(
            request(Method::POST, path, Some("application/proto")),
            Some(Shape::Unary(Codec::Proto))
        );
        assert_eq!(
            request(
                Method::POST,
                path,
                Some("application/connect+json; charset=utf-8")
            ),
            Some(Shape::Stream(Codec::Json))
        );
        assert_eq!(
            request(
                Method::GET,
                &format!("{path}?encoding=json&message=1"),
                None
            ),
            Some(Shape::Get)
        );
        assert_eq!(
            request(Method::GET, "/index.html?encoding=json", None),
            None
        );
        assert_eq!(request(Method::GET, path, None), None);
        assert_eq!(request(Method::POST, path, Some("application/grpc")), None);
        assert_eq!(request(Method::PUT, path, Some("application/json")), None);
    }
}
