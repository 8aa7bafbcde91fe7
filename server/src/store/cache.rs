//! A read cache for `getOrder`, for stores whose orders only this process can change.
//!
//! Never stale: a writer empties the cache right before its commit and again right after it, and
//! no reader fills it in between ([`ReadCache::begin_write`], [`ReadCache::end_write`]); a reader
//! fills it only if no write began or ended since it started reading the database (the
//! generation is unchanged), under the same lock. Hits take no lock at all.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

use order_api::pb::Order;
use prost::Message;
use quick_cache::{sync::Cache, Weighter};

/// Orders by ID, weighed by their encoded size, up to a byte budget.
pub(super) struct ReadCache {
    orders: Cache<String, Order, OrderBytes>,
    generation: AtomicU64,
    /// How many commits are under way (fills wait for none).
    fill_or_invalidate: Mutex<u32>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("orders", &self.orders.len())
            .field("bytes", &self.orders.weight())
            .finish()
    }
}

#[derive(Clone)]
struct OrderBytes;

impl Weighter<String, Order> for OrderBytes {
    fn weight(&self, id: &String, order: &Order) -> u64 {
        // Roughly what the entry costs in memory; never 0 (0 would never be evicted).
        (id.len() + order.encoded_len() + 64) as u64
    }
}

impl ReadCache {
    /// A cache of at most `bytes` of orders.
    pub(super) fn new(bytes: u64) -> Self {
        // quick_cache wants an estimate of the entry count; small orders are ~100 bytes.
        let estimated_items = usize::try_from(bytes / 256).unwrap_or(usize::MAX).max(16);
        Self {
            orders: Cache::with_weighter(estimated_items, bytes, OrderBytes),
            generation: AtomicU64::new(0),
            fill_or_invalidate: Mutex::new(0),
        }
    }

    pub(super) fn get(&self, id: &str) -> Option<Order> {
        self.orders.get(id)
    }

    /// Taken before reading the database on a miss.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches `order`, read from the database after [`Self::generation`] returned `generation`,
    /// unless a write has finished since.
    pub(super) fn fill(&self, order: &Order, generation: u64) {
        let committing = self.lock();
        if *committing == 0 && self.generation.load(Ordering::Acquire) == generation {
            self.orders.insert(order.id.clone(), order.clone());
        }
    }

    /// A write is about to commit: every order is forgotten, and none cached again until
    /// [`Self::end_write`].
    pub(super) fn begin_write(&self) {
        let mut committing = self.lock();
        *committing += 1;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.orders.clear();
    }

    /// The write's commit ended (either way): what was read during it is forgotten too.
    pub(super) fn end_write(&self) {
        let mut committing = self.lock();
        *committing = committing.saturating_sub(1);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.orders.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u32> {
        // The guarded section cannot panic half-way; a poisoned lock is still a lock.
        self.fill_or_invalidate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, item: &str) -> Order {
        Order {
            id: id.into(),
            items: vec![item.into()],
            ..Order::default()
        }
    }

    #[test]
    fn a_fill_that_raced_a_write_is_dropped() {
        let cache = ReadCache::new(1 << 20);
        cache.fill(&order("1", "old"), cache.generation());
        let before = cache.generation();
        // A write commits while this reader was reading the old value.
        cache.begin_write();
        assert!(
            cache.get("1").is_none(),
            "the cached copy outlived the commit's start"
        );
        cache.end_write();
        cache.fill(&order("1", "old"), before);
        assert!(cache.get("1").is_none(), "a stale order was cached");

        cache.fill(&order("1", "new"), cache.generation());
        assert_eq!(cache.get("1").unwrap().items, ["new"]);
    }

    #[test]
    fn nothing_is_cached_while_a_commit_is_under_way() {
        let cache = ReadCache::new(1 << 20);
        cache.begin_write();
        // Read during the commit: it may be the old or the new version.
        let during = cache.generation();
        cache.fill(&order("1", "old"), during);
        assert!(
            cache.get("1").is_none(),
            "cached while the commit was under way"
        );
        cache.end_write();
        cache.fill(&order("1", "old"), during);
        assert!(
            cache.get("1").is_none(),
            "a read from during the commit was cached after it"
        );
    }

    #[test]
    fn the_byte_budget_holds() {
        let cache = ReadCache::new(64 * 1024);
        let big = "x".repeat(1000);
        for i in 0..1000 {
            cache.fill(&order(&i.to_string(), &big), cache.generation());
        }
        assert!(cache.orders.weight() <= 64 * 1024);
        assert!(cache.orders.len() < 100);
    }
}
