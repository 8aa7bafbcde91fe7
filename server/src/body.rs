//! Response bodies at the edge: a unary gRPC-Web answer is one message and the trailers, so it is
//! sent whole, with a `Content-Length`, in one write (over HTTP/1.1 that is one write instead of a
//! chunked stream of several). Streaming answers are never buffered.

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tonic::body::Body as GrpcBody;

/// Waits for the whole answer of `call` and sends it with a `Content-Length`.
pub(crate) async fn whole(
    call: impl Future<Output = Result<Response<GrpcBody>, Infallible>>,
) -> Result<Response<GrpcBody>, Infallible> {
    let (parts, mut body) = call.await?.into_parts();
    let mut chunks = Chunks::default();
    while let Some(frame) = body.frame().await {
        match frame {
            // tonic-web turns the trailers into a last data frame: every frame here is data.
            Ok(frame) => match frame.into_data() {
                Ok(data) => chunks.push(data),
                Err(_trailers) => {}
            },
            // The message could not be produced: answer with the status instead.
            Err(status) => return Ok(status.into_http()),
        }
    }
    Ok(Response::from_parts(parts, GrpcBody::new(chunks)))
}

/// A body of data chunks known in advance: its exact length lets hyper send `Content-Length`,
/// and the chunks go out as they are (no copy into one buffer).
#[derive(Default)]
struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    fn push(&mut self, data: Bytes) {
        self.remaining += data.len() as u64;
        self.chunks.push_back(data);
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.chunks.pop_front();
        if let Some(data) = &next {
            self.remaining -= data.len() as u64;
        }
        Poll::Ready(next.map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
