//! gzip on the wire, both ways, at the edge: nothing here runs for a call that does not ask for it.
//!
//! - **Requests** (`grpc-encoding: gzip`): each message flagged compressed is inflated before the
//!   service sees it ([`Inflater`]). Its *inflated* size counts against `--max-message-size`: a
//!   small message that inflates past it (a gzip bomb) fails the call with `RESOURCE_EXHAUSTED`
//!   once that many bytes are out, never more. Another encoding is refused with `UNIMPLEMENTED`,
//!   naming the one this server takes.
//! - **Answers** (`grpc-accept-encoding` naming gzip): each message of at least [`THRESHOLD`]
//!   bytes goes compressed, flagged so in its header ([`MapMessages`], [`deflated`]); smaller ones go as they are,
//!   where gzip would add more than it saves. The answer says `grpc-encoding: gzip`.
//! - **Browsers** (gRPC-Web with `Accept-Encoding: gzip`, which every browser sends): the whole
//!   answer is compressed as HTTP content ([`gzip_stream`], [`gzip_whole`]), which `fetch`
//!   inflates before the page's client sees it: the web client needs no inflater of its own. A
//!   stream is flushed after each chunk, so every order is on its way as soon as it is found.
//!
//! gRPC's message framing (a flag byte, then a four-byte big-endian length) is read with
//! [`Frames`], which puts messages cut across chunks back together.

use std::{
    io::{Read, Write},
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use http::{header, HeaderMap, HeaderName, HeaderValue, Response};
use http_body::{Body, Frame};
use tonic::{body::Body as GrpcBody, Status};

/// Messages (and unary browser answers) smaller than this are never compressed.
pub(crate) const THRESHOLD: usize = 1024;

/// The compression level: fast, as it is paid on every compressed answer.
const LEVEL: Compression = Compression::new(4);

pub(crate) const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
pub(crate) const GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");
const GZIP: HeaderValue = HeaderValue::from_static("gzip");

/// The message flag of a compressed message.
pub(crate) const COMPRESSED: u8 = 1;

/// What a call's headers ask of compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Encodings {
    /// Its messages may be compressed (`grpc-encoding: gzip`).
    pub(crate) inflate: bool,
    /// Its answer's messages may be (`grpc-accept-encoding` names gzip).
    pub(crate) deflate: bool,
}

impl Encodings {
    /// From a call's `grpc-encoding` and whether its `grpc-accept-encoding` names gzip (read by
    /// the edge in its one scan of the headers); an encoding other than gzip is refused with the
    /// one this server takes.
    pub(crate) fn of(encoding: Option<&HeaderValue>, accepts_gzip: bool) -> Result<Self, Status> {
        let inflate = match encoding {
            // No grpc-encoding (nearly every call) is settled here, not through `is_gzip` and
            // its `Result`: 25 instructions less a call.
            None => false,
            Some(encoding) => {
                is_gzip("grpc-encoding", Some(encoding.as_bytes())).map_err(|mut status| {
                    status
                        .metadata_mut()
                        .insert("grpc-accept-encoding", "gzip".parse().expect("ASCII"));
                    status
                })?
            }
        };
        Ok(Encodings {
            inflate,
            deflate: accepts_gzip,
        })
    }
}

/// Whether the encoding a request names in `what` (`grpc-encoding`, `Content-Encoding`,
/// Connect's `Connect-Content-Encoding` or a GET's `compression`) is gzip: none named, or
/// `identity`, is not; any other is refused as `UNIMPLEMENTED`, naming the one this server takes.
pub(crate) fn is_gzip(what: &str, encoding: Option<&[u8]>) -> Result<bool, Status> {
    match encoding {
        None | Some(b"identity") => Ok(false),
        Some(b"gzip") => Ok(true),
        Some(other) => Err(Status::unimplemented(format!(
            "{what} {:?} is not supported: this server accepts gzip",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// Whether a comma-separated list of encodings (`Accept-Encoding`, `grpc-accept-encoding`) names
/// gzip with a quality above zero.
pub(crate) fn lists_gzip(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|list| {
        list.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            parts
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("gzip"))
                && parts.all(|param| param.replace(' ', "") != "q=0")
        })
    })
}

/// Whether a browser's `Accept-Encoding` takes gzip.
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .any(lists_gzip)
}

