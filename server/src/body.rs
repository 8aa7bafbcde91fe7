//! Response bodies at the edge: a unary gRPC-Web answer is one message and the trailers, so it is
//! sent whole, with a `Content-Length`, in one write (over HTTP/1.1 that is one write instead of a
//! chunked stream of several). Streaming answers are never buffered.

use std::{convert::Infallible, future::Future};

use http::Response;
use http_body_util::BodyExt;
use tonic::body::Body as GrpcBody;

/// Waits for the whole answer of `call` and sends it with a `Content-Length`.
pub(crate) async fn whole(
    call: impl Future<Output = Result<Response<GrpcBody>, Infallible>>,
) -> Result<Response<GrpcBody>, Infallible> {
    let (parts, body) = call.await?.into_parts();
    Ok(match body.collect().await {
        Ok(collected) => Response::from_parts(
            parts,
            GrpcBody::new(http_body_util::Full::new(collected.to_bytes())),
        ),
        // The message could not be produced: answer with the status instead.
        Err(status) => status.into_http(),
    })
}
