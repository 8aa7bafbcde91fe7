//! `processOrders`, all of it: the stream of IDs in, orders batched by destination, each full
//! batch numbered from the database's shipment sequence and sent at once, the rest when the
//! client's stream ends.

use std::collections::{HashMap, HashSet};

use futures::Stream;
use order_api::pb::{CombinedShipment, Order};
use tonic::{Status, Streaming};
use tracing::info;

use crate::{
    error::{Echo, Error},
    metrics::Messages,
    store::Store,
};

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
) -> impl Stream<Item = Result<CombinedShipment, Status>> + Send + 'static {
    async_stream::try_stream! {
        let mut batcher = Batcher::new(batch_size);
        while let Some(id) = ids.message().await? {
            messages.received();
            let order = store.get(&id).await?;
            if let Some(full) = batcher.push(order)? {
                yield ship(&store, full, &subject).await?;
            }
        }
        for group in batcher.finish() {
            yield ship(&store, group, &subject).await?;
        }
    }
}

/// Numbers a group from the database's shipment sequence, so shipment IDs are unique across every
/// server sharing the database.
async fn ship(
    store: &Store,
    (destination, orders): Group,
    subject: &str,
) -> Result<CombinedShipment, Error> {
    let number = store.next_shipment().await?;
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
