//! The order store: a cheap-to-clone handle to the orders in a database, shared by every call.
//!
//! One interface ([`Store`]), two implementations chosen by the database URL at start:
//! - `sqlite:PATH`: an embedded SQLite file ([`sqlite`]), created when missing. One server owns
//!   the file (a lock file keeps out a second one), which lets it keep a read cache that can never
//!   be stale: every write goes through this process.
//! - `postgres://…`: PostgreSQL ([`postgres`]), shared by any number of servers. No cache: another
//!   server may change any order at any time.
//!
//! Both apply the schema from migrations embedded in the binary, give a new database the
//! tutorial's sample orders, assign IDs from a database sequence, make every acknowledged write
//! durable and run `updateOrders` and `addOrders` each as one transaction.

mod cache;
mod postgres;
mod sqlite;

use std::{fmt, future::Future, sync::Arc, time::Duration};

use futures::stream::BoxStream;
use order_api::pb::Order;

use crate::{error::Error, order::ValidOrder};

use self::cache::ReadCache;

/// How many orders `search` reads from the database at a time: what it holds in memory, however
/// many orders there are.
pub const SEARCH_PAGE: i64 = 64;

/// How many written IDs the answer of `updateOrders` and `addOrders` names; the rest are counted.
pub const SUMMARY_IDS: usize = 20;

/// What [`Store::open`] needs to know.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite:PATH` or `postgres://USER@HOST:PORT/DB`.
    pub url: String,
    /// Give a new database the tutorial's sample orders.
    pub sample_data: bool,
    /// How long one database operation may take, connecting included, before the call gets
    /// `UNAVAILABLE`.
    pub timeout: Duration,
    /// Most connections the server opens to the database.
    pub max_connections: u32,
    /// Bytes of orders the read cache may hold (SQLite only); 0 turns it off.
    pub cache_bytes: u64,
}

impl StoreOptions {
    /// Options for `url` with the server's defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            sample_data: true,
            timeout: Duration::from_secs(5),
            max_connections: 8,
            cache_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Why the store could not be opened. Each names the database (without its password).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL names no database this server supports.
    #[error("{0:?} is not a database URL this server supports: use sqlite:PATH (e.g. sqlite:data/orders.db) or postgres://USER@HOST:PORT/DB")]
    Scheme(String),
    /// The URL could not be parsed.
    #[error("{url} is not a valid database URL: {source}")]
    Url {
        /// The URL, password hidden.
        url: String,
        /// What the driver said.
        source: sqlx::Error,
    },
    /// Another server has the SQLite file open.
    #[error("{url} is in use by another order-server (see {lock}); SQLite serves one server, share a PostgreSQL database to run several")]
    Locked {
        /// The URL.
        url: String,
        /// The lock file.
        lock: String,
    },
    /// A file or folder for the SQLite database could not be made.
    #[error("cannot create {path}: {source}")]
    Io {
        /// What could not be made.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The database could not be reached or opened.
    #[error("cannot open the database {url}: {source}")]
    Connect {
        /// The URL, password hidden.
        url: String,
        /// What the driver said.
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("cannot apply the schema migrations to {url}: {source}")]
    Migrate {
        /// The URL, password hidden.
        url: String,
        /// What the migrator said.
        source: sqlx::migrate::MigrateError,
    },
}

/// What `add` did.
#[derive(Debug)]
enum Added {
    /// Stored under this ID.
    Id(String),
    /// The order's own ID is taken; nothing was stored.
    Taken,
}

/// What `updateOrders` or `addOrders` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `"updated"` or `"added"`.
    verb: &'static str,
    /// How many orders were written.
    pub count: usize,
    /// The first [`SUMMARY_IDS`] of their IDs, in the order the client sent them.
    pub first_ids: Vec<String>,
}

impl Written {
    /// Nothing updated yet.
    pub fn updated() -> Self {
        Self::new("updated")
    }

    /// Nothing added yet.
    pub fn added() -> Self {
        Self::new("added")
    }

    /// `count` orders added, the first of them `first_ids`.
    pub(crate) fn added_summary(count: usize, first_ids: Vec<String>) -> Self {
        Self {
            verb: "added",
            count,
            first_ids,
        }
    }

    fn new(verb: &'static str) -> Self {
        Self {
            verb,
            count: 0,
            first_ids: Vec::new(),
        }
    }

