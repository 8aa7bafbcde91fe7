//! What the edge ([`crate::grpc::edge`]) learns of a call and hands its service in the request's
//! extensions: who made it ([`Caller`], and the scopes a token may grant), when it must end
//! ([`Deadline`], which a response stream keeps to with [`until_deadline`]) and the counters of
//! its messages ([`Messages`]). Here, below both, so that the order service reads them without
//! reaching up into the edge's checks.

use std::sync::Arc;

use futures::{stream::BoxStream, Stream, StreamExt};
use prometheus::IntCounter;
use tokio::time::Instant;
use tonic::Status;

/// The scope that lets a caller read orders.
pub const READ_SCOPE: &str = "orders:read";
/// The scope that lets a caller change orders (and read them).
pub const WRITE_SCOPE: &str = "orders:write";

/// Who made a call, as its token says; in the request's extensions for the RPC's logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`, or `anonymous` for a public read. Shared with the cache of verified
    /// tokens: naming the caller of a call copies nothing.
    pub subject: Arc<str>,
}

/// When the call must be over, and whose limit that is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// The instant the call ends.
    pub at: Instant,
    /// The client's `grpc-timeout` (rather than the server's ceiling).
    pub client: bool,
}

impl Deadline {
    /// The status a call past this deadline ends with.
    pub(crate) fn exceeded(&self) -> Status {
        if self.client {
            Status::deadline_exceeded("the call's deadline (grpc-timeout) passed")
        } else {
            Status::deadline_exceeded(
                "the call ran for longer than this server allows (--max-call-duration)",
            )
        }
    }
}

/// Ends `stream` with `DEADLINE_EXCEEDED` once `deadline` passes; without a deadline, `stream` as
/// it is.
pub fn until_deadline<T: Send + 'static>(
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    deadline: Option<Deadline>,
) -> BoxStream<'static, Result<T, Status>> {
    let Some(deadline) = deadline else {
        return stream.boxed();
    };
    let sleep = Box::pin(tokio::time::sleep_until(deadline.at));
    futures::stream::unfold(Some((stream.boxed(), sleep)), move |state| async move {
        let (mut stream, mut sleep) = state?;
        tokio::select! {
            item = stream.next() => item.map(|item| (item, Some((stream, sleep)))),
            () = &mut sleep => Some((Err(deadline.exceeded()), None)),
        }
    })
    .boxed()
}

/// A method's message counters, which streaming RPCs find in their request's extensions and
/// count with as messages come and go. Without metrics (`--no-metrics`) they count nothing.
#[derive(Clone, Default)]
pub(crate) struct Messages(Option<(IntCounter, IntCounter)>);

impl Messages {
    /// Counting with `received` and `sent`.
    pub(crate) fn new(received: IntCounter, sent: IntCounter) -> Messages {
        Messages(Some((received, sent)))
    }

    /// The counters of the call `request` belongs to.
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Messages {
        request
            .extensions()
            .get::<Messages>()
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn received(&self) {
        if let Some((received, _)) = &self.0 {
            received.inc();
        }
    }

    pub(crate) fn sent(&self) {
        if let Some((_, sent)) = &self.0 {
            sent.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_deadline_ends_with_deadline_exceeded() {
        let endless = futures::stream::pending::<Result<u32, Status>>();
        let deadline = Deadline {
            at: Instant::now() + Duration::from_secs(1),
            client: true,
        };
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
        let deadline = Deadline {
            at: Instant::now() + Duration::from_secs(1),
            client: true,
        };
        let items: Vec<_> = until_deadline(items, Some(deadline)).collect().await;
        assert_eq!(
            items.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
