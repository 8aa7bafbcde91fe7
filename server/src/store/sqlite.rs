//! The embedded store: one SQLite file in WAL mode, every commit synced to disk
//! (`synchronous = FULL`), so an acknowledged write survives a crash of the server or the machine.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    path::Path,
    str::FromStr,
    sync::{Arc, LazyLock},
    time::Duration,
};

use futures::TryStreamExt;
use order_api::pb::Order;
use prost::Message as _;
use sqlx::{
    pool::PoolConnection,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
        SqliteSynchronous,
    },
    ConnectOptions, Connection, Row, SqliteConnection,
};

use tokio::time::Instant;

use super::{
    batch::{self, Outcome, Write},
    json,
    keys::{Key, KeyRecord, Stored},
    last_sample_id, redact, sample_orders,
    search::{search_text, Plan, Search, WALK_ROWS},
    sqlite_keys::{self, Recent},
    until,
    write::Commit,
    Applied, Backend, Kind, OpenError, Page, Staging, StoreOptions, Written, SUMMARY_IDS,
};
use crate::error::Error;

const COLUMNS: &str = "id, items, description, price, destination";

/// A SQLite database file and the lock that makes this process its only server.
#[derive(Debug)]
pub(super) struct Sqlite {
    pool: SqlitePool,
    /// The group commit's own connection (a pool of one): its page cache stays valid from one
    /// batch to the next, where a connection taken from `pool` would find that others had
    /// written since its last turn and read every page again.
    writer: SqlitePool,
    /// The idempotency keys not yet in the index by hash, by hash (see [`sqlite_keys`]).
    recent: Arc<Recent>,
    /// Held (locked) for as long as the store is open.
    _lock: Option<File>,
}

impl Sqlite {
    pub(super) async fn open(options: &StoreOptions) -> Result<Self, OpenError> {
        let url = &options.url;
        let connect = connect_options(url, options.timeout).map_err(|source| OpenError::Url {
            url: redact(url),
            source,
        })?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let lock = if in_memory {
            None
        } else {
            Some(lock(url, connect.get_filename())?)
        };
        let (pool, writer) =
            connect_pool(connect, options)
                .await
                .map_err(|source| OpenError::Connect {
                    url: redact(url),
                    source,
                })?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|source| OpenError::Migrate {
                url: redact(url),
                source,
            })?;
        let store = Self {
            pool,
            writer,
            recent: Arc::new(Recent::new()),
            _lock: lock,
        };
        // What is left of the upgrade (each step at most once), then the set-up.
        let failed = |source| OpenError::Connect {
            url: redact(url),
            source,
        };
        store.move_unhashed_keys().await.map_err(failed)?;
        store.fill_search_text().await.map_err(failed)?;
        store.set_up(options.sample_data).await.map_err(failed)?;
        Ok(store)
    }

    /// Moves the idempotency keys stored before keys were found by hash into their table (see
    /// [`sqlite_keys`]), ten thousand per transaction: once, at the first start after the upgrade
    /// (a million keys in about 10 s).
    async fn move_unhashed_keys(&self) -> Result<(), sqlx::Error> {
        let mut moved = 0;
        loop {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let batch = sqlite_keys::move_unhashed(&mut tx, &self.recent, 10_000).await?;
            tx.commit().await?;
            if batch == 0 {
                break;
            }
            moved += batch;
        }
        if moved > 0 {
            tracing::info!(
                keys = moved,
                "moved the stored idempotency keys to their table by hash"
            );
        }
        Ok(())
    }

    /// Fills the `search_text` of the orders stored before search was indexed (NULL since that
    /// migration), a thousand per transaction: once, at the first start after the upgrade.
    async fn fill_search_text(&self) -> Result<(), sqlx::Error> {
        let mut after = 0_i64;
        let mut filled = 0_usize;
        loop {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let rows: Vec<(i64, String)> = sqlx::query_as(
                "SELECT seq, items FROM orders WHERE seq > ?1 AND search_text IS NULL
                 ORDER BY seq LIMIT 1000",
            )
            .bind(after)
            .fetch_all(&mut *tx)
            .await?;
            let Some(&(last, _)) = rows.last() else {
                break;
            };
            filled += rows.len();
            for (seq, items) in rows {
                let items = decode_items(&items)?;
                sqlx::query("UPDATE orders SET search_text = ?2 WHERE seq = ?1")
                    .bind(seq)
                    .bind(search_text(&items))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            after = last;
        }
        if filled > 0 {
            tracing::info!(orders = filled, "indexed the stored orders for search");
        }
        Ok(())
    }

    /// Marks the database as set up and, the first time only, stores the sample orders.
    async fn set_up(&self, sample_data: bool) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let created = sqlx::query(
            "INSERT INTO store_info (key, value) VALUES ('created', datetime('now'))
             ON CONFLICT (key) DO NOTHING",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if created && sample_data {
            for order in sample_orders() {
                insert(&mut tx, &order.id, &order).await?;
            }
            sqlx::query("UPDATE sequences SET last_value = ?1 WHERE name = 'order_ids'")
                .bind(last_sample_id())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
}

/// How the pool's connections to `url` are opened: each commit synced, waiting up to `timeout`
/// for another connection's lock. They leave the journal mode as the file has it (see
/// [`connect_pool`]).
fn connect_options(url: &str, timeout: Duration) -> Result<SqliteConnectOptions, sqlx::Error> {
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(timeout))
}

/// The pool, and the group commit's connection, after one connection alone has made the file a
/// WAL file.
///
/// The switch to WAL writes the file and needs it to itself. Connections that make it together
/// race, and SQLite fails the loser at once with "database is locked": it does not wait when
/// waiting could deadlock. sqlx's pool may open its first connections together, so they do not
/// switch; WAL is a property of the file, and they find it there.
async fn connect_pool(
    connect: SqliteConnectOptions,
    options: &StoreOptions,
) -> Result<(SqlitePool, SqlitePool), sqlx::Error> {
    let first = connect
        .clone()
        .journal_mode(SqliteJournalMode::Wal)
        .connect()
        .await?;
    let pool_of = |max: u32| {
        SqlitePoolOptions::new()
            .max_connections(max)
            // An in-memory database lives as long as one connection to it.
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(options.timeout)
    };
    let pool = pool_of(options.max_connections.max(1))
        .connect_with(connect.clone())
        .await;
    // Closed once the pool holds a connection of its own, for the same reason.
    let closed = first.close().await;
    let pool = pool?;
    closed?;
    let writer = pool_of(1).connect_with(connect).await?;
    Ok((pool, writer))
}

