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

use crate::grpc::compress::Inflater;

/// Waits for the whole answer of `call` and sends it with a `Content-Length`; as gzip content if
/// `gzip` and it is large enough ([`crate::grpc::compress::gzip_whole`]).
pub(crate) async fn whole(
    call: impl Future<Output = Result<Response<GrpcBody>, Infallible>>,
    gzip: bool,
) -> Result<Response<GrpcBody>, Infallible> {
    let (mut parts, mut body) = call.await?.into_parts();
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
    if gzip {
        let answer = chunks.chunks.make_contiguous();
        if let Some(compressed) = crate::grpc::compress::gzip_whole(&mut parts.headers, answer) {
            chunks = Chunks::default();
            chunks.push(compressed);
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

pin_project_lite::pin_project! {
    /// A request body whose reset is an error, never a clean end, and that ends only between
    /// messages.
    ///
    /// tonic's decoder reads a request body that fails with `CANCELLED` as the end of the client's
    /// stream (tonic 0.14 `codec/decode.rs`, `Direction::Request`), and an HTTP/2 `RST_STREAM
    /// (CANCEL)` is exactly that failure: a client that cancels a client stream (or whose deadline
    /// passes) half-way would look like one that sent every message, and its writes would be
    /// applied. Here the failure keeps its meaning as `ABORTED`, so the stream fails and nothing
    /// of it is applied. The decoder also takes a body that ends right after a whole message
    /// header, with none of its message, for a clean end: here that end is `ABORTED` too.
    /// Every other frame and error passes through unchanged, but for a call that said
    /// `grpc-encoding: gzip`, whose compressed messages are inflated here
    /// ([`crate::grpc::compress::Inflater`]): one layer for both, the service's body on every call.
    pub(crate) struct ResetIsError<B> {
        #[pin]
        inner: B,
        framing: Framing,
        // `Some` for a call whose messages may be compressed.
        gzip: Option<Box<Inflater>>,
    }
}

impl<B> ResetIsError<B> {
    /// `inflate`: the largest message, inflated, for a call whose messages may be compressed;
    /// `None` for any other.
    pub(crate) fn new(inner: B, inflate: Option<usize>) -> Self {
        Self {
            inner,
            framing: Framing::default(),
            gzip: inflate.map(|limit| Box::new(Inflater::new(limit))),
        }
    }
}

/// Where a request body is in gRPC's framing (a flag byte and a four-byte big-endian length
/// before each message): whether it may end here.
#[derive(Debug, Default)]
struct Framing {
    /// Bytes of the current header read so far (0: between messages, or in one).
    header: u8,
    /// The length the current header gives, as far as it has been read.
    length: u32,
    /// Bytes of the current message still to come.
    remaining: u32,
}

impl Framing {
    fn read(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let taken = data.len().min(self.remaining as usize);
                self.remaining -= taken as u32;
                data = &data[taken..];
                continue;
            }
            // A whole header in hand (nearly always): at once.
            if let (0, Some((header, rest))) = (self.header, data.split_first_chunk::<5>()) {
                let [_, length @ ..] = *header;
                self.remaining = u32::from_be_bytes(length);
                data = rest;
                continue;
            }
            if self.header > 0 {
                self.length = (self.length << 8) | u32::from(data[0]);
            }
            self.header += 1;
            data = &data[1..];
            if self.header == 5 {
                self.remaining = self.length;
                self.header = 0;
                self.length = 0;
            }
        }
    }

    /// Between two messages (or before the first).
    fn between_messages(&self) -> bool {
        self.header == 0 && self.remaining == 0
    }
}

/// What the service sees when the client reset its stream before ending it.
pub(crate) const RESET_MESSAGE: &str =
    "the client cancelled the call before its stream ended: nothing of it is applied";

/// What the service sees when the request ended in the middle of a message.
pub(crate) const CUT_MESSAGE: &str =
    "the request ended in the middle of a message: nothing of it is applied";

/// What the service sees when the client's HTTP/1.1 connection closed before its request body
/// ended.
pub(crate) const DROPPED_MESSAGE: &str =
    "the client's connection closed before its request ended: nothing of it is applied";

/// Whether `error` (or what caused it) is the end of an HTTP/1.1 connection in the middle of a
/// request body (hyper's reading a chunk or a `Content-Length` body fails with `UnexpectedEof`),
/// which would otherwise reach the service as `UNKNOWN`.
fn connection_dropped(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |error| error.source()).any(|error| {
        error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|error| error.kind() == std::io::ErrorKind::UnexpectedEof)
    })
}

