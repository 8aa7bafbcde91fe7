//! What every client stream of the order service is held to, `processOrders` included: at most
//! [`MAX_ORDERS_PER_CALL`] messages, each within `--stream-idle-timeout` of the last.

use std::time::Duration;

use crate::error::Error;

/// Most orders (or IDs) one `updateOrders`, `addOrders` or `processOrders` call may carry.
pub const MAX_ORDERS_PER_CALL: usize = 10_000;

/// The client stream's next message (`next`), or [`Error::Idle`] if the client sends nothing for
/// `idle` (`--stream-idle-timeout`).
pub(crate) async fn next_within<F: std::future::Future>(
    idle: Duration,
    next: F,
) -> Result<F::Output, Error> {
    tokio::time::timeout(idle, next)
        .await
        .map_err(|_| Error::Idle(idle))
}