/// Takes `<database>.lock` so that a second server on the same file fails at start instead of
/// serving from a cache the first one makes stale.
fn lock(url: &str, database: &Path) -> Result<File, OpenError> {
    if let Some(folder) = database.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(|source| OpenError::Io {
            path: folder.display().to_string(),
            source,
        })?;
    }
    let mut path = database.as_os_str().to_owned();
    path.push(".lock");
    let path = std::path::PathBuf::from(path);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OpenError::Io {
            path: path.display().to_string(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked {
            url: redact(url),
            lock: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(OpenError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Inserts orders, a row of `(id, items as JSON, description, price, destination, search text)`
/// each, skipping IDs taken. Its rows take the next rowids, one after another; nothing is
/// returned (a row each through sqlx's channel): see `insert_orders` below.
static INSERT_ORDERS: LazyLock<Values> = LazyLock::new(|| {
    Values::new(
        "INSERT INTO orders (id, items, description, price, destination, search_text)
         SELECT * FROM (VALUES ",
        6,
        ") WHERE column1 IS NOT NULL ON CONFLICT (id) DO NOTHING",
    )
});

/// Most rows one statement of [`Values`] takes.
pub(super) const VALUES_ROWS: usize = 64;

/// A query with SQLite's arguments.
type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// A statement over a `VALUES` list of up to [`VALUES_ROWS`] rows of `width` parameters, each
/// value bound one by one: a JSON parameter cost SQLite a render and a parse of every row
/// (binding took a keyed `addOrder` from 163 000 to 145 000 instructions). The list is padded to
/// a power of two rows, so there are a few shapes of statement, their texts made once and each
/// prepared once by a connection.
pub(super) struct Values {
    width: usize,
    /// The statement for 1, 2, 4, ... [`VALUES_ROWS`] rows.
    shapes: Vec<String>,
}

impl Values {
    /// `head`, the `VALUES` list, then `tail`.
    pub(super) fn new(head: &str, width: usize, tail: &str) -> Self {
        let row = format!("({})", vec!["?"; width].join(","));
        let shapes = (0..=VALUES_ROWS.trailing_zeros())
            .map(|k| format!("{head}{}{tail}", vec![row.as_str(); 1 << k].join(",")))
            .collect();
        Self { width, shapes }
    }

    /// The statement for `rows` rows (1 to [`VALUES_ROWS`]): bind their values, then
    /// [`Values::pad`] it.
    pub(super) fn query(&self, rows: usize) -> SqliteQuery<'_> {
        sqlx::query(&self.shapes[rows.next_power_of_two().trailing_zeros() as usize])
    }

    /// Binds the nulls of the rows that pad `rows` rows to the statement's list.
    pub(super) fn pad<'q>(&self, mut query: SqliteQuery<'q>, rows: usize) -> SqliteQuery<'q> {
        for _ in 0..(rows.next_power_of_two() - rows) * self.width {
            query = query.bind(None::<i64>);
        }
        query
    }
}

impl batch::Engine for Sqlite {
    type Db = sqlx::Sqlite;

    async fn stored_keys<'c>(
        &'c self,
        conn: &'c mut SqliteConnection,
        keys: &'c [(&'c Key, i64)],
    ) -> Result<HashMap<Key, Stored>, Error> {
        sqlite_keys::stored(conn, &self.recent, keys, true).await
    }

    async fn insert_orders<'c>(
        &'c self,
        conn: &'c mut SqliteConnection,
        orders: &'c [(String, &'c Order)],
    ) -> Result<HashSet<String>, Error> {
        let mut ids = HashSet::new();
        for part in orders.chunks(VALUES_ROWS) {
            let mut query = INSERT_ORDERS.query(part.len());
            for (id, order) in part {
                query = query
                    .bind(id)
                    .bind(items_json(&order.items))
                    .bind(&order.description)
                    .bind(order.price)
                    .bind(&order.destination)
                    .bind(search_text(&order.items));
            }
            let done = INSERT_ORDERS
                .pad(query, part.len())
                .execute(&mut *conn)
                .await?;
            let inserted = done.rows_affected();
            if inserted as usize == part.len() {
                ids.extend(part.iter().map(|(id, _)| id.clone()));
                continue;
            }
            // Some IDs were taken: those inserted are the statement's rows, the last rowids.
            let last = done.last_insert_rowid();
            let inserted: Vec<String> =
                sqlx::query_scalar("SELECT id FROM orders WHERE rowid BETWEEN ?1 AND ?2")
                    .bind(last - inserted as i64 + 1)
                    .bind(last)
                    .fetch_all(&mut *conn)
                    .await?;
            ids.extend(inserted);
        }
        Ok(ids)
    }

    async fn numbers<'c>(
        &'c self,
        conn: &'c mut SqliteConnection,
        count: usize,
    ) -> Result<Vec<i64>, Error> {
        let count = count as i64;
        let last: Option<i64> = sqlx::query_scalar(
            "UPDATE sequences SET last_value = last_value + ?1
             WHERE name = 'order_ids' AND last_value <= 9223372036854775807 - ?1
             RETURNING last_value",
        )
        .bind(count)
        .fetch_optional(conn)
        .await?;
        let last = last.ok_or(Error::Exhausted("order IDs"))?;
        Ok((last - count + 1..=last).collect())
    }

    async fn insert_keys<'c>(
        &'c self,
        conn: &'c mut SqliteConnection,
        keys: &'c [(&'c KeyRecord, &'c str, &'c Commit)],
        expired_before: i64,
    ) -> Result<HashSet<Key>, Error> {
        sqlite_keys::store(conn, &self.recent, keys, expired_before).await
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    async fn execute<'c>(
        &'c self,
        conn: &'c mut SqliteConnection,
        sql: &'static str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(conn).await.map(|_| ())
    }

    /// Staged in this connection's temporary table, then applied as a long stream's is.
    async fn write_stream<'c>(
        &'c self,
        conn: &'c mut SqliteConnection,
        kind: Kind,
        orders: &'c [Order],
    ) -> Result<Written, Error> {
        empty_staging(conn, kind).await?;
        stage(conn, kind, orders).await?;
        match kind {
            Kind::Update => update_staged(conn).await,
            Kind::Add => add_staged(conn).await,
        }
    }
}

/// A client stream's orders staged in a temporary table of one pooled connection, which takes no
/// lock on the database: `staged_updates` or `staged_adds`, `seq` the order's place in the stream.
struct SqliteStaging {
    conn: PoolConnection<sqlx::Sqlite>,
    kind: Kind,
    recent: Arc<Recent>,
}

impl Sqlite {
    /// A connection with an empty staging table for `kind`.
    async fn staging(&self, kind: Kind, deadline: Instant) -> Result<SqliteStaging, Error> {
        let mut conn = until(deadline, async { Ok(self.pool.acquire().await?) }).await?;
        until(deadline, empty_staging(&mut conn, kind)).await?;
        Ok(SqliteStaging {
            conn,
            kind,
            recent: self.recent.clone(),
        })
    }
}

