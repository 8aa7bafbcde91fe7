//! `processOrders`, all of it: the stream of IDs in, orders batched by destination, each full
//! batch numbered from the database's shipment sequence and sent at once, the rest when the
//! client's stream ends. At most [`MAX_ORDERS_PER_CALL`] IDs a call; a client
//! silent for `--stream-idle-timeout` ends it. With an idempotency key, a retry gets the same
//! shipment numbers ([`Keyed`]).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use futures::Stream;
use order_api::pb::{CombinedShipment, Order};
use tonic::{Status, Streaming};
use tracing::info;

use crate::{
    call::Messages,
    error::{Echo, Error},
    orders::client_stream::{next_within, MAX_ORDERS_PER_CALL},
    store::{Claim, Digest, Key, Store, Stored},
};

/// The RPC, as idempotency keys record it.
const METHOD: &str = "processOrders";

/// A `processOrders` call's idempotency key: its only writes are the shipment numbers it takes,
/// so what is stored with the key is the numbers, in order. The same request again with the key
/// gets the same shipments with the same numbers; another request, `FAILED_PRECONDITION`.
pub(crate) struct Keyed {
    key: Key,
    _claim: Claim,
    /// When this is a retry: what the first call with this key stored, and its numbers, in the
    /// order they are given again.
    replay: Option<(Stored, VecDeque<i64>)>,
}

impl Keyed {
    /// The key of a call, claimed, with what was stored under it, if anything.
    pub(crate) async fn of(store: &Store, key: Option<Key>) -> Result<Option<Self>, Error> {
        let Some(key) = key else {
            return Ok(None);
        };
        let claim = store.claim(Some(&key))?;
        let replay = match store.stored_answer(&key).await? {
            Some(stored) if stored.method == METHOD => {
                let numbers = stored
                    .answer
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .filter_map(|n| n.parse().ok())
                    .collect();
                Some((stored, numbers))
            }
            Some(stored) => {
                return Err(Error::KeyReused {
                    key: key.key,
                    method: stored.method,
                })
            }
            None => None,
        };
        Ok(Some(Self {
            key,
            _claim: claim,
            replay,
        }))
    }
}

/// What a shipment's `status` says once it is assembled.
pub const SHIPMENT_STATUS: &str = "Processed";

/// The shipments for the order IDs of `ids`, in batches of `batch_size` per destination. An
/// unknown or repeated ID ends the stream with its error. No task is spawned: when the client
/// goes away, the response and with it this stream are dropped, and the work stops.
pub(crate) fn shipments(
    store: Store,
    batch_size: usize,
    mut ids: Streaming<String>,
    subject: String,
    messages: Messages,
    idle: Duration,
    keyed: Option<Keyed>,
) -> impl Stream<Item = Result<CombinedShipment, Status>> + Send + 'static {
    async_stream::try_stream! {
        let mut batcher = Batcher::new(batch_size);
        let mut numbers = Numbers::new(keyed);
        loop {
            let Some(id) = next_within(idle, ids.message()).await?? else { break };
            messages.received();
            numbers.digest(&id);
            if numbers.ids == MAX_ORDERS_PER_CALL {
                Err(Error::TooMany(MAX_ORDERS_PER_CALL))?;
            }
            numbers.ids += 1;
            let order = store.get(&id).await?;
            if let Some(full) = batcher.push(order)? {
                yield ship(&store, &mut numbers, full, &subject).await?;
            }
        }
        for group in batcher.finish() {
            yield ship(&store, &mut numbers, group, &subject).await?;
        }
        numbers.finish(&store).await?;
    }
}

/// Where a call's shipment numbers come from: the database's sequence, or the numbers stored
/// with its idempotency key.
struct Numbers {
    keyed: Option<(Keyed, Digest)>,
    /// The numbers this call took, to store with its key.
    taken: Vec<i64>,
    /// How many IDs came.
    ids: usize,
}

impl Numbers {
    fn new(keyed: Option<Keyed>) -> Self {
        Self {
            keyed: keyed.map(|keyed| (keyed, Digest::new(METHOD))),
            taken: Vec::new(),
            ids: 0,
        }
    }

    fn digest(&mut self, id: &str) {
        if let Some((_, digest)) = &mut self.keyed {
            digest.update_bytes(id.as_bytes());
        }
    }

    /// The next shipment number.
    async fn next(&mut self, store: &Store) -> Result<i64, Error> {
        if let Some((
            Keyed {
                replay: Some((_, stored)),
                key,
                ..
            },
            _,
        )) = &mut self.keyed
        {
            // A retry: the first call's numbers, in order; more shipments than it had is
            // another request.
            return stored.pop_front().ok_or_else(|| Error::KeyReused {
                key: key.key.clone(),
                method: METHOD.to_owned(),
            });
        }
        let number = store.next_shipment().await?;
        if self.keyed.is_some() {
            self.taken.push(number);
        }
        Ok(number)
    }

