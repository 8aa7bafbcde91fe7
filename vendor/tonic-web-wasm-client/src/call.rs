use http::{
    HeaderMap, HeaderValue, Request, Response,
    header::{ACCEPT, CONTENT_TYPE},
    response::Builder,
};
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use js_sys::{Array, Uint8Array};
use tonic::body::Body;
use wasm_bindgen::JsValue;
use web_sys::{Headers, RequestCredentials, RequestInit};

use crate::{Error, ResponseBody, fetch::fetch, options::FetchOptions};

/// Put in a request's extensions (for a tonic call, `tonic::Request::extensions_mut`), this asks
/// the transport to stream the request body: `fetch` gets a `ReadableStream` that pulls each
/// chunk from the body as the browser sends it (with `duplex: "half"`), instead of one buffer
/// collected before the call. Browsers do this over HTTP/2 (so `https://`) only; elsewhere the
/// `fetch` fails. Without it, the body is buffered as before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamRequestBody;

/// Put in a streamed request's extensions beside [`StreamRequestBody`], this has each message of
/// at least `min_bytes` sent gzip-compressed by the browser's own `CompressionStream` (no
/// compressor in the module), flagged so in its header, with `grpc-encoding: gzip`. Messages stay
/// separate, so each still goes as soon as it is produced; what is left at the end (a message cut
/// short) goes as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressRequestMessages {
    pub min_bytes: u32,
}

// In JavaScript, where the browser's streams are: a few lines of glue instead of Rust stream
// combinators in the module (which cost it 1.9 KB gzipped).
#[wasm_bindgen::prelude::wasm_bindgen(inline_js = r#"
export function gzipMessages(stream, min) {
  let rest = new Uint8Array(0);
  return stream.pipeThrough(new TransformStream({
    async transform(chunk, out) {
      const b = new Uint8Array(rest.length + chunk.length);
      b.set(rest);
      b.set(chunk, rest.length);
      let at = 0;
      while (b.length - at >= 5) {
        const n = new DataView(b.buffer, at + 1, 4).getUint32(0);
        if (b.length - at < 5 + n) break;
        const flag = b[at], message = b.subarray(at + 5, at + 5 + n);
        at += 5 + n;
        if (n < min || flag & 1) { out.enqueue(b.slice(at - 5 - n, at)); continue; }
        const gz = new Response(new Blob([message]).stream().pipeThrough(new CompressionStream("gzip")));
        const z = new Uint8Array(await gz.arrayBuffer());
        const framed = new Uint8Array(5 + z.length);
        framed[0] = flag | 1;
        new DataView(framed.buffer).setUint32(1, z.length);
        framed.set(z, 5);
        out.enqueue(framed);
      }
      rest = b.slice(at);
    },
    flush(out) { if (rest.length) out.enqueue(rest); },
  }));
}
"#)]
extern "C" {
    /// `stream` of gRPC frames, with each message of at least `min` bytes gzip-compressed.
    #[wasm_bindgen(js_name = gzipMessages)]
    fn gzip_messages(stream: &JsValue, min: u32) -> JsValue;
}

pub async fn call(
    mut base_url: String,
    request: Request<Body>,
    options: FetchOptions,
) -> Result<Response<ResponseBody>, Error> {
    base_url.push_str(&request.uri().to_string());

    let headers = prepare_headers(request.headers())?;
    let streamed = request.extensions().get::<StreamRequestBody>().is_some();
    let compress = request.extensions().get::<CompressRequestMessages>().copied();
    let body = if streamed {
        let body = stream_body(request.into_body());
        Some(match compress {
            None => body,
            Some(CompressRequestMessages { min_bytes }) => {
                headers.set("grpc-encoding", "gzip").map_err(Error::js_error)?;
                gzip_messages(&body, min_bytes)
            }
        })
    } else {
        prepare_body(request).await?
    };

    let request = prepare_request(&base_url, headers, body, streamed)?;
    let (init, abort) = options.request_init()?;
    let response = fetch(&request, &init).await?;

    let result = Response::builder().status(response.status());
    let (result, content_type) = set_response_headers(result, &response)?;

    let content_type = content_type.ok_or(Error::MissingContentTypeHeader)?;
    let body_stream = response.body().ok_or(Error::MissingResponseBody)?;

    let body = ResponseBody::new(body_stream, &content_type, abort)?;

    result.body(body).map_err(Into::into)
}