/// Makes the staging table of `kind` on `conn`, or empties it.
async fn empty_staging(conn: &mut SqliteConnection, kind: Kind) -> Result<(), Error> {
    let (table, id_columns) = staging_table(kind);
    sqlx::query(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS {table} (
             seq INTEGER PRIMARY KEY, {id_columns}, items TEXT NOT NULL,
             description TEXT NOT NULL, price REAL NOT NULL, destination TEXT NOT NULL,
             search_text TEXT NOT NULL)"
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!("DELETE FROM temp.{table}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The staging table of `kind` and its ID columns.
fn staging_table(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Update => ("staged_updates", "id TEXT NOT NULL UNIQUE"),
        // An empty ID is staged as NULL: only the IDs the client gave must be unique.
        Kind::Add => ("staged_adds", "id TEXT UNIQUE, assigned TEXT"),
    }
}

#[tonic::async_trait]
impl Staging for SqliteStaging {
    async fn push(&mut self, orders: Vec<Order>, deadline: Instant) -> Result<(), Error> {
        until(deadline, stage(&mut self.conn, self.kind, &orders)).await
    }

    /// One short `BEGIN IMMEDIATE` transaction, set-based whatever the number of orders; the
    /// staging table is emptied afterwards, best effort (the next call on this connection
    /// empties it anyway).
    async fn apply(mut self: Box<Self>, commit: Commit) -> Result<Applied<Written>, Error> {
        let applied = match self.kind {
            Kind::Update => apply_staged_updates(&mut self.conn, &self.recent, &commit).await,
            Kind::Add => apply_staged_adds(&mut self.conn, &self.recent, &commit).await,
        };
        let (table, _) = staging_table(self.kind);
        let _ = sqlx::query(&format!("DELETE FROM temp.{table}"))
            .execute(&mut *self.conn)
            .await;
        applied
    }
}

/// Adds `orders` to the staging table of `kind` on `conn`, next in the client's order.
async fn stage(conn: &mut SqliteConnection, kind: Kind, orders: &[Order]) -> Result<(), Error> {
    // One statement per 64 KiB of orders, from one JSON parameter: a statement each cost a
    // hand-off to sqlx's worker thread each (10 000 of them took seconds), one for all held
    // a copy of the whole part of the stream as JSON.
    let mut rest = orders;
    while !rest.is_empty() {
        let mut bytes = 0;
        let end = rest
            .iter()
            .position(|order| {
                bytes += order.encoded_len();
                bytes > STAGE_BYTES
            })
            .map_or(rest.len(), |at| at.max(1));
        let (part, next) = rest.split_at(end);
        stage_part(conn, kind, part).await?;
        rest = next;
    }
    Ok(())
}

/// Most bytes of orders one staging statement carries.
const STAGE_BYTES: usize = 64 * 1024;

/// [`stage`]'s one statement.
async fn stage_part(
    conn: &mut SqliteConnection,
    kind: Kind,
    orders: &[Order],
) -> Result<(), Error> {
    let rows = order_rows(orders.iter().map(|order| {
        let id = (!order.id.is_empty()).then_some(order.id.as_str());
        (id, order)
    }))?;
    match kind {
        // The same order twice in one call: the later version wins, in the place of the first.
        Kind::Update => {
            sqlx::query(
                "INSERT INTO temp.staged_updates
                     (id, items, description, price, destination, search_text)
                 SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5
                 FROM json_each(?1) WHERE true
                 ON CONFLICT (id) DO UPDATE SET items = excluded.items,
                     description = excluded.description, price = excluded.price,
                     destination = excluded.destination, search_text = excluded.search_text",
            )
            .bind(rows)
            .execute(&mut *conn)
            .await?;
        }
        Kind::Add => {
            // An ID given twice in this call fails it: the first order, in the client's order,
            // whose ID came before (in an earlier part of the stream, or earlier in this one).
            let before: Option<(i64, String)> = sqlx::query_as(
                "SELECT j.key, j.value->>0 FROM json_each(?1) AS j
                 WHERE j.value->>0 IN (SELECT id FROM temp.staged_adds)
                 ORDER BY j.key LIMIT 1",
            )
            .bind(&rows)
            .fetch_optional(&mut *conn)
            .await?;
            let mut seen = HashSet::new();
            let again = orders
                .iter()
                .position(|order| !order.id.is_empty() && !seen.insert(order.id.as_str()));
            let first = match (before, again) {
                (Some((at, id)), Some(again)) if (at as usize) < again => Some(id),
                (_, Some(again)) => Some(orders[again].id.clone()),
                (Some((_, id)), None) => Some(id),
                (None, None) => None,
            };
            if let Some(id) = first {
                return Err(Error::AlreadyExists(id));
            }
            sqlx::query(
                "INSERT INTO temp.staged_adds
                     (id, items, description, price, destination, search_text)
                 SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5
                 FROM json_each(?1)",
            )
            .bind(rows)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// The summary of the orders staged in `table`: how many, and the first IDs in the client's
/// order (`id_column` is where each one's ID is).
async fn staged_summary(
    conn: &mut SqliteConnection,
    verb: &'static str,
    table: &str,
    id_column: &str,
) -> Result<Written, Error> {
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM temp.{table}"))
        .fetch_one(&mut *conn)
        .await?;
    let first_ids: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT {id_column} FROM temp.{table} ORDER BY seq LIMIT ?1"
    ))
    .bind(SUMMARY_IDS as i64)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Written::summary(verb, count as usize, first_ids))
}

/// Begins the `BEGIN IMMEDIATE` transaction of a write, unless its caller has given up (before or
/// while it waited for the lock); `Ok(Err(answer))` when its key names the same request done
/// before.
async fn begin_keyed<'c>(
    conn: &'c mut SqliteConnection,
    recent: &Recent,
    commit: &Commit,
) -> Result<Result<sqlx::Transaction<'c, sqlx::Sqlite>, String>, Error> {
    commit.still_wanted()?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    match replay_of(&mut tx, recent, commit).await? {
        Some(answer) => Ok(Err(answer)),
        None => Ok(Ok(tx)),
    }
}

/// The stored answer when the write's key names the same request done before; fails if its
/// caller has given up, or the key was used for another request.
async fn replay_of(
    conn: &mut SqliteConnection,
    recent: &Recent,
    commit: &Commit,
) -> Result<Option<String>, Error> {
    commit.still_wanted()?;
    match &commit.key {
        Some(key) => key.replay(
            sqlite_keys::stored_one(conn, recent, &key.key, commit.keys_expired_before, true)
                .await?,
        ),
        None => Ok(None),
    }
}

/// Stores the new orders staged on `conn`, all or nothing, in a few statements whatever their
/// number: first those with their own ID (none may be taken), then the others under numbers of
/// the ID sequence, in the client's order (reserved a block at a time; from a number an existing
/// order has, the rest get the next block).
async fn apply_staged_adds(
    conn: &mut SqliteConnection,
    recent: &Recent,
    commit: &Commit,
) -> Result<Applied<Written>, Error> {
    let mut tx = match begin_keyed(conn, recent, commit).await? {
        Ok(tx) => tx,
        Err(answer) => return Ok(Applied::Replayed(answer)),
    };
    let written = add_staged(&mut tx).await?;
    commit_keyed(tx, recent, commit, &written.to_string()).await?;
    Ok(Applied::Done(written))
}

/// Stores the new orders staged on `conn`, inside its transaction (see [`apply_staged_adds`]).
async fn add_staged(tx: &mut SqliteConnection) -> Result<Written, Error> {
    let taken: Option<String> = sqlx::query_scalar(
        "SELECT s.id FROM temp.staged_adds s
         WHERE s.id IS NOT NULL AND EXISTS (SELECT 1 FROM orders o WHERE o.id = s.id)
         ORDER BY s.seq LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = taken {
        return Err(Error::AlreadyExists(id));
    }
    sqlx::query(
        "INSERT INTO orders (id, items, description, price, destination, search_text)
         SELECT id, items, description, price, destination, search_text FROM temp.staged_adds
         WHERE id IS NOT NULL ORDER BY seq",
    )
    .execute(&mut *tx)
    .await?;
    loop {
        let unnumbered: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM temp.staged_adds WHERE id IS NULL AND assigned IS NULL",
        )
        .fetch_one(&mut *tx)
        .await?;
        if unnumbered == 0 {
            break;
        }
        let last: Option<i64> = sqlx::query_scalar(
            "UPDATE sequences SET last_value = last_value + ?1
             WHERE name = 'order_ids' AND last_value <= 9223372036854775807 - ?1
             RETURNING last_value",
        )
        .bind(unnumbered)
        .fetch_optional(&mut *tx)
        .await?;
        let first = last.ok_or(Error::Exhausted("order IDs"))? - unnumbered + 1;
        sqlx::query(
            "UPDATE temp.staged_adds SET assigned = CAST(?1 + r.k - 1 AS TEXT)
             FROM (SELECT seq, row_number() OVER (ORDER BY seq) AS k FROM temp.staged_adds
                   WHERE id IS NULL AND assigned IS NULL) AS r
             WHERE temp.staged_adds.seq = r.seq",
        )
        .bind(first)
        .execute(&mut *tx)
        .await?;
        // A number an order already has as its own ID: that order and those after it get
        // numbers of the next round, so that the numbers still follow the client's order.
        sqlx::query(
            "UPDATE temp.staged_adds SET assigned = NULL
             WHERE id IS NULL AND seq >= (SELECT min(seq) FROM temp.staged_adds
                                          WHERE assigned IN (SELECT id FROM orders))",
        )
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO orders (id, items, description, price, destination, search_text)
         SELECT assigned, items, description, price, destination, search_text
         FROM temp.staged_adds
         WHERE id IS NULL ORDER BY seq",
    )
    .execute(&mut *tx)
    .await?;
    staged_summary(tx, "added", "staged_adds", "coalesce(id, assigned)").await
}