impl<B> http_body::Body for ResetIsError<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let mut this = self.project();
        loop {
            let frame = match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                // A plain call (nearly all): the frame as it is.
                Some(Ok(frame)) if this.gzip.is_none() => frame,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match this.gzip.as_deref_mut().expect("gzip").push(data)? {
                        Some(inflated) => Frame::data(inflated),
                        // No message is whole yet.
                        None => continue,
                    },
                    Err(frame) => frame,
                },
                Some(Err(error)) => {
                    let error = error.into();
                    let dropped = connection_dropped(&*error);
                    let status = tonic::Status::from_error(error);
                    return Poll::Ready(Some(Err(match status.code() {
                        tonic::Code::Cancelled => tonic::Status::aborted(RESET_MESSAGE),
                        _ if dropped => tonic::Status::aborted(DROPPED_MESSAGE),
                        _ => status,
                    })));
                }
                None => {
                    // A message cut short in a compressed stream goes on as it is, and is cut.
                    if let Some(rest) = this.gzip.as_deref_mut().and_then(Inflater::rest) {
                        this.framing.read(&rest);
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    return Poll::Ready(match this.framing.between_messages() {
                        true => None,
                        false => Some(Err(tonic::Status::aborted(CUT_MESSAGE))),
                    });
                }
            };
            if let Some(data) = frame.data_ref() {
                this.framing.read(data);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
            && self.framing.between_messages()
            && self.gzip.as_ref().is_none_or(|gzip| gzip.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::grpc::compress::{deflate, put_message, COMPRESSED};

    /// A body that fails with `status` at once.
    struct Failing(Option<tonic::Status>);

    impl http_body::Body for Failing {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.take().map(Err))
        }
    }

    #[tokio::test]
    async fn a_cancelled_body_fails_instead_of_ending() {
        // What tonic makes of an HTTP/2 reset, and its decoder then takes for the end.
        let reset = Failing(Some(tonic::Status::cancelled(
            "h2 protocol error: stream reset",
        )));
        let status = ResetIsError::new(reset, None)
            .frame()
            .await
            .expect("an error, not an end");
        let status = status.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert_eq!(status.message(), RESET_MESSAGE);

        // Any other failure passes through as it is.
        let other = Failing(Some(tonic::Status::internal(
            "tonic-web: malformed base64 request",
        )));
        let status = ResetIsError::new(other, None)
            .frame()
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    /// Reads `chunks` through [`ResetIsError`]: how it ends.
    async fn ending_of(chunks: &[&'static [u8]]) -> Option<tonic::Status> {
        let mut whole = Chunks::default();
        for chunk in chunks {
            whole.push(Bytes::from_static(chunk));
        }
        let mut body = ResetIsError::new(whole, None);
        loop {
            match body.frame().await {
                None => return None,
                Some(Ok(_)) => {}
                Some(Err(status)) => return Some(status),
            }
        }
    }

    #[tokio::test]
    async fn a_body_ends_cleanly_only_between_messages() {
        // Whole messages, however they are cut into chunks, an empty one included.
        assert!(ending_of(&[]).await.is_none());
        assert!(ending_of(&[b"\0\0\0\0\x02ab\0\0\0\0\0"]).await.is_none());
        assert!(
            ending_of(&[b"\0\0", b"\0\0\x03a", b"bc", b"\0\0\0\0", b"\x01x"])
                .await
                .is_none()
        );
        // A header alone, half a header, half a message: cut short.
        for cut in [
            &[&b"\0\0\0\0\x02ab"[..], b"\0\0\0\0\x02"][..],
            &[b"\0\0\0"],
            &[b"\0\0\0\0\x02a"],
            &[b"\x01\0\0\x01\0", b"abc"],
        ] {
            let status = ending_of(cut).await.expect("an error, not an end");
            assert_eq!(status.code(), tonic::Code::Aborted, "{cut:?}");
            assert_eq!(status.message(), CUT_MESSAGE);
        }
    }

    #[test]
    fn framing_follows_messages_however_they_are_cut() {
        // Messages of 300 (a length over a byte), 0 and 2 bytes.
        let mut stream = vec![0, 0, 0, 1, 44];
        stream.extend([7; 300]);
        stream.extend([0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 8, 9]);
        let ends = [0, 305, 310, stream.len()];
        for cut in 0..=stream.len() {
            // Read in two pieces split at `cut`, and byte by byte up to it.
            let mut two = Framing::default();
            two.read(&stream[..cut]);
            let mut bytes = Framing::default();
            for byte in &stream[..cut] {
                bytes.read(std::slice::from_ref(byte));
            }
            let between = ends.contains(&cut);
            assert_eq!(two.between_messages(), between, "after {cut} bytes");
            assert_eq!(
                bytes.between_messages(),
                between,
                "after {cut} bytes, one at a time"
            );
            two.read(&stream[cut..]);
            assert!(two.between_messages(), "the rest after {cut} bytes");
        }
    }

    /// A compressed message's frame, as a client sends it.
    fn framed(flag: u8, message: &[u8]) -> Bytes {
        let mut out = bytes::BytesMut::new();
        put_message(&mut out, flag, message);
        out.freeze()
    }

    /// `chunks` as a body.
    fn chunks_of(chunks: Vec<Bytes>) -> Chunks {
        let mut body = Chunks::default();
        for chunk in chunks {
            body.push(chunk);
        }
        body
    }

    async fn read(body: impl http_body::Body<Data = Bytes, Error = tonic::Status>) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn compressed_messages_are_inflated_however_they_are_cut() {
        let big = b"order ".repeat(1000);
        let gz = deflate(&big);
        let mut whole = framed(COMPRESSED, &gz).to_vec();
        whole.extend_from_slice(&framed(0, b"plain"));
        // Cut at every place in the first message's header and inside it.
        for cut in [1, 3, 5, 9, whole.len() - 3] {
            let chunks = vec![
                Bytes::copy_from_slice(&whole[..cut]),
                Bytes::copy_from_slice(&whole[cut..]),
            ];
            let out = read(ResetIsError::new(chunks_of(chunks), Some(1 << 20))).await;
            let mut expected = framed(0, &big).to_vec();
            expected.extend_from_slice(&framed(0, b"plain"));
            assert_eq!(out, expected, "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn a_gzip_bomb_fails_at_the_limit() {
        let bomb = deflate(&vec![0; 64 << 20]);
        assert!(bomb.len() < 128 << 10, "{} bytes", bomb.len());
        let mut body = ResetIsError::new(chunks_of(vec![framed(COMPRESSED, &bomb)]), Some(4 << 20));
        let status = body.frame().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("4194304"), "{}", status.message());

        // Not gzip at all: the client's mistake.
        let mut body =
            ResetIsError::new(chunks_of(vec![framed(COMPRESSED, b"nope")]), Some(4 << 20));
        let status = body.frame().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