fn prepare_headers(header_map: &HeaderMap<HeaderValue>) -> Result<Headers, Error> {
    // Construct default headers.
    let headers = Headers::new().map_err(Error::js_error)?;
    headers
        .append(CONTENT_TYPE.as_str(), "application/grpc-web+proto")
        .map_err(Error::js_error)?;
    headers
        .append(ACCEPT.as_str(), "application/grpc-web+proto")
        .map_err(Error::js_error)?;
    headers.append("x-grpc-web", "1").map_err(Error::js_error)?;

    // Apply default headers.
    for (header_name, header_value) in header_map.iter() {
        // Allow default headers to be overridden except for `content-type`.
        if header_name != CONTENT_TYPE {
            headers
                .set(header_name.as_str(), header_value.to_str()?)
                .map_err(Error::js_error)?;
        }
    }

    Ok(headers)
}

async fn prepare_body(request: Request<Body>) -> Result<Option<JsValue>, Error> {
    let body = Some(request.collect().await?.to_bytes());
    Ok(body.map(|bytes| Uint8Array::from(bytes.as_ref()).into()))
}

/// The body as a `ReadableStream` of `Uint8Array` chunks, each pulled from `body` when the
/// browser asks for the next one (so a body produced slowly is sent as it is produced, and one
/// the network cannot take is not produced ahead). A failing body errors the stream, which fails
/// the `fetch`: the server never sees a truncated body end cleanly.
fn stream_body(body: Body) -> JsValue {
    let chunks = http_body_util::BodyStream::new(body)
        .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) })
        .map_ok(|data| JsValue::from(Uint8Array::from(data.as_ref())))
        .map_err(|status| JsValue::from(js_sys::Error::new(status.message())));
    wasm_streams::ReadableStream::from_stream(chunks)
        .into_raw()
        .into()
}

fn prepare_request(
    url: &str,
    headers: Headers,
    body: Option<JsValue>,
    streamed: bool,
) -> Result<web_sys::Request, Error> {
    let init = RequestInit::new();

    init.set_method("POST");
    init.set_headers(headers.as_ref());
    if let Some(ref body) = body {
        init.set_body(body);
    }
    if streamed {
        // Required for a stream body: the response is read once the request is sent.
        js_sys::Reflect::set(&init, &"duplex".into(), &"half".into()).map_err(Error::js_error)?;
    }
    init.set_credentials(RequestCredentials::SameOrigin);

    web_sys::Request::new_with_str_and_init(url, &init).map_err(Error::js_error)
}

fn set_response_headers(
    mut result: Builder,
    response: &web_sys::Response,
) -> Result<(Builder, Option<String>), Error> {
    let headers = response.headers();

    let header_iter = js_sys::try_iter(headers.as_ref()).map_err(Error::js_error)?;

    let mut content_type = None;

    if let Some(header_iter) = header_iter {
        for header in header_iter {
            let header = header.map_err(Error::js_error)?;
            let pair: Array = header.into();

            let header_name = pair.get(0).as_string();
            let header_value = pair.get(1).as_string();

            match (header_name, header_value) {
                (Some(header_name), Some(header_value)) => {
                    if header_name == CONTENT_TYPE.as_str() {
                        content_type = Some(header_value.clone());
                    }

                    result = result.header(header_name, header_value);
                }
                _ => continue,
            }
        }
    }

    Ok((result, content_type))
}