/// Applies the updates staged on `conn`, all or nothing: an ID no order has fails it.
async fn apply_staged_updates(
    conn: &mut SqliteConnection,
    recent: &Recent,
    commit: &Commit,
) -> Result<Applied<Written>, Error> {
    let mut tx = match begin_keyed(conn, recent, commit).await? {
        Ok(tx) => tx,
        Err(answer) => return Ok(Applied::Replayed(answer)),
    };
    let written = update_staged(&mut tx).await?;
    commit_keyed(tx, recent, commit, &written.to_string()).await?;
    Ok(Applied::Done(written))
}

/// Applies the updates staged on `conn`, inside its transaction (see [`apply_staged_updates`]).
async fn update_staged(tx: &mut SqliteConnection) -> Result<Written, Error> {
    let missing: Option<String> = sqlx::query_scalar(
        "SELECT s.id FROM temp.staged_updates s
         WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = s.id)
         ORDER BY s.seq LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = missing {
        return Err(Error::NotFound(id));
    }
    sqlx::query(
        "UPDATE orders SET items = s.items, description = s.description,
             price = s.price, destination = s.destination, search_text = s.search_text
         FROM temp.staged_updates s WHERE orders.id = s.id",
    )
    .execute(&mut *tx)
    .await?;
    staged_summary(tx, "updated", "staged_updates", "id").await
}

/// Stores the call's key, if any, with `answer`, and commits, if the call still wants it.
async fn commit_keyed(
    mut tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    recent: &Recent,
    commit: &Commit,
    answer: &str,
) -> Result<(), Error> {
    if let Some(key) = &commit.key {
        sqlite_keys::store_one(&mut tx, recent, key, answer, commit).await?;
    }
    commit.commit(tx).await
}

/// Inserts `order` as `id`; false when `id` is taken.
async fn insert(conn: &mut SqliteConnection, id: &str, order: &Order) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO orders (id, items, description, price, destination, search_text)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(items_json(&order.items))
    .bind(&order.description)
    .bind(order.price)
    .bind(&order.destination)
    .bind(search_text(&order.items))
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Orders as one JSON parameter: `[id or null, items as JSON, description, price, destination,
/// search text]` each.
fn order_rows<'a>(
    orders: impl Iterator<Item = (Option<&'a str>, &'a Order)>,
) -> Result<String, Error> {
    let rows: Vec<_> = orders
        .map(|(id, order)| {
            (
                id,
                items_json(&order.items),
                &order.description,
                order.price,
                &order.destination,
                search_text(&order.items),
            )
        })
        .collect();
    json(&rows)
}

fn items_json(items: &[String]) -> String {
    // A list of strings always serializes.
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

/// Up to `?2` orders after the ID `?1`, in ID order (shorter IDs first: `length(id), id`). SQLite
/// does not seek an index on a row value compared to another (`(length(id), id) > (…)`): it
/// scanned `orders_in_id_order` from its start for every page, so a search's cost grew with the
/// square of the store (a page near order 100 000 took 39 ms). The two halves, the IDs as long as
/// `?1` after it and the longer ones, each seek the index, and the page costs the same wherever
/// it is.
static PAGE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM (
             SELECT * FROM (
                 SELECT {COLUMNS}, length(id) AS len FROM orders INDEXED BY orders_in_id_order
                 WHERE length(id) = length(?1) AND id > ?1 ORDER BY id LIMIT ?2)
             UNION ALL
             SELECT * FROM (
                 SELECT {COLUMNS}, length(id) AS len FROM orders INDEXED BY orders_in_id_order
                 WHERE length(id) > length(?1) ORDER BY length(id), id LIMIT ?2)
         ) ORDER BY len, id LIMIT ?2"
    )
});

/// A walking search's two halves: the IDs as long as `?1` after it, then the longer ones, each
/// read in ID order straight from `orders_in_id_order`, lazily, up to `?2` rows. Not their
/// search text: it is last in the row, so SQLite never reads its pages (as large as the items),
/// and the items are checked here anyway.
static WALK_SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
    [
        format!(
            "SELECT {COLUMNS} FROM orders INDEXED BY orders_in_id_order
             WHERE length(id) = length(?1) AND id > ?1 ORDER BY id LIMIT ?2"
        ),
        format!(
            "SELECT {COLUMNS} FROM orders INDEXED BY orders_in_id_order
             WHERE length(id) > length(?1) ORDER BY length(id), id LIMIT ?2"
        ),
    ]
});

/// Up to `?2` orders after the ID `?1` whose search text contains `?4`, in ID order: those the
/// trigram index finds for the FTS5 query `?3` (every trigram; `CROSS JOIN` keeps SQLite from
/// walking the ID index instead), and those of the tail not indexed yet (fewer than its
/// `merge_at`, read by `seq`; see the migration `search_tail`); only the candidates are sorted.
static FOUND_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM (
             SELECT {COLUMNS}, orders.search_text AS text
             FROM order_search CROSS JOIN orders ON orders.seq = order_search.rowid
             WHERE order_search MATCH ?3
             UNION ALL
             SELECT {COLUMNS}, search_text AS text FROM orders
             WHERE seq > (SELECT indexed_upto FROM search_tail))
         WHERE (length(id) > length(?1) OR (length(id) = length(?1) AND id > ?1))
           AND instr(text, ?4) > 0
         ORDER BY length(id), id LIMIT ?2"
    )
});

impl Sqlite {
    /// A walking page: the orders after `after` in ID order, each tested here as it is read,
    /// until a page of matches or [`WALK_ROWS`] orders read (`resume`).
    async fn walk(
        &self,
        search: &Search,
        after: &str,
        limit: i64,
        max_bytes: usize,
    ) -> Result<Page, Error> {
        let mut page = Page {
            checked: true,
            ..Page::default()
        };
        let mut read = 0;
        for sql in WALK_SQL.iter() {
            let mut rows = sqlx::query(sql)
                .bind(after)
                .bind(WALK_ROWS - read)
                .fetch(&self.pool);
            while let Some(row) = rows.try_next().await? {
                read += 1;
                let order = order(&row)?;
                if search.matches(&order) {
                    let full = page.push(order, max_bytes);
                    if full || page.orders.len() as i64 == limit {
                        return Ok(page);
                    }
                }
                if read == WALK_ROWS {
                    page.resume = Some(row.try_get("id")?);
                    return Ok(page);
                }
            }
        }
        page.last = true;
        Ok(page)
    }
}

fn decode_items(items: &str) -> Result<Vec<String>, sqlx::Error> {
    serde_json::from_str(items).map_err(|e| sqlx::Error::ColumnDecode {
        index: "items".into(),
        source: Box::new(e),
    })
}

fn order(row: &SqliteRow) -> Result<Order, sqlx::Error> {
    let items: String = row.try_get("items")?;
    Ok(Order {
        id: row.try_get("id")?,
        items: decode_items(&items)?,
        description: row.try_get("description")?,
        price: row.try_get("price")?,
        destination: row.try_get("destination")?,
    })
}

