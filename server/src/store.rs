//! The order store: a cheap-to-clone handle to the orders, shared by every call.

use std::{
    cmp::Ordering,
    collections::BTreeMap,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use order_api::pb::Order;

use crate::{error::Error, order::ValidOrder};

/// Shared, thread-safe order storage. Cloning gives another handle to the same orders.
///
/// One `std` lock guards the whole map, so every call sees one consistent state; it is held only
/// for map operations, never across an `.await`.
#[derive(Debug, Clone, Default)]
pub struct Store {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    orders: BTreeMap<OrderKey, Order>,
    /// The next ID `add` tries when it assigns one.
    next_id: u64,
}

/// Orders are kept sorted by ID length, then ID, so numeric IDs come in numeric order ("99" before
/// "102") and any ID has one stable place.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OrderKey(String);

impl Ord for OrderKey {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.0.len(), &self.0).cmp(&(other.0.len(), &other.0))
    }
}

impl PartialOrd for OrderKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Store {
    /// A store holding the original tutorial's sample orders, 102 to 106.
    pub fn with_sample_data() -> Self {
        let store = Self::default();
        for order in sample_orders() {
            let order = ValidOrder::try_from(order).expect("the sample orders are valid");
            store.add(order).expect("the sample IDs are distinct");
        }
        store
    }

    /// The order with this ID.
    pub fn get(&self, id: &str) -> Result<Order, Error> {
        self.read()
            .orders
            .get(&OrderKey(id.to_owned()))
            .cloned()
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    /// Stores a new order and returns its ID. An empty ID gets the next free number; an ID that
    /// exists already is refused and the stored order left as it was.
    pub fn add(&self, order: ValidOrder) -> Result<String, Error> {
        let mut inner = self.write();
        let id = if order.id().is_empty() {
            loop {
                inner.next_id += 1;
                let candidate = inner.next_id.to_string();
                if !inner.orders.contains_key(&OrderKey(candidate.clone())) {
                    break candidate;
                }
            }
        } else {
            order.id().to_owned()
        };
        let key = OrderKey(id.clone());
        if inner.orders.contains_key(&key) {
            return Err(Error::AlreadyExists(id));
        }
        // Assigned IDs continue after the largest numeric ID seen, as the sample data suggests.
        if let Ok(number) = id.parse::<u64>() {
            inner.next_id = inner.next_id.max(number);
        }
        inner
            .orders
            .insert(key, order.with_id(id.clone()).into_inner());
        Ok(id)
    }

    /// Every order with an item containing `text`, ignoring case, in ID order.
    pub fn search(&self, text: &str) -> Vec<Order> {
        let needle = text.to_lowercase();
        self.read()
            .orders
            .values()
            .filter(|order| {
                order
                    .items
                    .iter()
                    .any(|item| item.to_lowercase().contains(&needle))
            })
            .cloned()
            .collect()
    }

    /// Replaces each of these orders, all or nothing: if any ID is unknown, nothing changes.
    /// Returns the updated IDs in the order given.
    pub fn update_all(&self, orders: Vec<ValidOrder>) -> Result<Vec<String>, Error> {
        let mut inner = self.write();
        if let Some(unknown) = orders
            .iter()
            .find(|order| !inner.orders.contains_key(&OrderKey(order.id().to_owned())))
        {
            return Err(Error::NotFound(unknown.id().to_owned()));
        }
        let ids = orders.iter().map(|order| order.id().to_owned()).collect();
        for order in orders {
            let order = order.into_inner();
            inner.orders.insert(OrderKey(order.id.clone()), order);
        }
        Ok(ids)
    }

    /// How many orders there are.
    pub fn len(&self) -> usize {
        self.read().orders.len()
    }

    /// True when there are no orders.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A poisoned lock only means another call panicked mid-operation; every operation here
        // leaves the map whole, so keep serving.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sample orders of the original tutorial (its `initSampleData`).
pub fn sample_orders() -> Vec<Order> {
    let order = |id: &str, items: &[&str], destination: &str, price: f32| Order {
        id: id.into(),
        items: items.iter().map(|&item| item.into()).collect(),
        description: String::new(),
        price,
        destination: destination.into(),
    };
    vec![
        order(
            "102",
            &["Google Pixel 3A", "Mac Book Pro"],
            "Mountain View, CA",
            1800.0,
        ),
        order("103", &["Apple Watch S4"], "San Jose, CA", 400.0),
        order(
            "104",
            &["Google Home Mini", "Google Nest Hub"],
            "Mountain View, CA",
            400.0,
        ),
        order("105", &["Amazon Echo"], "San Jose, CA", 30.0),
        order(
            "106",
            &["Amazon Echo", "Apple iPhone XS"],
            "Mountain View, CA",
            300.0,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_order(id: &str, item: &str) -> ValidOrder {
        ValidOrder::try_from(Order {
            id: id.into(),
            items: vec![item.into()],
            description: String::new(),
            price: 10.0,
            destination: "Austin, TX".into(),
        })
        .unwrap()
    }

    #[test]
    fn sample_data_is_the_tutorials() {
        let store = Store::with_sample_data();
        let order = store.get("106").expect("106 is a sample order");
        assert_eq!(order.items, ["Amazon Echo", "Apple iPhone XS"]);
        assert_eq!(order.destination, "Mountain View, CA");
        assert_eq!(order.price, 300.0);
        assert!(store.get("101").is_err());
        assert!(store.get("107").is_err());
        assert_eq!(store.len(), 5);
    }

    #[test]
    fn assigned_ids_follow_the_largest_and_skip_taken_ones() {
        let store = Store::with_sample_data();
        assert_eq!(store.add(new_order("", "a")).unwrap(), "107");
        store.add(new_order("108", "b")).unwrap();
        assert_eq!(store.add(new_order("", "c")).unwrap(), "109");
        assert_eq!(store.get("109").unwrap().id, "109");
    }

    #[test]
    fn an_existing_id_is_refused_and_left_untouched() {
        let store = Store::with_sample_data();
        let err = store.add(new_order("106", "Other")).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(id) if id == "106"));
        assert_eq!(store.get("106").unwrap().items[1], "Apple iPhone XS");
    }

    #[test]
    fn search_ignores_case_and_keeps_id_order() {
        let store = Store::with_sample_data();
        store.add(new_order("99", "google glass")).unwrap();
        let ids: Vec<_> = store.search("GOOGLE").into_iter().map(|o| o.id).collect();
        assert_eq!(ids, ["99", "102", "104"]);
        assert!(store.search("no such thing").is_empty());
    }

    #[test]
    fn update_is_all_or_nothing() {
        let store = Store::with_sample_data();
        let err = store
            .update_all(vec![new_order("102", "changed"), new_order("777", "x")])
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(id) if id == "777"));
        assert_eq!(store.get("102").unwrap().items[0], "Google Pixel 3A");

        let ids = store
            .update_all(vec![new_order("102", "changed"), new_order("103", "too")])
            .unwrap();
        assert_eq!(ids, ["102", "103"]);
        assert_eq!(store.get("102").unwrap().items, ["changed"]);
    }

    #[test]
    fn concurrent_adds_get_distinct_ids() {
        let store = Store::with_sample_data();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|_| store.add(new_order("", "x")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 400);
        assert_eq!(store.len(), 405);
    }
}
