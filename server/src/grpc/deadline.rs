//! Deadlines on every call: the client's (`grpc-timeout`) and the server's ceiling
//! (`--max-call-duration`), whichever comes first.
//!
//! At the edge ([`edge`](crate::grpc::edge)), [`Deadlines::of`] takes the header's value and,
//! for the methods whose response is a stream, records the [`Deadline`] in the request's
//! extensions, where they find it to bound their response streams with
//! [`until_deadline`](crate::call::until_deadline); a [`Timer`] bounds the call's response
//! future. A call past its deadline ends with `DEADLINE_EXCEEDED`, its message saying whose
//! deadline it was. So no call, streams included, holds its resources (a database transaction, a
//! connection's stream) forever.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use http::{HeaderName, Request};
use tokio::time::{Instant, Sleep};
use tonic::Status;

use crate::{call::Deadline, grpc::methods::MethodPaths};

/// The header a gRPC client sends its deadline in.
pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Applies `grpc-timeout` and the server's ceiling (`None`: no ceiling) to every gRPC call.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    /// `--max-call-duration`.
    pub(crate) max: Option<Duration>,
    /// The methods whose response is a stream: only their requests carry the [`Deadline`]
    /// (any other answer is bounded by the response future alone).
    pub(crate) streamed: MethodPaths,
}

impl Deadlines {
    /// The timer of the call `request` begins, with its deadline recorded in the request if its
    /// response is a stream.
    /// The timer of `request`, whose client asked for `timeout` (its `grpc-timeout`, read by the
    /// edge in its one scan of the headers).
    pub(crate) fn of<B>(&self, request: &mut Request<B>, timeout: Option<Duration>) -> Timer {
        let client = timeout.map(|after| Limit {
            after,
            client: true,
        });
        let ceiling = self.max.map(|after| Limit {
            after,
            client: false,
        });
        let limit = match (client, ceiling) {
            (Some(client), Some(ceiling)) if ceiling.after < client.after => Some(ceiling),
            (client, ceiling) => client.or(ceiling),
        };
        // A response stream needs its deadline as an instant now, to find it in the request.
        // Any other call's deadline is only needed if it does not answer on its first poll,
        // which comes at once: the clock is read then (see `Timer::poll_expired`).
        let mut deadline = None;
        if let Some(limit) = limit {
            if self.streamed.contains(request.uri().path()) {
                deadline = limit.from(Instant::now());
                if let Some(deadline) = deadline {
                    request.extensions_mut().insert(deadline);
                }
            }
        }
        Timer {
            limit,
            deadline,
            sleep: None,
        }
    }
}

/// How long a call may take, and whose limit that is.
#[derive(Debug, Clone, Copy)]
struct Limit {
    after: Duration,
    client: bool,
}

impl Limit {
    /// The deadline of a call that started at `start`; `None` if that is too far away to be
    /// represented (no deadline, in effect).
    fn from(self, start: Instant) -> Option<Deadline> {
        Some(Deadline {
            at: start.checked_add(self.after)?,
            client: self.client,
        })
    }
}

/// One call's deadline, as its response future waits. The clock is read and the timer armed
/// only if the call does not answer on its first poll, so a call answered at once (a cached
/// `getOrder`) costs neither.
#[derive(Debug)]
pub(crate) struct Timer {
    limit: Option<Limit>,
    deadline: Option<Deadline>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer {
    /// Called when the call's response future is pending: ready with `DEADLINE_EXCEEDED` once
    /// the deadline passes, pending until then (and forever without a deadline).
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Status> {
        if self.deadline.is_none() {
            // The first poll that waits: the call started a moment ago.
            self.deadline = self
                .limit
                .take()
                .and_then(|limit| limit.from(Instant::now()));
        }
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.at)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(deadline.exceeded())
    }
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
}