#[tonic::async_trait]
impl Backend for Sqlite {
    async fn get(&self, id: &str) -> Result<Option<Order>, Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE id = ?1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(order).transpose()?)
    }

    async fn write_batch(&self, writes: Vec<Write>) -> Vec<Outcome> {
        batch::apply(self, writes).await
    }

    async fn page(
        &self,
        search: &Search,
        plan: Plan,
        after: &str,
        limit: i64,
        max_bytes: usize,
    ) -> Result<Page, Error> {
        match plan {
            Plan::All => {
                let rows = sqlx::query(&PAGE_SQL)
                    .bind(after)
                    .bind(limit)
                    .fetch(&self.pool);
                Page::read(rows, limit, max_bytes, order).await
            }
            Plan::Walk => self.walk(search, after, limit, max_bytes).await,
            Plan::Index => {
                let Some(fts) = &search.fts else {
                    return self.walk(search, after, limit, max_bytes).await;
                };
                let rows = sqlx::query(&FOUND_SQL)
                    .bind(after)
                    .bind(limit)
                    .bind(fts)
                    .bind(&search.needle)
                    .fetch(&self.pool);
                Page::read(rows, limit, max_bytes, order).await
            }
        }
    }

    /// The key is looked up when the staged orders are applied, in their transaction.
    async fn stage(
        &self,
        kind: Kind,
        _key: Option<&Key>,
        _keys_expired_before: i64,
        deadline: Instant,
    ) -> Result<Box<dyn Staging>, Error> {
        Ok(Box::new(self.staging(kind, deadline).await?))
    }

    async fn stored_key(&self, key: &Key, expired_before: i64) -> Result<Option<Stored>, Error> {
        let mut conn = self.pool.acquire().await?;
        sqlite_keys::stored_one(&mut conn, &self.recent, key, expired_before, false).await
    }

    async fn remember_key(&self, commit: Commit, answer: String) -> Result<(), Error> {
        let Some(key) = &commit.key else {
            return Ok(());
        };
        commit.still_wanted()?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Looked up under the lock, as `sqlite_keys::store` needs: stored meanwhile, it is
        // another call's.
        let expired_before = commit.keys_expired_before;
        if sqlite_keys::stored_one(&mut tx, &self.recent, &key.key, expired_before, true)
            .await?
            .is_some()
        {
            return Err(Error::KeyInProgress(key.key.key.clone()));
        }
        commit_keyed(tx, &self.recent, &commit, &answer).await
    }

    async fn forget_keys(&self, before: i64, limit: i64) -> Result<u64, Error> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let forgotten = sqlite_keys::forget(&mut tx, before, limit).await?;
        tx.commit().await?;
        self.recent.forgotten(forgotten);
        Ok(forgotten)
    }

    async fn next_shipment(&self) -> Result<i64, Error> {
        let next: Option<i64> = sqlx::query_scalar(
            "UPDATE sequences SET last_value = last_value + 1
             WHERE name = 'shipment_ids' AND last_value < 9223372036854775807
             RETURNING last_value",
        )
        .fetch_optional(&self.pool)
        .await?;
        next.ok_or(Error::Exhausted("shipment IDs"))
    }

    fn pool_use(&self) -> super::PoolUse {
        super::PoolUse::of(&self.pool)
    }

    async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page seeks `orders_in_id_order`, wherever it starts: no scan of the table or the index.
    #[tokio::test]
    async fn a_page_seeks_the_id_index_instead_of_scanning_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("orders.db").display());
        let store = Sqlite::open(&StoreOptions::new(&url)).await.unwrap();
        let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {}", *PAGE_SQL))
            .bind("104")
            .bind(64)
            .fetch_all(&store.pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("detail"))
            .collect();
        let reads: Vec<&String> = plan.iter().filter(|step| step.contains("orders")).collect();
        assert_eq!(reads.len(), 2, "{plan:#?}");
        for step in reads {
            assert!(
                step.starts_with("SEARCH orders USING INDEX orders_in_id_order"),
                "{plan:#?}"
            );
        }
    }

    async fn plan_of(store: &Sqlite, sql: &str, binds: &[&str]) -> Vec<String> {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query(&explain);
        for bind in binds {
            query = query.bind(*bind);
        }
        query
            .fetch_all(&store.pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("detail"))
            .collect()
    }

    /// A rare term's page starts from the trigram index and the tail, and sorts only their
    /// candidates; a walking page reads `orders_in_id_order` in order, from where the last one
    /// ended, with no sort.
    #[tokio::test]
    async fn a_search_page_starts_from_the_trigram_index_or_seeks_the_id_index() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("orders.db").display());
        let store = Sqlite::open(&StoreOptions::new(&url)).await.unwrap();
        let search = Search::new("GOOGLE");
        let found = plan_of(
            &store,
            &FOUND_SQL,
            &["104", "64", search.fts.as_deref().unwrap(), &search.needle],
        )
        .await;
        // The index's candidates, each read by its row number; the tail, read from its first
        // row number; no scan of the orders or of an index over them.
        let at = found
            .iter()
            .position(|step| step.starts_with("SCAN order_search VIRTUAL TABLE"))
            .unwrap_or_else(|| panic!("{found:#?}"));
        assert_eq!(
            found[at + 1],
            "SEARCH orders USING INTEGER PRIMARY KEY (rowid=?)",
            "{found:#?}"
        );
        assert!(
            found.contains(&"SEARCH orders USING INTEGER PRIMARY KEY (rowid>?)".to_owned()),
            "{found:#?}"
        );
        assert!(
            !found.iter().any(|step| step.starts_with("SCAN orders")),
            "{found:#?}"
        );
        for walk in WALK_SQL.iter() {
            let plan = plan_of(&store, walk, &["104", "4096"]).await;
            assert_eq!(plan.len(), 1, "{plan:#?}");
            assert!(
                plan[0].starts_with("SEARCH orders USING INDEX orders_in_id_order"),
                "{plan:#?}"
            );
        }
        // And they answer.
        let page = store
            .page(&search, Plan::Index, "", 64, usize::MAX)
            .await
            .unwrap();
        let ids: Vec<&str> = page.orders.iter().map(|(o, _)| o.id.as_str()).collect();
        assert_eq!(ids, ["102", "104"]);
        let page = store
            .page(&search, Plan::Walk, "", 64, usize::MAX)
            .await
            .unwrap();
        let ids: Vec<&str> = page.orders.iter().map(|(o, _)| o.id.as_str()).collect();
        assert_eq!(ids, ["102", "104"]);
        assert!(page.last);
    }

    /// Orders for `page` tests, stored by plain SQL (the triggers are under test): each of `ids`
    /// with `text` as its one item.
    async fn insert(store: &Sqlite, ids: &[&str], text: &str) {
        for id in ids {
            sqlx::query(
                "INSERT INTO orders (id, items, description, price, destination, search_text)
                 VALUES (?1, json_array(?2), '', 1, '', ?2)",
            )
            .bind(id)
            .bind(text)
            .execute(&store.pool)
            .await
            .unwrap();
        }
    }

    /// The IDs a rare term's pages find through the index and the tail, `limit` a page.
    async fn found(store: &Sqlite, text: &str, limit: i64) -> Vec<String> {
        let search = Search::new(text);
        let mut ids: Vec<String> = Vec::new();
        loop {
            let after = ids.last().cloned().unwrap_or_default();
            let page = store
                .page(&search, Plan::Index, &after, limit, usize::MAX)
                .await
                .unwrap();
            let read = page.orders.len() as i64;
            ids.extend(page.orders.into_iter().map(|(order, _)| order.id));
            if read < limit {
                return ids;
            }
        }
    }

    async fn tail(store: &Sqlite) -> (i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM orders WHERE seq > indexed_upto),
                    (SELECT count(*) FROM order_search) FROM search_tail",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap()
    }

    /// The newest orders wait in the tail, which a search reads beside the index; the insert
    /// that fills the tail moves it into the index; a change to an order, in the tail or in
    /// the index, is found as it is now; an order given a row number below the line (one freed
    /// by a delete) goes to the index at once. Each order is found once, in ID order.
    #[tokio::test]
    async fn a_search_finds_the_tail_and_the_index_together_through_every_change() {
        let (_dir, store) = key_tests::new_store().await;
        sqlx::query("UPDATE search_tail SET merge_at = 8")
            .execute(&store.pool)
            .await
            .unwrap();
        // The five sample orders and these three fill the tail: the third moves all eight.
        insert(&store, &["n1", "n2", "n3"], "a needle here").await;
        assert_eq!(tail(&store).await, (0, 8));
        insert(&store, &["n4", "n5"], "the needles").await;
        assert_eq!(tail(&store).await, (2, 8));
        let all = ["n1", "n2", "n3", "n4", "n5"];
        assert_eq!(found(&store, "NEEDLE", 64).await, all);
        assert_eq!(found(&store, "needle", 2).await, all, "across pages");
        assert!(found(&store, "haystack", 64).await.is_empty());
        // One indexed order and one in the tail change their text.
        for (id, text) in [("n2", "hay"), ("n5", "hay")] {
            sqlx::query("UPDATE orders SET search_text = ?2 WHERE id = ?1")
                .bind(id)
                .bind(text)
                .execute(&store.pool)
                .await
                .unwrap();
        }
        assert_eq!(found(&store, "needle", 64).await, ["n1", "n3", "n4"]);
        assert_eq!(found(&store, "hay", 64).await, ["n2", "n5"]);
        // The newest indexed order goes, and its row number is given again, below the line.
        insert(&store, &["n6", "n7", "n8", "n9", "n10", "n11"], "needle").await;
        assert_eq!(tail(&store).await, (0, 16));
        sqlx::query("DELETE FROM orders WHERE id = 'n11'")
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(tail(&store).await, (0, 15));
        insert(&store, &["n12"], "needle").await;
        assert_eq!(tail(&store).await, (0, 16));
        assert_eq!(
            found(&store, "needle", 3).await,
            ["n1", "n3", "n4", "n6", "n7", "n8", "n9", "n10", "n12"]
        );
    }

    /// The pool's connections open together on a new file without racing for the switch to WAL
    /// (they failed the start with "database is locked" when each made it), and the file is a
    /// WAL file once the pool is open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_first_connection_makes_a_new_file_wal() {
        for _ in 0..50 {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite:{}", dir.path().join("orders.db").display());
            let options = StoreOptions::new(&url);
            let connect = connect_options(&url, options.timeout).unwrap();
            let together = futures::future::join_all((0..8).map(|_| connect.connect())).await;
            for connection in together {
                connection.expect("a pool connection opens on a new file");
            }
            let (pool, writer) = connect_pool(connect, &options)
                .await
                .expect("the pool opens");
            for pool in [pool, writer] {
                let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(mode, "wal");
            }
        }
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;
    use crate::store::keys::{expired_before, Digest};
    use crate::store::sqlite_keys::MERGE_AT;

    /// Random keys, as UUIDs are: each falls anywhere in the key order.
    struct Keys(u64);

    impl Keys {
        fn next(&mut self) -> Key {
            let mut half = || {
                // xorshift64
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0
            };
            let key = format!("{:016x}-{:016x}", half(), half());
            Key::new("anonymous".into(), &key).unwrap()
        }
    }

    /// A store on a new file, in a folder that lasts as long as the guard.
    pub(super) async fn new_store() -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("orders.db").display());
        let store = Sqlite::open(&StoreOptions::new(&url)).await.unwrap();
        (dir, store)
    }

    /// Stores `count` new keys in one transaction of the group commit's connection.
    async fn store_batch(store: &Sqlite, keys: &mut Keys, count: usize) {
        let batch: Vec<Key> = (0..count).map(|_| keys.next()).collect();
        let stored = store_keys(store, &batch).await;
        assert_eq!(stored.len(), count);
    }

    /// Stores `keys` in one transaction of the group commit's connection; those stored.
    async fn store_keys(store: &Sqlite, keys: &[Key]) -> HashSet<Key> {
        let ttl = Duration::from_secs(86_400);
        let records: Vec<KeyRecord> = keys
            .iter()
            .map(|key| key.clone().record("addOrder", Digest::new("addOrder")))
            .collect();
        let commit = Commit::new(None, Instant::now() + ttl, ttl, None);
        let rows: Vec<_> = records.iter().map(|r| (r, "1", &commit)).collect();
        let mut tx = store.writer.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let stored = sqlite_keys::store(&mut tx, &store.recent, &rows, expired_before(ttl))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        stored
    }

    /// Two keys whose hashes collide: the second is refused until the tail is indexed (its call
    /// gets `ABORTED`, to retry), and never gets the other's answer.
    #[tokio::test]
    async fn a_key_whose_hash_another_has_in_the_tail_is_refused_not_confused() {
        let (_dir, store) = new_store().await;
        let mut keys = Keys(7);
        let (first, second) = (keys.next(), keys.next());
        assert_eq!(
            store_keys(&store, std::slice::from_ref(&first)).await.len(),
            1
        );
        // As if the two hashes were the same: the first key's row takes the second's hash (and
        // an answer of its own).
        sqlx::query("UPDATE idempotency_keys SET hash = ?1, answer = 'first'")
            .bind(sqlite_keys::hash(&second))
            .execute(&store.pool)
            .await
            .unwrap();
        store.recent.forget();
        let mut conn = store.pool.acquire().await.unwrap();
        let found = sqlite_keys::stored_one(&mut conn, &store.recent, &second, 0, false)
            .await
            .unwrap();
        assert!(found.is_none(), "{found:?}");
        drop(conn);
        assert!(store_keys(&store, std::slice::from_ref(&second))
            .await
            .is_empty());
        // Once the tail is indexed, the second key is stored; indexed too, it finds its own row
        // among the two of its hash, in the map and in the index.
        let mut filler = Keys(11);
        for _ in 0..MERGE_AT / 32 {
            store_batch(&store, &mut filler, 32).await;
        }
        assert_eq!(
            store_keys(&store, std::slice::from_ref(&second))
                .await
                .len(),
            1
        );
        let answer = || async {
            let mut conn = store.pool.acquire().await.unwrap();
            sqlite_keys::stored_one(&mut conn, &store.recent, &second, 0, false)
                .await
                .unwrap()
                .map(|row| row.answer)
        };
        assert_eq!(answer().await.as_deref(), Some("1"));
        for _ in 0..MERGE_AT / 32 {
            store_batch(&store, &mut filler, 32).await;
        }
        let same: i64 =
            sqlx::query_scalar("SELECT count(*) FROM idempotency_keys_by_hash WHERE hash = ?1")
                .bind(sqlite_keys::hash(&second))
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(same, 2);
        assert_eq!(answer().await.as_deref(), Some("1"));
    }

    /// A batch of keyed writes appends its keys to the table in the order stored: a few pages
    /// written to the WAL however many keys are stored already, where a table in key order took
    /// a leaf page per key (and durable keyed `addOrder`s were half as many as unkeyed ones).
    #[tokio::test]
    async fn a_batch_of_keys_writes_a_few_pages_not_one_per_key() {
        let (dir, store) = new_store().await;
        let mut keys = Keys(0x9e37_79b9_7f4a_7c15);
        for _ in 0..625 {
            store_batch(&store, &mut keys, 32).await;
        }
        wal::empty(dir.path()).await;
        store_batch(&store, &mut keys, 32).await;
        let frames = wal::pages(dir.path());
        assert!(frames <= 8, "{frames} pages written to store 32 keys");
    }

    /// A batch bigger than one statement's rows (and not a power of two): every key stored,
    /// found by the map and through the tail; every order inserted but those whose ID was taken,
    /// in whichever statement they fall.
    #[tokio::test]
    async fn a_batch_over_several_statements_stores_every_key_and_order() {
        use batch::Engine as _;
        let (_dir, store) = new_store().await;
        let mut keys = Keys(11);
        let batch: Vec<Key> = (0..2 * VALUES_ROWS + 13).map(|_| keys.next()).collect();
        assert_eq!(store_keys(&store, &batch).await.len(), batch.len());
        let lookups: Vec<(&Key, i64)> = batch.iter().map(|key| (key, 0)).collect();
        let mut conn = store.pool.acquire().await.unwrap();
        for locked in [true, false] {
            if !locked {
                store.recent.forget();
            }
            let found = sqlite_keys::stored(&mut conn, &store.recent, &lookups, locked)
                .await
                .unwrap();
            assert_eq!(found.len(), batch.len(), "found with the map: {locked}");
        }
        let taken = ["102", "o-70", "o-140"];
        sqlx::query(
            "INSERT INTO orders (id, items, description, price, destination,
                         search_text) VALUES ('o-70', '[]', '', 0, '', ''),
                                            ('o-140', '[]', '', 0, '', '')",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
        let order = Order::default();
        let mut ids: Vec<String> = (0..2 * VALUES_ROWS + 30)
            .map(|n| format!("o-{n}"))
            .collect();
        ids[3] = "102".into();
        let rows: Vec<(String, &Order)> = ids.iter().map(|id| (id.clone(), &order)).collect();
        let mut tx = store.writer.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let inserted = store.insert_orders(&mut tx, &rows).await.unwrap();
        tx.commit().await.unwrap();
        let expected: HashSet<String> = ids
            .iter()
            .filter(|id| !taken.contains(&id.as_str()))
            .cloned()
            .collect();
        assert_eq!(inserted, expected);
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE id LIKE 'o-%'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(stored as usize, ids.len() - 1);
    }

    /// The tail's keys by hash are this process's map, so every way a transaction can end is
    /// tried against it: keys rolled back are not found and can be stored after; an indexing of
    /// the tail rolled back leaves every key of the tail found, by a reader at once and by the
    /// next write; a key forgotten by the pruning can be stored again.
    #[tokio::test]
    async fn the_map_of_the_tail_follows_rollbacks_indexing_and_the_pruning() {
        let (_dir, store) = new_store().await;
        let mut keys = Keys(0x853c_49e6_748f_ea9b);
        let found = |key: Key| {
            let store = &store;
            async move {
                let mut conn = store.pool.acquire().await.unwrap();
                sqlite_keys::stored_one(&mut conn, &store.recent, &key, 0, false)
                    .await
                    .unwrap()
                    .is_some()
            }
        };
        let ttl = Duration::from_secs(86_400);
        let commit = Commit::new(None, Instant::now() + ttl, ttl, None);
        let in_rolled_back = |keys: Vec<Key>| {
            let (store, commit) = (&store, &commit);
            async move {
                let records: Vec<KeyRecord> = keys
                    .iter()
                    .map(|key| key.clone().record("addOrder", Digest::new("addOrder")))
                    .collect();
                let rows: Vec<_> = records.iter().map(|r| (r, "1", commit)).collect();
                let mut tx = store.writer.begin_with("BEGIN IMMEDIATE").await.unwrap();
                let stored = sqlite_keys::store(&mut tx, &store.recent, &rows, expired_before(ttl))
                    .await
                    .unwrap();
                assert_eq!(stored.len(), keys.len());
                tx.rollback().await.unwrap();
            }
        };
        // Rolled back: not found, then stored for good.
        let lost: Vec<Key> = (0..32).map(|_| keys.next()).collect();
        in_rolled_back(lost.clone()).await;
        assert!(!found(lost[0].clone()).await);
        assert_eq!(store_keys(&store, &lost).await.len(), 32);
        assert!(found(lost[31].clone()).await);
        // The tail one batch short of its indexing; the indexing rolled back.
        let mut kept = lost.clone();
        while kept.len() < (MERGE_AT - 32) as usize {
            let batch: Vec<Key> = (0..32).map(|_| keys.next()).collect();
            assert_eq!(store_keys(&store, &batch).await.len(), 32);
            kept.extend(batch);
        }
        in_rolled_back((0..32).map(|_| keys.next()).collect()).await;
        for key in [&kept[0], &kept[kept.len() / 2], &kept[kept.len() - 1]] {
            assert!(found(key.clone()).await, "{key:?}, by a reader");
        }
        assert!(
            store_keys(&store, &kept[..1]).await.is_empty(),
            "stored twice"
        );
        // A key forgotten by the pruning, then stored again.
        sqlx::query("UPDATE idempotency_keys SET created = 0 WHERE key = ?1")
            .bind(&kept[5].key)
            .execute(&store.pool)
            .await
            .unwrap();
        let mut conn = store.pool.acquire().await.unwrap();
        assert_eq!(sqlite_keys::forget(&mut conn, 1, 10).await.unwrap(), 1);
        drop(conn);
        assert!(!found(kept[5].clone()).await);
        assert_eq!(store_keys(&store, &kept[5..6]).await.len(), 1);
        assert!(found(kept[5].clone()).await);
        let rows: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM idempotency_keys
             WHERE seq > (SELECT upto FROM idempotency_keys_indexed)",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(rows, MERGE_AT - 32, "the tail");
    }

    /// Under the write lock, the filter has seen every key stored: read from the table (an index
    /// of several of its pages, and a tail), kept by this process's writes, read again once the
    /// table has a key no write of this process stored. A key it has not seen is not looked up
    /// on disk at all (checked with the index gone).
    #[tokio::test]
    async fn the_filter_has_seen_every_key_stored_and_spares_new_keys_a_lookup() {
        let (_dir, store) = new_store().await;
        let mut keys = Keys(0xd1b5_4a32_d192_ed03);
        let locked = |keys: Vec<Key>| {
            let store = &store;
            async move {
                let lookups: Vec<(&Key, i64)> = keys.iter().map(|key| (key, 0)).collect();
                let mut tx = store.writer.begin_with("BEGIN IMMEDIATE").await.unwrap();
                let found = sqlite_keys::stored(&mut tx, &store.recent, &lookups, true).await;
                tx.rollback().await.unwrap();
                found.map(|found| found.len())
            }
        };
        let mut stored = Vec::new();
        while stored.len() < (MERGE_AT + 1000) as usize {
            let batch: Vec<Key> = (0..32).map(|_| keys.next()).collect();
            assert_eq!(store_keys(&store, &batch).await.len(), 32);
            stored.extend(batch);
        }
        assert_eq!(locked(stored.clone()).await.unwrap(), stored.len());
        // As a new process: read from the table.
        store.recent.forget();
        assert_eq!(locked(stored.clone()).await.unwrap(), stored.len());
        // A key this process did not store, after its newest.
        let other = keys.next();
        sqlx::query(
            "INSERT INTO idempotency_keys (seq, hash, caller, key, method, digest, answer,
                                           created)
             SELECT max(seq) + 1, ?1, ?2, ?3, 'addOrder', x'00', '1', 0 FROM idempotency_keys",
        )
        .bind(sqlite_keys::hash(&other))
        .bind(&other.caller)
        .bind(&other.key)
        .execute(&store.pool)
        .await
        .unwrap();
        assert_eq!(locked(vec![other]).await.unwrap(), 1);
        // The pruning forgets more than half of what the filter has seen: read again.
        let (forgotten, kept) = stored.split_at(stored.len() * 3 / 5);
        sqlx::query("UPDATE idempotency_keys SET created = 0 WHERE seq <= ?1")
            .bind(forgotten.len() as i64)
            .execute(&store.pool)
            .await
            .unwrap();
        let pruned = super::Backend::forget_keys(&store, 1, 1_000_000).await;
        assert_eq!(pruned.unwrap(), forgotten.len() as u64 + 1);
        assert_eq!(locked(kept.to_vec()).await.unwrap(), kept.len());
        // Without the index, new keys and forgotten ones are still answered (none stored),
        // not one that is stored.
        sqlx::query("ALTER TABLE idempotency_keys_by_hash RENAME TO gone")
            .execute(&store.pool)
            .await
            .unwrap();
        let new: Vec<Key> = (0..1000).map(|_| keys.next()).collect();
        assert_eq!(locked(new).await.unwrap(), 0);
        assert_eq!(locked(forgotten.to_vec()).await.unwrap(), 0);
        assert!(locked(vec![kept[0].clone()]).await.is_err());
    }

    /// A database made before keys were found by hash: the keys of its key table (more than one
    /// transaction moves) and of its log are moved at start, each found with its own answer, and
    /// the old tables are gone.
    #[tokio::test]
    async fn keys_stored_before_the_index_by_hash_are_moved_at_start_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("orders.db").display());
        let old = tempfile::tempdir().unwrap();
        let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        for entry in std::fs::read_dir(&migrations).unwrap() {
            let name = entry.unwrap().file_name();
            if name.to_str().unwrap() < "20261210" {
                std::fs::copy(migrations.join(&name), old.path().join(&name)).unwrap();
            }
        }
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(old.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        let mut keys = Keys(0x2d35_8dcc_aa6c_78a5);
        let table: Vec<Key> = (0..2500).map(|_| keys.next()).collect();
        let log: Vec<Key> = (0..40).map(|_| keys.next()).collect();
        let now = expired_before(Duration::ZERO);
        let mut tx = pool.begin().await.unwrap();
        for (n, key) in table.iter().enumerate() {
            sqlx::query(
                "INSERT INTO idempotency_keys (caller, key, method, digest, answer, created)
                 VALUES (?1, ?2, 'addOrder', x'00', ?3, ?4)",
            )
            .bind(&key.caller)
            .bind(&key.key)
            .bind(format!("table {n}"))
            .bind(now)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        for (n, key) in log.iter().enumerate() {
            sqlx::query(
                "INSERT INTO recent_keys (seq, hash, caller, key, method, digest, answer, created)
                 VALUES (?1, ?2, ?3, ?4, 'addOrder', x'00', ?5, ?6)",
            )
            .bind(n as i64 + 1)
            .bind(sqlite_keys::hash(key))
            .bind(&key.caller)
            .bind(&key.key)
            .bind(format!("log {n}"))
            .bind(now)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        pool.close().await;

        let store = Sqlite::open(&StoreOptions::new(&url)).await.unwrap();
        let lookups: Vec<(&Key, i64)> = table.iter().chain(&log).map(|key| (key, 0)).collect();
        let mut conn = store.pool.acquire().await.unwrap();
        let found = sqlite_keys::stored(&mut conn, &store.recent, &lookups, false)
            .await
            .unwrap();
        for (n, key) in table.iter().enumerate() {
            assert_eq!(found[key].answer, format!("table {n}"));
        }
        for (n, key) in log.iter().enumerate() {
            assert_eq!(found[key].answer, format!("log {n}"));
        }
        let old_tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_schema
             WHERE name IN ('idempotency_keys_unhashed', 'recent_keys')",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(old_tables, 0);
        let indexed: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys_by_hash")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(
            indexed as usize,
            table.len() + log.len(),
            "every key indexed"
        );
        // Keys stored after the move go after the moved ones, in the tail.
        drop(conn);
        let new = keys.next();
        assert_eq!(
            store_keys(&store, std::slice::from_ref(&new)).await.len(),
            1
        );
        let mut conn = store.pool.acquire().await.unwrap();
        let found = sqlite_keys::stored_one(&mut conn, &store.recent, &new, 0, false)
            .await
            .unwrap();
        assert_eq!(found.map(|row| row.answer).as_deref(), Some("1"));
    }

    /// With a hundred thousand random keys stored, a tail's worth of random keys, stored 32 at a
    /// time and then indexed, writes a fraction of a page each. A table in key order, into which
    /// a log of recent keys moved, wrote half a page a key: the move changed most leaf pages of a
    /// table of rows, where the index takes two integers a key.
    #[tokio::test]
    async fn keys_stored_among_many_write_a_fraction_of_a_page_each() {
        let (dir, store) = new_store().await;
        for sql in [
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
             INSERT INTO idempotency_keys (hash, caller, key, method, digest, answer, created)
             SELECT random(), 'anonymous', lower(hex(randomblob(16))), 'addOrder',
                    randomblob(32), i, unixepoch() * 1000 FROM n",
            "INSERT INTO idempotency_keys_by_hash (hash, seq)
             SELECT hash, seq FROM idempotency_keys",
            "UPDATE idempotency_keys_indexed SET upto = (SELECT max(seq) FROM idempotency_keys)",
        ] {
            sqlx::query(sql).execute(&store.writer).await.unwrap();
        }
        // Every page written stays in the WAL, to be counted.
        sqlx::query("PRAGMA wal_autocheckpoint = 0")
            .execute(&store.writer)
            .await
            .unwrap();
        wal::empty(dir.path()).await;
        let mut keys = Keys(0x2545_f491_4f6c_dd1d);
        let batches = MERGE_AT / 32;
        for _ in 0..batches {
            store_batch(&store, &mut keys, 32).await;
        }
        let indexed: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys_by_hash")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(indexed, 100_000 + MERGE_AT, "the tail is indexed");
        let per_key = wal::pages(dir.path()) as f64 / MERGE_AT as f64;
        assert!(per_key < 0.35, "{per_key:.2} pages written per key");
    }
}

/// How many pages writes add to the WAL of `orders.db`, for tests of what a commit writes.
#[cfg(test)]
pub(super) mod wal {
    use std::path::Path;

    use sqlx::Connection as _;

    /// Checkpoints the WAL of `dir/orders.db` into the file and empties it; fails the test if a
    /// reader kept it from that.
    pub(in crate::store) async fn empty(dir: &Path) {
        let url = format!("sqlite:{}", dir.join("orders.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(busy, 0);
        let wal = std::fs::metadata(dir.join("orders.db-wal")).unwrap();
        assert_eq!(wal.len(), 0);
    }

    /// The pages in the WAL of `dir/orders.db`.
    pub(in crate::store) fn pages(dir: &Path) -> u64 {
        let len = std::fs::metadata(dir.join("orders.db-wal")).unwrap().len();
        // A WAL header, then a 24-byte header and a 4 KiB page for each page written.
        len.saturating_sub(32) / (24 + 4096)
    }
}
