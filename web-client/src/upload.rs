//! Client streams from the browser: the messages of a JavaScript array, iterable or async iterable
//! sent as one call's request stream.
//!
//! Where the browser can stream a request body (Chromium over HTTP/2, so an `https://` server),
//! each message is sent as soon as JavaScript produces it, and the next one is asked for only when
//! the network has taken the last: an upload of any size holds a few messages in memory. tonic's
//! codec frames the messages; the transport (`tonic_web_wasm_client` with its
//! `StreamRequestBody` patch) only hands the bytes to `fetch` as a `ReadableStream`.
//!
//! A streamed upload whose source fails is *abandoned*: its request body ends with a message cut
//! short (see [`Abandonable`]), so the server, which applies a client stream
//! only once it has decoded all of it, fails the call and applies nothing. Dropping the call
//! instead is not enough: Chromium may end an aborted upload's body as if it were complete (seen
//! in this project's wasm tests). Failing the body works too, but Chromium then reports the body's
//! error as an unhandled promise rejection in the page, beside the rejection the caller handles.
//!
//! Elsewhere (`http://`, which browsers speak as HTTP/1.1, or a browser without streamed
//! uploads) the messages are collected first and sent as one request, up to
//! [`BUFFERED_UPLOAD_BYTES`]; a larger upload is refused with `Unimplemented` and the reason.

use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use futures::{
    channel::mpsc,
    future::{self, Either},
    stream::{self, BoxStream},
    task::AtomicWaker,
    SinkExt, StreamExt,
};
use js_sys::{Function, Promise, Reflect, Symbol};
use tonic::codegen::{http, Body as HttpBody, Bytes, Service};
use tonic::{Code, Status};
use tonic_web_wasm_client::{Client, CompressRequestMessages, ResponseBody, StreamRequestBody};
use wasm_bindgen::{closure::Closure, JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// The most an upload may encode to when it cannot be streamed and goes as one request.
pub const BUFFERED_UPLOAD_BYTES: usize = 4 * 1024 * 1024;

/// How a client sends its client streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploads {
    /// As they are produced, in a streamed request body.
    Streamed,
    /// Collected first, then sent as one request; this says why.
    Buffered(Unstreamed),
}

/// Why uploads cannot be streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unstreamed {
    /// The server is not on `https://`: browsers stream uploads over HTTP/2 only.
    NotHttps,
    /// This browser cannot stream a request body (Firefox, Safari), whatever the server.
    Browser,
}

impl Unstreamed {
    /// Why, and what would let uploads of any size through.
    pub fn explain(self) -> &'static str {
        match self {
            Unstreamed::NotHttps => {
                "browsers stream uploads over HTTP/2 only, which needs https://: serve with \
                 --tls-cert and open the page over https:// to stream uploads of any size"
            }
            Unstreamed::Browser => {
                "this browser cannot stream an upload (Chromium-based browsers can): use one, or \
                 split the upload into parts"
            }
        }
    }
}

impl Uploads {
    /// How a client of `base_url` can upload from this browser. The browser is asked first:
    /// one that cannot stream cannot over `https://` either.
    pub fn for_server(base_url: &str) -> Self {
        if !browser_streams_request_bodies() {
            Uploads::Buffered(Unstreamed::Browser)
        } else if !base_url.starts_with("https:") {
            Uploads::Buffered(Unstreamed::NotHttps)
        } else {
            Uploads::Streamed
        }
    }
}

/// True when `fetch` here streams a `ReadableStream` request body: the browser reads the `duplex`
/// option (which a streamed body needs) and does not take the stream for text (it would send the
/// text `[object ReadableStream]`, labelled `text/plain`). The check Chromium documents; a
/// browser that takes the stream but cannot upload one (Safari) never reads `duplex`.
fn browser_streams_request_bodies() -> bool {
    let Ok(body) = web_sys::ReadableStream::new() else {
        return false;
    };
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_body(&body);
    let duplex_read = Rc::new(Cell::new(false));
    let getter = Closure::<dyn Fn() -> JsValue>::new({
        let duplex_read = duplex_read.clone();
        move || {
            duplex_read.set(true);
            JsValue::from_str("half")
        }
    });
    let descriptor = js_sys::Object::new();
    let _ = Reflect::set(&descriptor, &"get".into(), getter.as_ref());
    js_sys::Object::define_property(&init, &"duplex".into(), &descriptor);
    let labelled_text = web_sys::Request::new_with_str_and_init("https://example.invalid/", &init)
        .map(|request| request.headers().has("content-type").unwrap_or(true));
    labelled_text == Ok(false) && duplex_read.get()
}

