//! The edge of every gRPC stack: what each call goes through before its service, in one layer.
//!
//! In order: metrics (the call is counted and timed, refusals included), the host check (DNS
//! rebinding, [`crate::grpc::host`]), authentication (the caller's token and scope, [`crate::grpc::auth`]),
//! deadlines (`grpc-timeout` and `--max-call-duration`, [`crate::grpc::deadline`]), compression (gzip
//! messages in, and out for a client that takes them, [`crate::grpc::compress`]), then the service.
//! A refused call (a host not served, no token or a bad one, a missing scope, a method this server
//! does not have) never reaches the service: it is answered trailers-only, once the first few KiB
//! of its request body have been read and thrown away ([`drain`]). Answered before the body, a
//! client still sending it would see a reset stream (HTTP/2) or a closed socket (HTTP/1.1) instead
//! of the refusal. A call's request body reaches the service as [`ResetIsError`]: a client stream
//! reset half-way fails, rather than ending as if the client had sent all it meant to.
//!
//! One layer rather than four: each would move the request, clone its handles and nest its
//! future around the next for every call, which cost about 5 % of a cached `getOrder`. Each
//! check lives in its own module; this one only puts them in order.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use tonic::{body::Body as GrpcBody, Status};
use tower::{Layer, Service};

use crate::{
    grpc::auth::{Auth, Need},
    grpc::body::ResetIsError,
    grpc::compress::{deflated, lists_gzip, Encodings, GRPC_ACCEPT_ENCODING, GRPC_ENCODING},
    grpc::deadline::GRPC_TIMEOUT,
    grpc::deadline::{parse_grpc_timeout, Deadlines, Timer},
    grpc::host::{refusal, Hosts},
    grpc::methods::MethodPaths,
    grpc::metrics::{measured, Call, Metrics},
};

/// What every call is checked and measured against: made once, shared by every stack.
pub(crate) struct Edge {
    /// `None` with `--no-metrics`.
    pub(crate) metrics: Option<Arc<Metrics>>,
    pub(crate) hosts: Hosts,
    /// `None` when authentication is off.
    pub(crate) auth: Option<Auth>,
    pub(crate) deadlines: Deadlines,
    /// Every method served, so that a call to any other is refused here, its body drained.
    pub(crate) methods: MethodPaths,
    /// The largest message, as inflated from gzip (`--max-message-size`).
    pub(crate) max_message_size: usize,
}

/// Puts [`Edge`] in front of a gRPC service.
#[derive(Clone)]
pub(crate) struct EdgeLayer(pub(crate) Arc<Edge>);

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService {
            edge: self.0.clone(),
            inner,
        }
    }
}

/// The service [`EdgeLayer`] makes.
#[derive(Clone)]
pub(crate) struct EdgeService<S> {
    edge: Arc<Edge>,
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for EdgeService<S>
where
    B: http_body::Body + Send + 'static,
    S: Service<Request<ResetIsError<B>>, Response = Response<ResBody>, Error = Infallible>,
    ResBody: http_body::Body<Data = Bytes> + Default + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let edge = &*self.edge;
        let call = edge
            .metrics
            .as_ref()
            .map(|metrics| metrics.begin(&mut request));
        if let Err(host) = edge.hosts.check(&request) {
            tracing::debug!(%host, path = request.uri().path(), "call for a host not served: refused");
            let status = Status::permission_denied(refusal(&host));
            return EdgeFuture::refused(status, request.into_body(), call);
        }
        if !edge.methods.contains(request.uri().path()) {
            let status = Status::unimplemented(format!(
                "this server has no method {}",
                request.uri().path()
            ));
            return EdgeFuture::refused(status, request.into_body(), call);
        }
        if let Some(auth) = &edge.auth {
            match auth.check(request.headers(), Need::of(request.uri().path())) {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                }
                Err(status) => return EdgeFuture::refused(status, request.into_body(), call),
            }
        }
        let headers = CallHeaders::of(request.headers());
        let encodings = match Encodings::of(headers.encoding, headers.accepts_gzip) {
            Ok(encodings) => encodings,
            Err(status) => return EdgeFuture::refused(status, request.into_body(), call),
        };
        let timeout = headers
            .timeout
            .and_then(|value| parse_grpc_timeout(value.as_bytes()));
        let timer = edge.deadlines.of(&mut request, timeout);
        // Inflated here, if compressed: the service sees plain messages.
        let inflate = encodings.inflate.then(|| {
            request.headers_mut().remove(GRPC_ENCODING);
            edge.max_message_size
        });
        EdgeFuture {
            state: State::Called {
                inner: self
                    .inner
                    .call(request.map(|body| ResetIsError::new(body, inflate))),
                timer,
                deflate: encodings.deflate,
            },
            call,
        }
    }
}

