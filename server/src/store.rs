//! The order store: a cheap-to-clone handle to the orders, shared by every call.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock, RwLockReadGuard},
};

use order_api::pb::Order;

/// Shared, thread-safe order storage. Cloning gives another handle to the same orders.
///
/// The lock is a plain `std` lock held only for map operations, never across an `.await`.
#[derive(Debug, Clone, Default)]
pub struct Store {
    orders: Arc<RwLock<BTreeMap<String, Order>>>,
}

impl Store {
    /// A store holding the original tutorial's sample orders, 102 to 106.
    pub fn with_sample_data() -> Self {
        let store = Self::default();
        {
            let mut orders = store.write();
            for order in sample_orders() {
                orders.insert(order.id.clone(), order);
            }
        }
        store
    }

    /// The order with this ID, if there is one.
    pub fn get(&self, id: &str) -> Option<Order> {
        self.read().get(id).cloned()
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Order>> {
        // A poisoned lock only means another call panicked mid-operation; the map itself is
        // always left whole by our operations, so keep serving.
        self.orders.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Order>> {
        self.orders.write().unwrap_or_else(|e| e.into_inner())
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

    #[test]
    fn sample_data_is_the_tutorials() {
        let store = Store::with_sample_data();
        let order = store.get("106").expect("106 is a sample order");
        assert_eq!(order.items, ["Amazon Echo", "Apple iPhone XS"]);
        assert_eq!(order.destination, "Mountain View, CA");
        assert_eq!(order.price, 300.0);
        assert!(store.get("101").is_none());
        assert!(store.get("107").is_none());
    }
}