/// gRPC messages read from chunks as they come, whole.
#[derive(Default)]
pub(crate) struct Frames {
    buffer: BytesMut,
}

impl Frames {
    pub(crate) fn push(&mut self, mut data: impl Buf) {
        while data.has_remaining() {
            let chunk = data.chunk();
            self.buffer.extend_from_slice(chunk);
            let read = chunk.len();
            data.advance(read);
        }
    }

    /// The next whole message: its flag byte and its bytes.
    pub(crate) fn next(&mut self) -> Option<(u8, Bytes)> {
        let header = self.buffer.first_chunk::<5>()?;
        let [flag, length @ ..] = *header;
        let length = u32::from_be_bytes(length) as usize;
        if self.buffer.len() < 5 + length {
            return None;
        }
        self.buffer.advance(5);
        Some((flag, self.buffer.split_to(length).freeze()))
    }

    /// Takes `data`, and hands each message it makes whole to `each` (its flag and bytes), which
    /// writes what goes on in their place; the chunk written, or `None` when nothing is yet.
    pub(crate) fn map(
        &mut self,
        data: impl Buf,
        mut each: impl FnMut(u8, Bytes, &mut BytesMut) -> Result<(), Status>,
    ) -> Result<Option<Bytes>, Status> {
        self.push(data);
        let mut out = BytesMut::new();
        while let Some((flag, message)) = self.next() {
            each(flag, message, &mut out)?;
        }
        Ok((!out.is_empty()).then(|| out.freeze()))
    }

    /// What is left of a message cut short, its compressed flag cleared: the reader takes plain
    /// messages, and fails this one as cut (`ABORTED`), not as compressed (`INTERNAL`).
    pub(crate) fn rest(&mut self) -> Option<Bytes> {
        let flag = self.buffer.first_mut()?;
        *flag &= !COMPRESSED;
        Some(self.buffer.split().freeze())
    }
}

/// Appends one framed message to `out`.
pub(crate) fn put_message(out: &mut BytesMut, flag: u8, message: &[u8]) {
    out.reserve(5 + message.len());
    out.put_u8(flag);
    out.put_u32(u32::try_from(message.len()).expect("a message under 4 GiB"));
    out.put_slice(message);
}

/// Inflates one gzip message, failing once it grows past `limit` bytes.
pub(crate) fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, Status> {
    let mut message = Vec::new();
    let read = GzDecoder::new(compressed)
        .take((limit as u64).saturating_add(1))
        .read_to_end(&mut message);
    match read {
        Ok(_) if message.len() > limit => Err(Status::resource_exhausted(format!(
            "a compressed message inflates past the limit of {limit} bytes (--max-message-size)"
        ))),
        Ok(_) => Ok(message),
        Err(error) => Err(Status::invalid_argument(format!(
            "a message flagged gzip could not be inflated: {error}"
        ))),
    }
}

/// A message as it was sent: inflated if its flag says compressed (at most `limit` bytes).
pub(crate) fn plain(flag: u8, message: Bytes, limit: usize) -> Result<Bytes, Status> {
    if flag & COMPRESSED == 0 {
        return Ok(message);
    }
    inflate(&message, limit).map(Bytes::from)
}

/// Appends `message` to `out`, compressed if it is [`THRESHOLD`] bytes or more.
pub(crate) fn put_deflated(out: &mut BytesMut, message: &[u8]) {
    if message.len() >= THRESHOLD {
        put_message(out, COMPRESSED, &deflate(message));
    } else {
        put_message(out, 0, message);
    }
}

/// Compresses `data` as one gzip member.
pub(crate) fn deflate(data: &[u8]) -> Vec<u8> {
    deflate_parts(&[data])
}

/// Compresses `parts`, one after the other, as one gzip member.
fn deflate_parts(parts: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let len: usize = parts.iter().map(|part| part.as_ref().len()).sum();
    let mut encoder = GzEncoder::new(Vec::with_capacity(len / 4 + 32), LEVEL);
    for part in parts {
        encoder.write_all(part.as_ref()).expect("writing to memory");
    }
    encoder.finish().expect("writing to memory")
}

