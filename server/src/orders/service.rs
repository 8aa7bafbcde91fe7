//! The `OrderManagement` gRPC service: each RPC converts its request (validating it), acts on the
//! [`Store`] and converts the result back.

use std::{num::NonZeroUsize, time::Duration};

use futures::{stream::BoxStream, StreamExt, TryStreamExt};
use order_api::pb::{order_management_server::OrderManagement, CombinedShipment, Order};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, instrument};

use crate::{
    call::{until_deadline, Caller, Deadline, Messages},
    error::{Echo, Error, FieldViolation},
    order::ValidOrder,
    orders::client_stream::{next_within, MAX_ORDERS_PER_CALL},
    orders::process,
    store::{Key, OrderStream, Store, MAX_KEY_CHARS},
    streams::OpenStreams,
};

/// The implementation of `OrderManagement` behind both native gRPC and gRPC-Web. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OrderService {
    store: Store,
    batch_size: NonZeroUsize,
    open_streams: OpenStreams,
    stream_idle_timeout: Duration,
}

/// How long a client stream may send nothing before it fails, unless configured otherwise.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The metadata (HTTP header) a write's idempotency key comes in.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

impl OrderService {
    /// A service answering from `store`; `processOrders` ships a destination's orders in batches
    /// of `batch_size`.
    pub fn new(store: Store, batch_size: NonZeroUsize) -> Self {
        Self {
            store,
            batch_size,
            open_streams: OpenStreams::default(),
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
        }
    }

    /// The same service, failing a client stream that sends nothing for `timeout`
    /// (`--stream-idle-timeout`).
    pub fn with_stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.stream_idle_timeout = timeout;
        self
    }

    /// The number of response streams open right now, to watch.
    pub fn open_streams(&self) -> tokio::sync::watch::Receiver<usize> {
        self.open_streams.watch()
    }

    /// The count of open response streams, for the metrics.
    pub(crate) fn stream_count(&self) -> OpenStreams {
        self.open_streams.clone()
    }

    /// The store the service answers from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// `stream`, counted while open and ended at the client's deadline.
    fn respond<T: Send + 'static>(
        &self,
        stream: impl futures::Stream<Item = Result<T, Status>> + Send + 'static,
        deadline: Option<Deadline>,
    ) -> Response<BoxStream<'static, Result<T, Status>>> {
        Response::new(until_deadline(self.open_streams.track(stream), deadline))
    }
}

/// Who made the call, as its token says (`anonymous` with authentication off).
fn subject<T>(request: &Request<T>) -> String {
    request.extensions().get::<Caller>().map_or_else(
        || "anonymous".to_owned(),
        |caller| caller.subject.to_string(),
    )
}

/// The call's idempotency key, if it sent one; a value that is no key is refused.
fn idempotency_key<T>(request: &Request<T>) -> Result<Option<Key>, Error> {
    let Some(value) = request.metadata().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| Error::BadKey(MAX_KEY_CHARS))?;
    Key::new(subject(request), value).map(Some)
}

/// The client's deadline, where it sent one.
fn deadline<T>(request: &Request<T>) -> Option<Deadline> {
    request.extensions().get::<Deadline>().copied()
}

/// Most field violations one client stream's answer carries, whatever the number of bad orders:
/// the first [`REPORTED_VIOLATIONS`](crate::error::REPORTED_VIOLATIONS) in full, the rest counted.
pub const MAX_STREAM_VIOLATIONS: usize = 1_000;

/// The orders of a client stream, each counted and checked by `check` as it arrives, at most
/// [`MAX_ORDERS_PER_CALL`]. A bad order's fields are named after its place in the stream
/// (`orders[3].price`), so the client knows which one it was. After a bad order the rest are
/// still read and checked, so that one answer names every bad order (and a browser, which sends
/// its whole upload before it reads the answer, gets that answer): then the stream fails. A
/// client silent for `idle` fails it too.
fn checked(
    request: Request<Streaming<Order>>,
    check: fn(Order) -> Result<ValidOrder, Error>,
    idle: Duration,
) -> OrderStream<'static> {
    let messages = Messages::of(&request);
    let mut orders = request.into_inner();
    Box::pin(async_stream::stream! {
        let mut invalid: Option<(String, Vec<FieldViolation>)> = None;
        let mut index = 0;
        loop {
            let order = match next_within(idle, orders.next()).await {
                Ok(Some(order)) => order,
                Ok(None) => break,
                Err(idle) => {
                    yield Err(idle);
                    return;
                }
            };
            let order = match order {
                Ok(order) => order,
                Err(status) => {
                    yield Err(Error::Client(status));
                    return;
                }
            };
            messages.received();
            if index == MAX_ORDERS_PER_CALL {
                yield Err(Error::TooMany(MAX_ORDERS_PER_CALL));
                return;
            }
            match check(order).map_err(|error| error.at(index)) {
                Ok(order) if invalid.is_none() => yield Ok(order),
                // Nothing more is written once one order is bad.
                Ok(_) => {}
                Err(Error::InvalidOrder { id, violations }) => {
                    let (_, all) = invalid.get_or_insert_with(|| (id, Vec::new()));
                    let room = MAX_STREAM_VIOLATIONS.saturating_sub(all.len());
                    all.extend(violations.into_iter().take(room));
                }
                Err(other) => {
                    yield Err(other);
                    return;
                }
            }
            index += 1;
        }
        if let Some((id, violations)) = invalid {
            yield Err(Error::InvalidOrder { id, violations });
        }
    })
}