    fn record(&mut self, id: &str) {
        self.count += 1;
        if self.first_ids.len() < SUMMARY_IDS {
            self.first_ids.push(id.to_owned());
        }
    }
}

impl fmt::Display for Written {
    /// `updated 2 orders: 102, 103`, or `… and N more` past [`SUMMARY_IDS`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = self.verb;
        match self.count {
            1 => write!(f, "{verb} 1 order: ")?,
            n => write!(f, "{verb} {n} orders: ")?,
        }
        write!(f, "{}", self.first_ids.join(", "))?;
        let rest = self.count - self.first_ids.len();
        if rest > 0 {
            write!(f, " and {rest} more")?;
        }
        Ok(())
    }
}

/// The orders `updateOrders` or `addOrders` writes, validated as they arrive.
pub type OrderStream<'a> = BoxStream<'a, Result<ValidOrder, Error>>;

/// One storage engine. Every method is one short piece of work on the database.
#[tonic::async_trait]
trait Backend: Send + Sync + fmt::Debug {
    /// The order with this ID, if any.
    async fn get(&self, id: &str) -> Result<Option<Order>, Error>;
    /// Stores `order` under its own ID, or under the next number of the ID sequence (skipping
    /// taken ones) when it has none.
    async fn add(&self, order: Order) -> Result<Added, Error>;
    /// Up to `limit` orders after `after` in ID order ("" for the first page).
    async fn page(&self, after: &str, limit: i64) -> Result<Vec<Order>, Error>;
    /// Replaces the orders of `orders`, all or nothing, in one transaction. Each database step
    /// is bounded by `timeout`; waiting for the client's next order is not.
    async fn update_all(
        &self,
        orders: OrderStream<'_>,
        timeout: Duration,
    ) -> Result<Written, Error>;
    /// Stores the new orders of `orders`, all or nothing, in one transaction: an ID taken
    /// (before or earlier in the stream) fails it with `AlreadyExists`. Orders without an ID are
    /// numbered as by `add`. Each database step is bounded by `timeout`.
    async fn add_all(&self, orders: OrderStream<'_>, timeout: Duration) -> Result<Written, Error>;
    /// The next number of the shipment ID sequence.
    async fn next_shipment(&self) -> Result<i64, Error>;
    /// Succeeds when the database answers.
    async fn ping(&self) -> Result<(), Error>;
    /// How the connection pool is used right now.
    fn pool_use(&self) -> PoolUse;
}

/// How a store's connection pool is used, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUse {
    /// Connections open, idle or in use.
    pub open: u32,
    /// Open connections nobody is using.
    pub idle: u32,
    /// Most connections the pool opens (`--database-connections`).
    pub max: u32,
}

impl PoolUse {
    pub(crate) fn of<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Self {
        Self {
            open: pool.size(),
            idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
            max: pool.options().get_max_connections(),
        }
    }
}

/// Shared order storage. Cloning gives another handle to the same database.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Only where no other process can change the orders (SQLite).
    cache: Option<Arc<ReadCache>>,
    timeout: Duration,
    /// What the log may say about the database: the URL without its password.
    name: Arc<str>,
}

impl Store {
    /// Opens (creating it if needed) the database `options.url` names, brings its schema up to
    /// date and, if it is new, stores the sample orders.
    pub async fn open(options: &StoreOptions) -> Result<Self, OpenError> {
        let name: Arc<str> = redact(&options.url).into();
        let (backend, cache): (Arc<dyn Backend>, _) = if options.url.starts_with("sqlite:") {
            let cache =
                (options.cache_bytes > 0).then(|| Arc::new(ReadCache::new(options.cache_bytes)));
            (Arc::new(sqlite::Sqlite::open(options).await?), cache)
        } else if options.url.starts_with("postgres://") || options.url.starts_with("postgresql://")
        {
            (Arc::new(postgres::Postgres::open(options).await?), None)
        } else {
            return Err(OpenError::Scheme(name.to_string()));
        };
        Ok(Self {
            backend,
            cache,
            timeout: options.timeout,
            name,
        })
    }

    /// The database's URL without its password, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The order with this ID.
    pub async fn get(&self, id: &str) -> Result<Order, Error> {
        if let Some(order) = self.cache.as_ref().and_then(|cache| cache.get(id)) {
            return Ok(order);
        }
        // Taken before the read: a fill after a write that finished meanwhile is dropped.
        let generation = self.cache.as_ref().map(|cache| cache.generation());
        let order = self
            .bounded(self.backend.get(id))
            .await?
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        if let (Some(cache), Some(generation)) = (&self.cache, generation) {
            cache.fill(&order, generation);
        }
        Ok(order)
    }