/// Inflates the compressed messages of a request body, chunk by chunk ([`crate::grpc::body::ResetIsError`]
/// runs it on the bodies of calls that say `grpc-encoding: gzip`).
pub(crate) struct Inflater {
    frames: Frames,
    limit: usize,
}

impl Inflater {
    /// Inflates messages up to `limit` bytes each.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            frames: Frames::default(),
            limit,
        }
    }

    /// The messages `data` completes, each inflated if it was compressed; `None` when it
    /// completes none.
    pub(crate) fn push(&mut self, data: Bytes) -> Result<Option<Bytes>, Status> {
        let limit = self.limit;
        self.frames.map(data, |flag, message, out| {
            let message = plain(flag, message, limit)?;
            put_message(out, flag & !COMPRESSED, &message);
            Ok(())
        })
    }

    /// What is left of a message cut short, to pass on for the service to fail as cut.
    pub(crate) fn rest(&mut self) -> Option<Bytes> {
        self.frames.rest()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.buffer.is_empty()
    }
}

pin_project_lite::pin_project! {
    /// A body of gRPC messages, each rewritten by `map` once it is whole ([`Frames::map`]):
    /// trailers pass through, and what is left of a message cut short goes on as it is, for the
    /// reader to fail. The answers of a client that takes gzip ([`deflated`]) and Connect's JSON
    /// request streams ([`crate::grpc::connect`]) go through it.
    pub(crate) struct MapMessages<B, F> {
        #[pin]
        inner: B,
        frames: Frames,
        map: F,
    }
}

impl<B, F> MapMessages<B, F> {
    pub(crate) fn new(inner: B, map: F) -> Self {
        Self {
            inner,
            frames: Frames::default(),
            map,
        }
    }
}

impl<B, F> Body for MapMessages<B, F>
where
    B: Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
    F: FnMut(u8, Bytes, &mut BytesMut) -> Result<(), Status>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let mut this = self.project();
        loop {
            match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(out) = this.frames.map(data, &mut *this.map)? {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(error)) => {
                    return Poll::Ready(Some(Err(Status::from_error(error.into()))))
                }
                None => return Poll::Ready(this.frames.rest().map(|rest| Ok(Frame::data(rest)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() && self.frames.buffer.is_empty()
    }
}

/// Has `response` send its large messages compressed, and say so.
pub(crate) fn deflated(response: Response<GrpcBody>) -> Response<GrpcBody> {
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(GRPC_ENCODING, GZIP);
    let body = MapMessages::new(body, |flag, message: Bytes, out: &mut BytesMut| {
        match flag & COMPRESSED {
            0 => put_deflated(out, &message),
            _ => put_message(out, flag, &message),
        }
        Ok(())
    });
    Response::from_parts(parts, GrpcBody::new(body))
}

/// Marks `headers` as gzip content for a browser.
fn gzip_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_ENCODING, GZIP);
    headers.remove(header::CONTENT_LENGTH);
    headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
}

/// A whole answer, in `parts`, gzip-compressed as HTTP content if it is [`THRESHOLD`] bytes or
/// more; `None` when it is smaller.
pub(crate) fn gzip_whole(headers: &mut HeaderMap, parts: &[impl AsRef<[u8]>]) -> Option<Bytes> {
    if parts.iter().map(|part| part.as_ref().len()).sum::<usize>() < THRESHOLD {
        return None;
    }
    gzip_headers(headers);
    Some(deflate_parts(parts).into())
}

pin_project_lite::pin_project! {
    /// An answer compressed as HTTP content, one gzip stream flushed after each chunk.
    struct GzipStream {
        #[pin]
        inner: GrpcBody,
        encoder: Option<GzEncoder<Vec<u8>>>,
        trailers: Option<HeaderMap>,
    }
}

impl Body for GzipStream {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let mut this = self.project();
        let Some(encoder) = this.encoder.as_mut() else {
            return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
        };
        loop {
            let ended = match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        // Sync-flushed: the chunk's bytes go out now, whole, not when more come.
                        let written = encoder.write_all(&data).and_then(|()| encoder.flush());
                        written.map_err(|error| Status::internal(error.to_string()))?;
                        let out = std::mem::take(encoder.get_mut());
                        if out.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out.into()))));
                    }
                    Err(frame) => {
                        *this.trailers = frame.into_trailers().ok();
                        true
                    }
                },
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
                None => true,
            };
            if ended {
                let encoder = this.encoder.take().expect("taken once");
                let tail = encoder
                    .finish()
                    .map_err(|error| Status::internal(error.to_string()))?;
                return Poll::Ready(Some(Ok(Frame::data(tail.into()))));
            }
        }
    }
}