// The stream types are named after the tutorial's lowerCamel RPC names.
#[allow(non_camel_case_types)]
#[tonic::async_trait]
impl OrderManagement for OrderService {
    #[instrument(level = "debug", skip_all, fields(order_id = %Echo(&request.get_ref().id), sub = %Echo(&subject(&request))))]
    async fn add_order(&self, request: Request<Order>) -> Result<Response<String>, Status> {
        let sub = subject(&request);
        let key = idempotency_key(&request)?;
        let order = ValidOrder::try_from(request.into_inner())?;
        let id = self.store.add(order, key).await?;
        info!(%id, sub = %Echo(&sub), "order added");
        Ok(Response::new(id))
    }

    #[instrument(level = "debug", skip_all, fields(order_id = %Echo(request.get_ref()), sub = %Echo(&subject(&request))))]
    async fn get_order(&self, request: Request<String>) -> Result<Response<Order>, Status> {
        let id = request.into_inner();
        if id.is_empty() {
            return Err(Error::Empty("order id").into());
        }
        let order = self.store.get(&id).await;
        debug!(found = order.is_ok(), "getOrder");
        Ok(Response::new(order?))
    }

    type searchOrdersStream = BoxStream<'static, Result<Order, Status>>;

    #[instrument(level = "debug", skip_all, fields(text = %Echo(request.get_ref()), sub = %Echo(&subject(&request))))]
    async fn search_orders(
        &self,
        request: Request<String>,
    ) -> Result<Response<Self::searchOrdersStream>, Status> {
        let deadline = deadline(&request);
        let messages = Messages::of(&request);
        // Read from the database a page at a time, as the client reads.
        let found = self
            .store
            .search(request.get_ref())
            .map_err(Status::from)
            .inspect_ok(move |_| messages.sent());
        Ok(self.respond(found, deadline))
    }

    #[instrument(level = "debug", skip_all, fields(sub = %Echo(&subject(&request))))]
    async fn update_orders(
        &self,
        request: Request<Streaming<Order>>,
    ) -> Result<Response<String>, Status> {
        let sub = subject(&request);
        let key = idempotency_key(&request)?;
        // Each order is checked as it arrives; they are applied in one transaction once the
        // stream has ended well: one bad order and nothing is applied.
        let orders = checked(request, ValidOrder::existing, self.stream_idle_timeout);
        let updated = self.store.update_all(orders, key).await?;
        info!(%updated, sub = %Echo(&sub), "orders updated");
        Ok(Response::new(updated.to_string()))
    }

    #[instrument(level = "debug", skip_all, fields(sub = %Echo(&subject(&request))))]
    async fn add_orders(
        &self,
        request: Request<Streaming<Order>>,
    ) -> Result<Response<String>, Status> {
        let sub = subject(&request);
        let key = idempotency_key(&request)?;
        // As for updateOrders: checked as they arrive, all or nothing.
        let orders = checked(request, ValidOrder::try_from, self.stream_idle_timeout);
        let added = self.store.add_all(orders, key).await?;
        info!(%added, sub = %Echo(&sub), "orders added");
        Ok(Response::new(added.to_string()))
    }

    type processOrdersStream = BoxStream<'static, Result<CombinedShipment, Status>>;

    #[instrument(level = "debug", skip_all, fields(sub = %Echo(&subject(&request))))]
    async fn process_orders(
        &self,
        request: Request<Streaming<String>>,
    ) -> Result<Response<Self::processOrdersStream>, Status> {
        let deadline = deadline(&request);
        let sub = subject(&request);
        let messages = Messages::of(&request);
        let keyed = process::Keyed::of(&self.store, idempotency_key(&request)?).await?;
        let shipments = process::shipments(
            self.store.clone(),
            self.batch_size.get(),
            request.into_inner(),
            sub,
            messages.clone(),
            self.stream_idle_timeout,
            keyed,
        )
        .inspect_ok(move |_| messages.sent());
        Ok(self.respond(shipments, deadline))
    }
}