/// The values of a JavaScript array, iterable or async iterable, one at a time.
pub struct Values {
    iterator: JsValue,
    next: Function,
}

impl Values {
    /// The values of `source`; `what` names the argument in the error for anything else.
    pub fn of(source: &JsValue, what: &str) -> Result<Self, JsValue> {
        let not_iterable = || {
            js_sys::Error::new(&format!(
                "{what} must be an array, an iterable or an async iterable"
            ))
            .into()
        };
        if source.is_string() || !source.is_object() {
            return Err(not_iterable());
        }
        let method = [Symbol::async_iterator(), Symbol::iterator()]
            .into_iter()
            .map(|symbol| Reflect::get(source, &symbol).unwrap_or(JsValue::UNDEFINED))
            .find(JsValue::is_function)
            .ok_or_else(not_iterable)?;
        let iterator = method.unchecked_into::<Function>().call0(source)?;
        let next = Reflect::get(&iterator, &"next".into())?
            .dyn_into::<Function>()
            .map_err(|_| not_iterable())?;
        Ok(Self { iterator, next })
    }

    /// The next value, or `None` at the end. A value the iterator throws or rejects with is the
    /// error.
    pub async fn next(&mut self) -> Result<Option<JsValue>, JsValue> {
        let mut result = self.next.call0(&self.iterator)?;
        if result.has_type::<Promise>() {
            result = JsFuture::from(result.unchecked_into::<Promise>()).await?;
        }
        if Reflect::get(&result, &"done".into())?.is_truthy() {
            return Ok(None);
        }
        Ok(Some(Reflect::get(&result, &"value".into())?))
    }
}

/// Marks a streamed upload, and abandons it: its body then fails instead of ending.
#[derive(Debug, Clone, Default)]
pub struct Abandon(Arc<AbandonState>);

#[derive(Debug, Default)]
struct AbandonState {
    abandoned: AtomicBool,
    waker: AtomicWaker,
}

impl Abandon {
    /// From now on the upload's body fails.
    pub fn abandon(&self) {
        self.0.abandoned.store(true, Ordering::SeqCst);
        self.0.waker.wake();
    }
}

/// The request body of a streamed upload: `inner`'s frames until its [`Abandon`] is used, then
/// the start of a message cut short ([`CUT_SHORT`]), and the end. `inner`'s frames are whole messages (tonic's
/// encoder cuts its chunks between messages), so the server reads a message cut short, which
/// fails the call: nothing applied, and no error in the page.
struct Abandonable {
    inner: tonic::body::Body,
    abandon: Abandon,
    /// The cut-short message has been sent.
    cut: bool,
}

/// A gRPC message header (not compressed, two bytes long) and one byte of its message. Not the
/// header alone: tonic's decoder, having read a whole header, takes an end with none of the
/// message for a clean end of stream.
const CUT_SHORT: [u8; 6] = [0, 0, 0, 0, 2, 0];

impl HttpBody for Abandonable {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let state = &self.abandon.0;
        state.waker.register(cx.waker());
        if state.abandoned.load(Ordering::SeqCst) {
            if std::mem::replace(&mut self.cut, true) {
                return Poll::Ready(None);
            }
            let cut = http_body::Frame::data(Bytes::from_static(&CUT_SHORT));
            return Poll::Ready(Some(Ok(cut)));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }
}

/// How long a streamed upload may take, whatever the client's timeout for other calls: the
/// server's own default ceiling on a call (`--max-call-duration`).
pub const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// `tonic_web_wasm_client`'s transport, with the body of a request marked [`Abandon`] made
/// [`Abandonable`] and streamed.
#[derive(Debug, Clone)]
pub struct Transport {
    /// For every call but streamed uploads.
    pub calls: Client,
    /// For streamed uploads, with a timeout of [`UPLOAD_TIMEOUT`] or more.
    pub uploads: Client,
}

