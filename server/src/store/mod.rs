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
//! durable, run `updateOrders` and `addOrders` each all or nothing, let the writes waiting
//! together share one commit ([`batch`]) and index every order's items for search ([`search`]).
//!
//! The bottom layer: every SQL statement of the server is in this folder (and the migrations).
//! It may use the top-level files only, never `orders`, `grpc`, `http` or `net`.

mod batch;
mod cache;
mod keys;
mod postgres;
mod search;
mod sqlite;
mod sqlite_keys;
mod write;

use std::{fmt, future::Future, sync::Arc, time::Duration};

use futures::{stream::BoxStream, StreamExt, TryStreamExt};
use order_api::pb::Order;
use prost::Message;
use tokio::{sync::Semaphore, time::Instant};

use crate::{config::Config, error::Error, order::ValidOrder, streams::Count};

use self::{
    batch::{Done, Queue, Work},
    cache::ReadCache,
    keys::Registry,
    search::{Plan, Search},
    write::{Commit, Gate},
};

pub use self::batch::Commits;
pub(crate) use self::keys::{Claim, Digest, KeyRecord, Stored};
pub use self::keys::{Key, MAX_KEY_CHARS};

/// How many bytes of a client stream's orders a call keeps in memory before it stages them in
/// the database: a stream that ends within this (nearly every one) holds no database connection
/// while it waits for its client.
pub const PREFETCH_BYTES: usize = 1024 * 1024;

/// Most orders `search` reads from the database at a time.
pub const SEARCH_PAGE: i64 = 64;

/// Most bytes of orders (as sent) in one page of `search` beyond its first order: with orders as
/// large as validation allows (about 82 KB), 64 of them would be 5 MB held by every search whose
/// client does not read.
pub const SEARCH_PAGE_BYTES: usize = 256 * 1024;

/// One page of orders read for a search.
#[derive(Default)]
pub(crate) struct Page {
    /// The orders, each with its size by [`order_bytes`].
    pub(crate) orders: Vec<(Order, usize)>,
    /// The sum of their sizes.
    pub(crate) bytes: usize,
    /// No order comes after these.
    pub(crate) last: bool,
    /// Where the next page starts when a walking search read past the last of these orders
    /// without filling the page (see [`search`]); after the last order otherwise.
    pub(crate) resume: Option<String>,
    /// Every order was checked against the search already (a walking page's are).
    pub(crate) checked: bool,
}

impl Page {
    /// Takes orders from `rows` (in ID order, at most `limit`) until one brings the page to
    /// `max_bytes`.
    pub(crate) async fn read<R>(
        mut rows: impl futures::Stream<Item = Result<R, sqlx::Error>> + Unpin,
        limit: i64,
        max_bytes: usize,
        order: impl Fn(&R) -> Result<Order, sqlx::Error>,
    ) -> Result<Page, Error> {
        let mut page = Page::default();
        while let Some(row) = rows.try_next().await? {
            if page.push(order(&row)?, max_bytes) {
                // Cut short by its size: more may come after it.
                return Ok(page);
            }
        }
        page.last = (page.orders.len() as i64) < limit;
        Ok(page)
    }

    /// Adds `order`; true once the page holds `max_bytes` (one order at least).
    pub(crate) fn push(&mut self, order: Order, max_bytes: usize) -> bool {
        let size = order_bytes(&order);
        self.bytes += size;
        self.orders.push((order, size));
        self.bytes >= max_bytes
    }
}

/// `value` as JSON text: one parameter carrying many rows (see [`batch`]).
fn json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Database(sqlx::Error::Encode(Box::new(e))))
}

/// What an order takes in a page, counted as it is sent.
pub(crate) fn order_bytes(order: &Order) -> usize {
    prost::Message::encoded_len(order)
}

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
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// Bytes of orders that open searches may hold between them, read but not yet sent.
    pub search_memory_bytes: u64,
}

impl StoreOptions {
    /// What the store needs of `config`.
    pub fn of(config: &Config) -> Self {
        Self {
            url: config.database_url.clone(),
            sample_data: !config.no_sample_data,
            timeout: config.database_timeout,
            max_connections: config.database_connections,
            cache_bytes: config.cache_mb.saturating_mul(1024 * 1024),
            idempotency_ttl: config.idempotency_ttl,
            search_memory_bytes: config.search_memory_mb.saturating_mul(1024 * 1024),
        }
    }