/// Has a streamed browser answer sent as gzip content.
pub(crate) fn gzip_stream(response: Response<GrpcBody>) -> Response<GrpcBody> {
    let (mut parts, body) = response.into_parts();
    gzip_headers(&mut parts.headers);
    let body = GzipStream {
        inner: body,
        encoder: Some(GzEncoder::new(Vec::new(), LEVEL)),
        trailers: None,
    };
    Response::from_parts(parts, GrpcBody::new(body))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn framed(flag: u8, message: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        put_message(&mut out, flag, message);
        out.freeze()
    }

    /// `chunks` as a body.
    fn body_of(chunks: Vec<Bytes>) -> GrpcBody {
        let stream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|chunk| Ok::<_, Status>(Frame::data(chunk))),
        );
        GrpcBody::new(http_body_util::StreamBody::new(stream))
    }

    async fn read(body: impl Body<Data = Bytes, Error = impl std::fmt::Debug>) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[test]
    fn encodings_are_read_from_the_headers() {
        assert_eq!(Encodings::of(None, false).unwrap(), Encodings::default());
        let gzip = HeaderValue::from_static("gzip");
        let both = Encodings {
            inflate: true,
            deflate: true,
        };
        assert_eq!(Encodings::of(Some(&gzip), true).unwrap(), both);
        let identity = HeaderValue::from_static("identity");
        assert_eq!(
            Encodings::of(Some(&identity), false).unwrap(),
            Encodings::default()
        );
        let refused = Encodings::of(Some(&HeaderValue::from_static("snappy")), true).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unimplemented);
        assert!(
            refused.message().contains("snappy"),
            "{}",
            refused.message()
        );
        assert_eq!(
            refused.metadata().get("grpc-accept-encoding").unwrap(),
            "gzip"
        );

        for (list, gzip) in [
            ("gzip, deflate, br, zstd", true),
            ("br;q=1.0, GZIP;q=0.5", true),
            ("gzip;q=0", false),
            ("identity", false),
            ("x-gzip-not", false),
        ] {
            assert_eq!(lists_gzip(&list.parse().unwrap()), gzip, "{list}");
        }
    }

    #[tokio::test]
    async fn only_messages_over_the_threshold_are_compressed() {
        let small = b"x".repeat(THRESHOLD - 1);
        let large = b"y".repeat(THRESHOLD * 4);
        let response = deflated(Response::new(body_of(vec![
            framed(0, &small),
            framed(0, &large),
        ])));
        assert_eq!(response.headers()[GRPC_ENCODING], "gzip");
        let out = read(response.into_body()).await;
        let mut frames = Frames::default();
        frames.push(&out[..]);
        assert_eq!(frames.next().unwrap(), (0, Bytes::from(small)));
        let (flag, message) = frames.next().unwrap();
        assert_eq!(flag, COMPRESSED);
        assert!(message.len() < 100, "{} bytes", message.len());
        assert_eq!(inflate(&message, usize::MAX).unwrap(), large);
        assert!(frames.next().is_none());
    }

    #[tokio::test]
    async fn a_browser_stream_is_gzip_content_flushed_chunk_by_chunk() {
        let first = framed(0, b"first order");
        let second = framed(0, &b"second order ".repeat(100));
        let response = gzip_stream(Response::new(body_of(vec![first.clone(), second.clone()])));
        assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
        let mut body = response.into_body();
        // The first chunk alone already inflates to the first message.
        let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        decoder.write_all(&chunk).unwrap();
        decoder.flush().unwrap();
        assert_eq!(decoder.get_ref()[..], first[..]);
        while let Some(frame) = body.frame().await {
            decoder
                .write_all(&frame.unwrap().into_data().unwrap())
                .unwrap();
        }
        let all = decoder.finish().unwrap();
        assert_eq!(all, [&first[..], &second[..]].concat());
    }
}