/// The gRPC headers the edge reads of every call, found in one scan of its headers: a call
/// carries a handful, and comparing names costs a few instructions each where hashing a custom
/// name costs about 150 (as `metrics` finds `grpc-status`). Of a header sent twice, the first.
#[derive(Debug, Default)]
struct CallHeaders<'a> {
    /// `grpc-timeout`.
    timeout: Option<&'a HeaderValue>,
    /// `grpc-encoding`.
    encoding: Option<&'a HeaderValue>,
    /// Whether a `grpc-accept-encoding` names gzip.
    accepts_gzip: bool,
}

impl<'a> CallHeaders<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut found = CallHeaders::default();
        // Names compared as `HeaderName`s: a standard header (`content-type`, `te`...) differs
        // from these custom ones at its first comparison, with no string made of it.
        for (name, value) in headers {
            if name == GRPC_TIMEOUT {
                found.timeout.get_or_insert(value);
            } else if name == GRPC_ENCODING {
                found.encoding.get_or_insert(value);
            } else if name == GRPC_ACCEPT_ENCODING {
                found.accepts_gzip |= lists_gzip(value);
            }
        }
        found
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`EdgeService`]. Dropped before it answers (the client reset the
    /// stream or went away), its call is counted as `CANCELLED`.
    pub struct EdgeFuture<F> {
        #[pin]
        state: State<F>,
        call: Option<Call>,
    }

    impl<F> PinnedDrop for EdgeFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.cancelled();
            }
        }
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        /// Passed to the service, under its deadline; `deflate`: its client takes gzip messages.
        Called { #[pin] inner: F, timer: Timer, deflate: bool },
        /// Refused at the edge (taken when answered), once its request body is drained.
        Refused { status: Option<Box<Status>>, drain: Option<Drain> },
    }
}

/// Reading and throwing away the start of a refused call's request body.
type Drain = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How much of a refused call's request body is read before the refusal is sent: a unary call's
/// message, or the start of a stream. A client that sends more sees its stream reset or its
/// connection closed after the answer, as it would anywhere.
const DRAIN_BYTES: usize = 16 * 1024;

/// How long a refused call's request body is waited for at most.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads `body` to its end, or until [`DRAIN_BYTES`] or [`DRAIN_TIME`] is spent; `None` if it is
/// already over (a call whose head ended its stream).
fn drain<B>(body: B) -> Option<Drain>
where
    B: http_body::Body + Send + 'static,
{
    if body.is_end_stream() {
        return None;
    }
    Some(Box::pin(async move {
        let mut body = std::pin::pin!(body);
        let mut read = 0;
        let reading = async {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    read += data.remaining();
                    if read > DRAIN_BYTES {
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, reading).await;
    }))
}

impl<F> EdgeFuture<F> {
    fn refused<B>(status: Status, body: B, call: Option<Call>) -> Self
    where
        B: http_body::Body + Send + 'static,
    {
        EdgeFuture {
            state: State::Refused {
                status: Some(Box::new(status)),
                drain: drain(body),
            },
            call,
        }
    }
}

impl<F, ResBody> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, Infallible>>,
    ResBody: http_body::Body<Data = Bytes> + Default + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Output = Result<Response<GrpcBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (response, deflate) = match this.state.project() {
            StateProj::Called {
                inner,
                timer,
                deflate,
            } => match inner.poll(cx) {
                Poll::Ready(Ok(response)) => (response, *deflate),
                Poll::Pending => match timer.poll_expired(cx) {
                    Poll::Ready(status) => (status.into_http(), false),
                    Poll::Pending => return Poll::Pending,
                },
            },
            StateProj::Refused { status, drain } => {
                if let Some(reading) = drain {
                    if reading.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *drain = None;
                }
                let status = status
                    .take()
                    .expect("an edge future is not polled after it is ready");
                (status.into_http(), false)
            }
        };
        let response = measured(response, this.call.take());
        if deflate {
            // Only for a client that asked: the hot path moves the answer once.
            return Poll::Ready(Ok(deflated(response)));
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_scan_finds_each_grpc_header_the_edge_reads() {
        let mut headers = HeaderMap::new();
        let none = CallHeaders::of(&headers);
        assert!(none.timeout.is_none() && none.encoding.is_none() && !none.accepts_gzip);

        headers.insert("content-type", "application/grpc".parse().unwrap());
        headers.insert("grpc-timeout", "250m".parse().unwrap());
        headers.insert("grpc-encoding", "gzip".parse().unwrap());
        headers.append("grpc-accept-encoding", "identity".parse().unwrap());
        headers.append("grpc-accept-encoding", "deflate, gzip".parse().unwrap());
        headers.insert("x-grpc-encoding", "snappy".parse().unwrap());
        let found = CallHeaders::of(&headers);
        assert_eq!(found.timeout.unwrap(), "250m");
        assert_eq!(found.encoding.unwrap(), "gzip");
        // Any of the lists may name gzip.
        assert!(found.accepts_gzip);

        headers.insert("grpc-accept-encoding", "gzip;q=0".parse().unwrap());
        assert!(!CallHeaders::of(&headers).accepts_gzip);
    }
}