    /// At the end of the call: stores the numbers with the key, or checks that a retry was the
    /// same request.
    async fn finish(self, store: &Store) -> Result<(), Error> {
        let Some((keyed, digest)) = self.keyed else {
            return Ok(());
        };
        let record = keyed.key.record(METHOD, digest);
        match keyed.replay {
            // A retry: the same request, or another one under the same key.
            Some((stored, _)) => record.replay(Some(stored)).map(drop),
            None => {
                let answer = self
                    .taken
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                store.remember(record, answer).await
            }
        }
    }
}

/// Numbers a group from the database's shipment sequence, so shipment IDs are unique across every
/// server sharing the database.
async fn ship(
    store: &Store,
    numbers: &mut Numbers,
    (destination, orders): Group,
    subject: &str,
) -> Result<CombinedShipment, Error> {
    let number = numbers.next(store).await?;
    info!(shipment = number, destination = %Echo(&destination), orders = orders.len(), sub = %Echo(subject), "shipment assembled");
    Ok(CombinedShipment {
        id: format!("shipment-{number}"),
        status: SHIPMENT_STATUS.to_owned(),
        orders_list: orders,
    })
}

/// Collects the orders of one `processOrders` call into per-destination groups.
#[derive(Debug)]
struct Batcher {
    batch_size: usize,
    /// Groups in order of their destination's first appearance; a group is emptied when shipped.
    groups: Vec<(String, Vec<Order>)>,
    by_destination: HashMap<String, usize>,
    seen: HashSet<String>,
}

/// The orders of one shipment, all bound for `destination`.
type Group = (String, Vec<Order>);

impl Batcher {
    /// A batcher that ships a group as soon as it holds `batch_size` orders.
    fn new(batch_size: usize) -> Self {
        Self {
            batch_size: batch_size.max(1),
            groups: Vec::new(),
            by_destination: HashMap::new(),
            seen: HashSet::new(),
        }
    }

    /// Adds an order. Returns its group when that group reaches the batch size. The same order
    /// twice in one call is refused, so every order is in exactly one shipment.
    fn push(&mut self, order: Order) -> Result<Option<Group>, Error> {
        if !self.seen.insert(order.id.clone()) {
            return Err(Error::Duplicate(order.id));
        }
        let index = match self.by_destination.get(&order.destination) {
            Some(&index) => index,
            None => {
                self.groups.push((order.destination.clone(), Vec::new()));
                let index = self.groups.len() - 1;
                self.by_destination.insert(order.destination.clone(), index);
                index
            }
        };
        let (destination, orders) = &mut self.groups[index];
        orders.push(order);
        if orders.len() >= self.batch_size {
            Ok(Some((destination.clone(), std::mem::take(orders))))
        } else {
            Ok(None)
        }
    }

    /// The groups not shipped yet, in order of their destination's first appearance.
    fn finish(self) -> Vec<Group> {
        self.groups
            .into_iter()
            .filter(|(_, orders)| !orders.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sample_orders;

    fn ids(group: &Group) -> Vec<&str> {
        group.1.iter().map(|o| o.id.as_str()).collect()
    }

    #[test]
    fn a_full_group_ships_at_once_and_the_rest_at_the_end() {
        let mut batcher = Batcher::new(3);
        let mut shipped = Vec::new();
        for order in sample_orders() {
            shipped.extend(batcher.push(order).unwrap());
        }
        // 102, 104 and 106 go to Mountain View: full after 106.
        assert_eq!(shipped.len(), 1);
        assert_eq!(shipped[0].0, "Mountain View, CA");
        assert_eq!(ids(&shipped[0]), ["102", "104", "106"]);
        let rest = batcher.finish();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0, "San Jose, CA");
        assert_eq!(ids(&rest[0]), ["103", "105"]);
    }

    #[test]
    fn batch_size_one_ships_every_order_alone() {
        let mut batcher = Batcher::new(1);
        for order in sample_orders() {
            let group = batcher
                .push(order.clone())
                .unwrap()
                .expect("shipped at once");
            assert_eq!(ids(&group), [order.id.as_str()]);
        }
        assert!(batcher.finish().is_empty());
    }

    #[test]
    fn the_same_order_twice_is_refused() {
        let mut batcher = Batcher::new(3);
        let order = sample_orders().remove(0);
        batcher.push(order.clone()).unwrap();
        assert!(matches!(batcher.push(order), Err(Error::Duplicate(id)) if id == "102"));
    }
}