    /// Stores a new order and returns its ID. An empty ID gets the next number of the database's
    /// sequence (unique across every server sharing the database); an ID that exists already is
    /// refused and the stored order left as it was.
    pub async fn add(&self, order: ValidOrder) -> Result<String, Error> {
        let order = order.into_inner();
        let explicit = order.id.clone();
        match self.bounded(self.backend.add(order)).await? {
            Added::Id(id) => Ok(id),
            Added::Taken => Err(Error::AlreadyExists(explicit)),
        }
    }

    /// Every order with an item containing `text`, ignoring case, in ID order, read from the
    /// database a page at a time as the stream is polled: a client that does not read holds one
    /// page, never a copy of the store.
    pub fn search(&self, text: &str) -> BoxStream<'static, Result<Order, Error>> {
        let needle = text.to_lowercase();
        let store = self.clone();
        Box::pin(async_stream::try_stream! {
            let mut after = String::new();
            loop {
                let page = store.bounded(store.backend.page(&after, SEARCH_PAGE)).await?;
                let last_page = (page.len() as i64) < SEARCH_PAGE;
                if let Some(last) = page.last() {
                    after.clone_from(&last.id);
                }
                for order in page {
                    if order.items.iter().any(|item| item.to_lowercase().contains(&needle)) {
                        yield order;
                    }
                }
                if last_page {
                    break;
                }
            }
        })
    }

    /// Replaces each order of `orders`, all or nothing, applying them as they arrive inside one
    /// transaction: an unknown ID (`NOT_FOUND`), an invalid order or a failed client stream and
    /// nothing changes.
    pub async fn update_all(&self, orders: OrderStream<'_>) -> Result<Written, Error> {
        let updated = self.backend.update_all(orders, self.timeout).await?;
        if let Some(cache) = &self.cache {
            // Which orders changed is not kept (that would grow with the call); updates are rare.
            cache.clear();
        }
        Ok(updated)
    }

    /// Stores each order of `orders` as `add` would, all or nothing: an ID taken (`ALREADY_EXISTS`),
    /// an invalid order or a failed client stream and nothing is stored. The orders are written
    /// as they arrive, so a long stream is never held in memory.
    pub async fn add_all(&self, orders: OrderStream<'_>) -> Result<Written, Error> {
        // New orders change no cached one; a cache miss is not cached, so nothing is stale.
        self.backend.add_all(orders, self.timeout).await
    }

    /// A new shipment number, unique across every server sharing the database.
    pub async fn next_shipment(&self) -> Result<i64, Error> {
        self.bounded(self.backend.next_shipment()).await
    }

    /// Succeeds when the database answers within the store's timeout.
    pub async fn ping(&self) -> Result<(), Error> {
        self.bounded(self.backend.ping()).await
    }

    /// How the database connection pool is used right now.
    pub fn pool_use(&self) -> PoolUse {
        self.backend.pool_use()
    }

    async fn bounded<T>(&self, work: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        within(self.timeout, work).await
    }
}

/// Runs `work` on a task of its own, to its end, even if the caller stops waiting (its client
/// gone, its timeout passed). A transaction must never be cancelled while it begins: sqlx 0.8
/// then leaves the pooled connection inside the transaction (with SQLite's `BEGIN IMMEDIATE`,
/// holding the write lock that every other write then waits for; launchbadge/sqlx#2054,
/// transact-rs/sqlx#4393). Begun on a task of its own, a transaction commits or is dropped, and
/// so rolled back, on that task.
async fn uncancelled<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Only when the runtime shuts down.
        Err(_) => Err(Error::Database(sqlx::Error::PoolClosed)),
    }
}

/// `work`, or [`Error::Timeout`] if it takes longer than `timeout`.
async fn within<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(Error::Timeout(timeout)))
}

/// The URL with its password (if any) replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
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

/// Where a seeded database's ID sequence stands: after the largest sample ID, so the first
/// assigned ID is 107 as in the tutorial.
fn last_sample_id() -> i64 {
    sample_orders()
        .iter()
        .filter_map(|order| order.id.parse().ok())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