    /// Options for `url` with the server's defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            sample_data: true,
            timeout: Duration::from_secs(5),
            max_connections: 8,
            cache_bytes: 8 * 1024 * 1024,
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            search_memory_bytes: 8 * 1024 * 1024,
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

/// What a write did: done now (and its idempotency key, if any, stored with its answer), or
/// nothing, because the same request came with the same key before: then the stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied<T> {
    /// Done by this call.
    Done(T),
    /// The stored answer of the earlier call with the same key; nothing was written now.
    Replayed(String),
}

/// What `updateOrders` and `addOrders` answer.
pub type Answer = Applied<Written>;

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Applied::Done(written) => written.fmt(f),
            Applied::Replayed(answer) => f.write_str(answer),
        }
    }
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

    /// `count` orders `verb` ("added" or "updated"), the first of them `first_ids`.
    fn summary(verb: &'static str, count: usize, first_ids: Vec<String>) -> Self {
        Self {
            verb,
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

    /// Counts `id`, which `seen` tells if this call wrote before (an order updated twice is
    /// one order updated).
    fn record(&mut self, id: &str, seen: &mut std::collections::HashSet<String>) {
        if !seen.insert(id.to_owned()) {
            return;
        }
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

/// What a client stream writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `updateOrders`: replace existing orders; the same ID twice, the later one wins.
    Update,
    /// `addOrders`: store new orders; an ID taken (before or earlier in the stream) fails it.
    Add,
}

impl Kind {
    /// The RPC, as idempotency keys record it.
    fn method(self) -> &'static str {
        match self {
            Kind::Update => "updateOrders",
            Kind::Add => "addOrders",
        }
    }
}

/// One storage engine. Every method is one short piece of work on the database. The writes run
/// on a task of their own, to their end (see [`Store::outcome`]): they commit only through
/// [`Commit::begin`], which refuses once their caller has given up.
#[tonic::async_trait]
trait Backend: Send + Sync + fmt::Debug {
    /// The order with this ID, if any.
    async fn get(&self, id: &str) -> Result<Option<Order>, Error>;
    /// Applies `writes` in one transaction and one commit (see [`batch`]): each `addOrder`
    /// under its own ID, or under the next number of the ID sequence (skipping taken ones) when
    /// it has none; each whole client stream as one write; each with its idempotency key, if any.
    async fn write_batch(&self, writes: Vec<batch::Write>) -> Vec<batch::Outcome>;
    /// Up to `limit` orders after `after` in ID order ("" for the first page), stopping at the
    /// first order that brings the page to `max_bytes` (so one order at least), read by `plan`:
    /// every order, or those that may match `search` (whose final check is the caller's).
    async fn page(
        &self,
        search: &Search,
        plan: Plan,
        after: &str,
        limit: i64,
        max_bytes: usize,
    ) -> Result<Page, Error>;
    /// Begins staging a client stream's orders (a connection, or a transaction, of its own),
    /// waiting for the database until `deadline`. `key` is the call's idempotency key, if any;
    /// a key stored before `keys_expired_before` (Unix milliseconds) counts as absent.
    async fn stage(
        &self,
        kind: Kind,
        key: Option<&Key>,
        keys_expired_before: i64,
        deadline: Instant,
    ) -> Result<Box<dyn Staging>, Error>;
    /// The next number of the shipment ID sequence.
    async fn next_shipment(&self) -> Result<i64, Error>;
    /// Forgets up to `limit` idempotency keys stored before `before` (Unix milliseconds);
    /// returns how many it forgot.
    async fn forget_keys(&self, before: i64, limit: i64) -> Result<u64, Error>;
    /// The row stored under `key`, unless it was stored before `expired_before`.
    async fn stored_key(&self, key: &Key, expired_before: i64) -> Result<Option<Stored>, Error>;
    /// Stores the commit's key with `answer`, in a transaction of its own: for a call whose
    /// writes are done (`processOrders`' shipment numbers).
    async fn remember_key(&self, commit: Commit, answer: String) -> Result<(), Error>;
    /// Succeeds when the database answers.
    async fn ping(&self) -> Result<(), Error>;
    /// How the connection pool is used right now.
    fn pool_use(&self) -> PoolUse;
}

/// A client stream's orders on their way into the database: pushed as they arrive, applied all
/// or nothing in one transaction at the end.
#[tonic::async_trait]
trait Staging: Send {
    /// Adds `orders`, next in the client's order. An `addOrders` ID given twice fails here.
    async fn push(&mut self, orders: Vec<Order>, deadline: Instant) -> Result<(), Error>;
    /// Applies every order pushed, with the call's idempotency key, in one transaction.
    async fn apply(self: Box<Self>, commit: Commit) -> Result<Applied<Written>, Error>;
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
    /// The idempotency keys of the writes running in this process.
    running: Arc<Registry>,
    /// How long a key is remembered.
    key_ttl: Duration,
    /// Client streams too long for memory stage in the database, holding a connection while
    /// they wait for their client: at most half the pool at once, so that they never starve the
    /// other calls.
    long_streams: Arc<Semaphore>,
    /// The writes running on tasks of their own.
    in_flight: Count,
    /// The group commit's writer.
    writer: Queue,
    /// Bytes of orders open searches hold, read but not yet sent: one permit a byte.
    search_memory: Arc<Semaphore>,
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
        // The writer holds no strong handle: the database (and SQLite's lock file) is closed
        // the moment the last `Store` is dropped.
        let writer = {
            let backend = Arc::downgrade(&backend);
            batch::start(move |writes| {
                let backend = backend.upgrade();
                async move {
                    match backend {
                        Some(backend) => backend.write_batch(writes).await,
                        None => writes
                            .iter()
                            .map(|_| Err(Error::Database(sqlx::Error::PoolClosed)))
                            .collect(),
                    }
                }
            })
        };
        Ok(Self {
            writer,
            backend,
            cache,
            timeout: options.timeout,
            name,
            running: Arc::default(),
            key_ttl: options.idempotency_ttl,
            long_streams: Arc::new(Semaphore::new((options.max_connections / 2).max(1) as usize)),
            search_memory: Arc::new(Semaphore::new(
                usize::try_from(options.search_memory_bytes)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS),
            )),
            in_flight: Count::default(),
        })
    }

    /// What the group commit has done so far (see the `batch` module).
    pub fn commits(&self) -> Commits {
        self.writer.commits()
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
    /// refused and the stored order left as it was. With an idempotency `key` the same request
    /// again gets the same ID, stored once.
    pub async fn add(&self, order: ValidOrder, key: Option<Key>) -> Result<String, Error> {
        let order = order.into_inner();
        let claim = self.running.claim(key.as_ref())?;
        let key = key.map(|key| {
            let mut digest = Digest::new("addOrder");
            digest.update(&order);
            key.record("addOrder", digest)
        });
        let explicit = order.id.clone();
        let commit = self.commit(key, false);
        let writer = self.writer.clone();
        let added = self
            .outcome(commit.gate.clone(), commit.deadline, async move {
                let _claim = claim;
                writer.submit(Work::Add(order), commit).await
            })
            .await?;
        match added {
            Applied::Done(Done::Added(Added::Id(id))) | Applied::Replayed(id) => Ok(id),
            Applied::Done(Done::Added(Added::Taken)) => Err(Error::AlreadyExists(explicit)),
            Applied::Done(Done::Written(_)) => unreachable!("addOrder writes one order"),
        }
    }

    /// Every order with an item containing `text`, ignoring case (`search::fold`), in ID order, read
    /// from the database a page at a time as the stream is polled, through the trigram index
    /// when the term is rare (see the `search` module): a client that does not read holds
    /// one page, never a copy of the store. A page is at most `SEARCH_PAGE` orders and
    /// `SEARCH_PAGE_BYTES` while the searches' shared memory budget has room for it, one order
    /// once it has not: unread searches hold a bounded amount between them, and never make
    /// another search wait.
    pub fn search(&self, text: &str) -> BoxStream<'static, Result<Order, Error>> {
        let search = Arc::new(Search::new(text));
        let store = self.clone();
        Box::pin(async_stream::try_stream! {
            let mut after = String::new();
            let mut plan = search.first_plan();
            // The size of an order of the last page: the next asks the database for as many
            // as fit (rows past the page's size would be read and decoded for nothing). The
            // first page guesses large orders: 5 of them, then as many as fit.
            let mut order_size = SEARCH_PAGE_BYTES / 4;
            loop {
                let mut held = store
                    .search_memory
                    .clone()
                    .try_acquire_many_owned(SEARCH_PAGE_BYTES as u32)
                    .ok();
                let max_bytes = if held.is_some() { SEARCH_PAGE_BYTES } else { 0 };
                let limit = (max_bytes / order_size.max(1) + 1).min(SEARCH_PAGE as usize) as i64;
                // Read on a task of its own: hyper polls a response body only while the client
                // grants window, and a page left unpolled while it waits for a pooled connection
                // keeps its turn in sqlx's queue without taking it (launchbadge/sqlx#622), which
                // left idle connections and other calls timing out behind unread searches.
                let page = {
                    let (backend, search, after) =
                        (store.backend.clone(), search.clone(), after.clone());
                    let deadline = Instant::now() + store.timeout;
                    uncancelled(async move {
                        until(deadline, backend.page(&search, plan, &after, limit, max_bytes)).await
                    })
                    .await?
                };
                if !page.orders.is_empty() {
                    order_size = page.bytes / page.orders.len();
                }
                // The budget holds what the page holds, given back order by order as each is
                // sent: the stream is polled for the next once hyper has handed the last to h2.
                if let Some(permit) = &mut held {
                    let unused = SEARCH_PAGE_BYTES.saturating_sub(page.bytes);
                    drop(permit.split(unused));
                }
                if let Some(resume) = page.resume {
                    // A window of the walk did not fill a page: the term is rare enough for the
                    // index to find its orders sooner.
                    after = resume;
                    if search.indexed() {
                        plan = Plan::Index;
                    }
                } else if let Some((last, _)) = page.orders.last() {
                    after.clone_from(&last.id);
                }
                let checked = page.checked;
                for (order, size) in page.orders {
                    if checked || search.matches(&order) {
                        yield order;
                    }
                    if let Some(permit) = &mut held {
                        drop(permit.split(size));
                    }
                }
                if page.last {
                    break;
                }
            }
        })
    }

    /// Replaces each order of `orders`, all or nothing: an unknown ID (`NOT_FOUND`), an invalid
    /// order or a failed client stream and nothing changes. An order named twice is updated once,
    /// to its later version. The cached copies are gone before the change can be read.
    pub async fn update_all(
        &self,
        orders: OrderStream<'_>,
        key: Option<Key>,
    ) -> Result<Answer, Error> {
        self.write_stream(Kind::Update, orders, key).await
    }

    /// Stores each order of `orders` as `add` would, all or nothing: an ID taken (`ALREADY_EXISTS`),
    /// an invalid order or a failed client stream and nothing is stored. A long stream is staged
    /// in the database as it arrives, never held whole in memory.
    pub async fn add_all(
        &self,
        orders: OrderStream<'_>,
        key: Option<Key>,
    ) -> Result<Answer, Error> {
        // New orders change no cached one; a cache miss is not cached, so nothing is stale.
        self.write_stream(Kind::Add, orders, key).await
    }

    /// A client stream's write: its orders read into memory as they arrive (up to
    /// [`PREFETCH_BYTES`], then staged in the database under a long-stream permit), then applied
    /// on a task of its own once the stream ended cleanly: whole in memory, as one write of the
    /// next group commit; staged, in its own transaction. Nothing is applied if the stream
    /// fails, is reset, or the call is dropped or times out before the commit begins.
    async fn write_stream(
        &self,
        kind: Kind,
        mut orders: OrderStream<'_>,
        key: Option<Key>,
    ) -> Result<Answer, Error> {
        let claim = self.running.claim(key.as_ref())?;
        let mut digest = key.as_ref().map(|_| Digest::new(kind.method()));
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut staged: Option<(Box<dyn Staging>, tokio::sync::OwnedSemaphorePermit)> = None;
        while let Some(order) = orders.next().await {
            let order = order?.into_inner();
            if let Some(digest) = &mut digest {
                digest.update(&order);
            }
            batch_bytes += order.encoded_len();
            batch.push(order);
            if batch_bytes >= PREFETCH_BYTES {
                if staged.is_none() {
                    let permit = self
                        .long_streams
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| Error::Database(sqlx::Error::PoolClosed))?;
                    let deadline = Instant::now() + self.timeout;
                    let expired = keys::expired_before(self.key_ttl);
                    let staging = self.backend.stage(kind, key.as_ref(), expired, deadline);
                    staged = Some((staging.await?, permit));
                }
                if let Some((staging, _)) = &mut staged {
                    let deadline = Instant::now() + self.timeout;
                    staging.push(std::mem::take(&mut batch), deadline).await?;
                }
                batch_bytes = 0;
            }
        }
        let key = key
            .zip(digest)
            .map(|(key, digest)| key.record(kind.method(), digest));
        let commit = self.commit(key, kind == Kind::Update);
        let writer = self.writer.clone();
        self.outcome(commit.gate.clone(), commit.deadline, async move {
            let _claim = claim;
            match staged {
                // Staged: its own transaction, begun already.
                Some((mut staging, _permit)) => {
                    if !batch.is_empty() {
                        staging.push(batch, commit.deadline).await?;
                    }
                    staging.apply(commit).await
                }
                // Whole in memory: one write of the next group commit.
                None => match writer.submit(Work::Stream(kind, batch), commit).await? {
                    Applied::Done(Done::Written(written)) => Ok(Applied::Done(written)),
                    Applied::Replayed(answer) => Ok(Applied::Replayed(answer)),
                    Applied::Done(Done::Added(_)) => unreachable!("a stream's write is written"),
                },
            }
        })
        .await
    }

    /// What a write commits with: its key, a new gate, the deadline for the database (the store's
    /// timeout from now, pool and lock waits included) and, for a write that changes existing
    /// orders, the cache to invalidate.
    fn commit(&self, key: Option<KeyRecord>, changes_orders: bool) -> Commit {
        Commit::new(
            key,
            Instant::now() + self.timeout,
            self.key_ttl,
            changes_orders.then(|| self.cache.clone()).flatten(),
        )
    }

    /// Runs `work` on a task of its own and waits for its outcome until `deadline` (the one
    /// deadline of the write's pool wait, lock wait and work).
    ///
    /// The work commits only through its [`Gate`]. When the deadline passes first, the gate is
    /// closed: if the work had not begun its commit, it never will, and the caller gets
    /// `UNAVAILABLE` ("not applied") honestly; if it had, the caller waits for the outcome. When
    /// the caller is dropped (its client gone, its deadline passed), the gate is closed too.
    async fn outcome<T: Send + 'static>(
        &self,
        gate: Gate,
        deadline: Instant,
        work: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        let _abandon = gate.abandon_on_drop();
        let mut task = tokio::spawn(self.in_flight.track_future(work));
        tokio::select! {
            joined = &mut task => outcome_of(joined),
            () = tokio::time::sleep_until(deadline) => {
                if gate.abandon() {
                    return Err(Error::Timeout(self.timeout));
                }
                // The commit has begun: its outcome, whatever it is, is the answer.
                outcome_of(task.await)
            }
        }
    }

    /// Marks `key` as in use by a running call until the claim is dropped: `ABORTED` if another
    /// call has it.
    pub(crate) fn claim(&self, key: Option<&Key>) -> Result<Claim, Error> {
        self.running.claim(key)
    }

    /// The answer stored with `key`, unless it expired.
    pub(crate) async fn stored_answer(&self, key: &Key) -> Result<Option<Stored>, Error> {
        let expired_before = keys::expired_before(self.key_ttl);
        self.bounded(self.backend.stored_key(key, expired_before))
            .await
    }

    /// Stores `key` with `answer` for a call whose writes are done.
    pub(crate) async fn remember(&self, key: KeyRecord, answer: String) -> Result<(), Error> {
        let commit = self.commit(Some(key), false);
        let backend = self.backend.clone();
        self.outcome(commit.gate.clone(), commit.deadline, async move {
            backend.remember_key(commit, answer).await
        })
        .await
    }

    /// How many writes are running on tasks of their own right now, to watch (tests wait for 0
    /// to know that a cancelled call left nothing running).
    pub fn writes_in_flight(&self) -> tokio::sync::watch::Receiver<usize> {
        self.in_flight.watch()
    }

    /// How many writes run on tasks of their own right now, for the metrics.
    pub(crate) fn writes_running(&self) -> usize {
        self.in_flight.count()
    }

    /// Forgets the idempotency keys older than the TTL, a few hundred per transaction so that no
    /// write waits long behind it. Returns how many were forgotten.
    pub async fn forget_expired_keys(&self) -> Result<u64, Error> {
        let before = keys::expired_before(self.key_ttl);
        let mut forgotten = 0;
        loop {
            let batch = self.bounded(self.backend.forget_keys(before, 500)).await?;
            forgotten += batch;
            if batch < 500 {
                return Ok(forgotten);
            }
        }
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
        until(Instant::now() + self.timeout, work).await
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
    outcome_of(tokio::spawn(work).await)
}

/// The result of work run on a task of its own: its own, or its panic resumed here.
fn outcome_of<T>(joined: Result<Result<T, Error>, tokio::task::JoinError>) -> Result<T, Error> {
    match joined {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Only when the runtime shuts down.
        Err(_) => Err(Error::Database(sqlx::Error::PoolClosed)),
    }
}

/// `work`, or [`Error::Timeout`] if it is not done by `deadline`.
async fn until<T>(
    deadline: Instant,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or(Err(Error::Timeout(left)))
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
