//! Client deadlines (`grpc-timeout`) honoured on every call.
//!
//! [`DeadlineLayer`] reads the header, bounds the call's response future by it and records the
//! [`Deadline`] in the request's extensions, where streaming RPCs find it to bound their response
//! streams with [`until_deadline`]. A call past its deadline ends with `DEADLINE_EXCEEDED`.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::{future::Either, stream::BoxStream, Stream, StreamExt};
use http::{Request, Response};
use tokio::time::Instant;
use tonic::Status;
use tower::{Layer, Service};

/// When the client stops waiting for this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// Applies `grpc-timeout` to every gRPC call below it.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
}

/// The response future of [`DeadlineService`]: the inner future as it is when the call has no
/// deadline (nothing added to the hot path), boxed with a timer when it has one.
pub type DeadlineFuture<F> = Either<F, Pin<Box<dyn Future<Output = <F as Future>::Output> + Send>>>;

impl<S, B, ResBody> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| parse_grpc_timeout(value.as_bytes()));
        let Some(timeout) = timeout else {
            return Either::Left(self.inner.call(request));
        };
        let deadline = Instant::now() + timeout;
        request.extensions_mut().insert(Deadline(deadline));
        let call = self.inner.call(request);
        Either::Right(Box::pin(async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(response) => response,
                Err(_) => Ok(deadline_exceeded().into_http()),
            }
        }))
    }
}

fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("the call's deadline (grpc-timeout) passed")
}

/// Parses `grpc-timeout`: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`). Anything
/// else is ignored, as gRPC servers do.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Ends `stream` with `DEADLINE_EXCEEDED` once `deadline` passes; without a deadline, `stream` as
/// it is.
pub fn until_deadline<T: Send + 'static>(
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    deadline: Option<Deadline>,
) -> BoxStream<'static, Result<T, Status>> {
    let Some(Deadline(deadline)) = deadline else {
        return stream.boxed();
    };
    let sleep = Box::pin(tokio::time::sleep_until(deadline));
    futures::stream::unfold(Some((stream.boxed(), sleep)), |state| async move {
        let (mut stream, mut sleep) = state?;
        tokio::select! {
            item = stream.next() => item.map(|item| (item, Some((stream, sleep)))),
            () = &mut sleep => Some((Err(deadline_exceeded()), None)),
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [&b""[..], b"S", b"5", b"123456789S", b"5s", b"-1S", b"1.5S"] {
            assert_eq!(
                parse_grpc_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_deadline_ends_with_deadline_exceeded() {
        let endless = futures::stream::pending::<Result<u32, Status>>();
        let deadline = Deadline(Instant::now() + Duration::from_secs(1));
        let items: Vec<_> = until_deadline(endless, Some(deadline)).collect().await;
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[0].as_ref().unwrap_err().code(),
            tonic::Code::DeadlineExceeded
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_in_time_is_unchanged() {
        let items = futures::stream::iter([Ok(1), Ok(2)]);
        let deadline = Deadline(Instant::now() + Duration::from_secs(1));
        let items: Vec<_> = until_deadline(items, Some(deadline)).collect().await;
        assert_eq!(
            items.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