impl Service<http::Request<tonic::body::Body>> for Transport {
    type Response = http::Response<ResponseBody>;
    type Error = tonic_web_wasm_client::Error;
    type Future = <Client as Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both clients are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let Some(abandon) = request.extensions().get::<Abandon>().cloned() else {
            return self.calls.call(request);
        };
        let mut request = request.map(|inner| {
            tonic::body::Body::new(Abandonable {
                inner,
                abandon,
                cut: false,
            })
        });
        request.extensions_mut().insert(StreamRequestBody);
        // Large messages go compressed by the browser (the server inflates them at its edge);
        // small ones would not shrink.
        request
            .extensions_mut()
            .insert(CompressRequestMessages { min_bytes: 1024 });
        self.uploads.call(request)
    }
}

/// Why a call failed: the server's status, or the JavaScript error of the upload's own source.
pub enum Failure {
    /// The call failed.
    Status(Status),
    /// The values could not be read or converted: the upload was abandoned, nothing applied.
    Source(JsValue),
}

/// Sends the values of `values`, each converted by `convert`, as the request stream of `call`,
/// and resolves to its answer. `request` makes the call's request (with its token).
///
/// Streamed, a failing source abandons the call before its stream ends, so the server never
/// takes a truncated upload for a whole one: its body ends cut short (see [`Abandonable`]).
pub async fn send<M, T, Fut>(
    uploads: Uploads,
    mut values: Values,
    convert: impl Fn(JsValue) -> Result<M, JsValue>,
    request: impl FnOnce(BoxStream<'static, M>) -> tonic::Request<BoxStream<'static, M>>,
    call: impl FnOnce(tonic::Request<BoxStream<'static, M>>) -> Fut,
) -> Result<T, Failure>
where
    M: prost::Message + Send + 'static,
    Fut: Future<Output = Result<T, Status>>,
{
    let reason = match uploads {
        Uploads::Streamed => return send_streamed(values, convert, request, call).await,
        Uploads::Buffered(reason) => reason,
    };
    let mut messages = Vec::new();
    let mut bytes = 0;
    while let Some(value) = values.next().await.map_err(Failure::Source)? {
        let message = convert(value).map_err(Failure::Source)?;
        // As framed: a flag byte and a four-byte length before each message.
        bytes += 5 + message.encoded_len();
        if bytes > BUFFERED_UPLOAD_BYTES {
            return Err(Failure::Status(Status::new(
                Code::Unimplemented,
                format!(
                    "this upload is over {} MiB, more than is sent in one request, and it cannot \
                     be streamed: {}",
                    BUFFERED_UPLOAD_BYTES / (1024 * 1024),
                    reason.explain()
                ),
            )));
        }
        messages.push(message);
    }
    call(request(stream::iter(messages).boxed()))
        .await
        .map_err(Failure::Status)
}

async fn send_streamed<M, T, Fut>(
    mut values: Values,
    convert: impl Fn(JsValue) -> Result<M, JsValue>,
    request: impl FnOnce(BoxStream<'static, M>) -> tonic::Request<BoxStream<'static, M>>,
    call: impl FnOnce(tonic::Request<BoxStream<'static, M>>) -> Fut,
) -> Result<T, Failure>
where
    M: prost::Message + Send + 'static,
    Fut: Future<Output = Result<T, Status>>,
{
    // No buffer of its own: the producer waits until the request body has taken the last message.
    let (mut sender, receiver) = mpsc::channel::<M>(0);
    let abandon = Abandon::default();
    let mut request = request(receiver.boxed());
    request.extensions_mut().insert(abandon.clone());
    let call = call(request);
    let produce = async move {
        let failed = loop {
            let value = match values.next().await {
                Ok(Some(value)) => value,
                Ok(None) => break None,
                Err(error) => break Some(error),
            };
            let message = match convert(value) {
                Ok(message) => message,
                Err(error) => break Some(error),
            };
            if sender.send(message).await.is_err() {
                // The call ended (the server answered early); its answer tells why.
                break None;
            }
        };
        match failed {
            // The sender is dropped here: the stream ends and the server answers.
            None => Ok(()),
            // Kept until the body has failed, so the stream never ends cleanly.
            Some(error) => Err((error, sender)),
        }
    };
    match future::select(Box::pin(call), Box::pin(produce)).await {
        Either::Left((answer, _)) => answer.map_err(Failure::Status),
        Either::Right((Ok(()), call)) => call.await.map_err(Failure::Status),
        Either::Right((Err((error, sender)), call)) => {
            // The body ends cut short and the server fails the call; the source's error is the
            // one to report.
            abandon.abandon();
            let _ = call.await;
            drop(sender);
            Err(Failure::Source(error))
        }
    }
}
