//! The shared store: PostgreSQL, for any number of servers behind a load balancer. IDs come from
//! database sequences, so they are unique across all of them; every write is committed (and so
//! durable, with PostgreSQL's default `synchronous_commit`) before the call is answered.

use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
};

use order_api::pb::Order;
use sqlx::{
    postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow},
    PgConnection, Postgres as Pg, Row, Transaction,
};
use tokio::time::Instant;

use super::{
    batch::{self, Done, Outcome, Write},
    json,
    keys::{remember, stored, Key, KeyRecord, Stored},
    last_sample_id, redact, sample_orders,
    search::{search_text, Plan, Search, WALK_ROWS},
    uncancelled, until,
    write::Commit,
    Added, Applied, Backend, Kind, OpenError, Page, Staging, StoreOptions, Written,
};
use crate::error::Error;

const COLUMNS: &str = "id, items, description, price, destination";

/// A pool of connections to one PostgreSQL database.
#[derive(Debug)]
pub(super) struct Postgres {
    pool: PgPool,
}

impl Postgres {
    pub(super) async fn open(options: &StoreOptions) -> Result<Self, OpenError> {
        let url = &options.url;
        let connect = PgConnectOptions::from_str(url)
            .map_err(|source| OpenError::Url {
                url: redact(url),
                source,
            })?
            .application_name("order-server")
            // A write waits for another transaction's lock at most as long as the store waits
            // for anything (`--database-timeout`), then fails, not applied: UNAVAILABLE.
            .options([(
                "lock_timeout",
                format!("{}ms", options.timeout.as_millis().max(1)),
            )]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.timeout)
            // Check a pooled connection before use: after a database restart the old ones are
            // gone, and a call should get a fresh one rather than an error.
            .test_before_acquire(true)
            .connect_with(connect)
            .await
            .map_err(|source| OpenError::Connect {
                url: redact(url),
                source,
            })?;
        // sqlx takes an advisory lock, so servers starting together migrate one at a time.
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|source| OpenError::Migrate {
                url: redact(url),
                source,
            })?;
        let store = Self { pool };
        store
            .fill_search_text()
            .await
            .map_err(|source| OpenError::Connect {
                url: redact(url),
                source,
            })?;
        store
            .set_up(options.sample_data)
            .await
            .map_err(|source| OpenError::Connect {
                url: redact(url),
                source,
            })?;
        Ok(store)
    }

    /// Fills the `search_text` of the orders stored before search was indexed (NULL since that
    /// migration), a thousand per statement: once, at the first start after the upgrade.
    async fn fill_search_text(&self) -> Result<(), sqlx::Error> {
        let mut after = String::new();
        let mut filled = 0_usize;
        loop {
            let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
                "SELECT id, items FROM orders WHERE id > $1 AND search_text IS NULL
                 ORDER BY id LIMIT 1000",
            )
            .bind(&after)
            .fetch_all(&self.pool)
            .await?;
            let Some((last, _)) = rows.last() else {
                break;
            };
            after.clone_from(last);
            filled += rows.len();
            let (ids, texts): (Vec<String>, Vec<String>) = rows
                .into_iter()
                .map(|(id, items)| (id, search_text(&items)))
                .unzip();
            // Another server filling too, or a write meanwhile, writes the same text.
            sqlx::query(
                "UPDATE orders SET search_text = t.text
                 FROM unnest($1::text[], $2::text[]) AS t(id, text)
                 WHERE orders.id = t.id AND orders.search_text IS NULL",
            )
            .bind(&ids)
            .bind(&texts)
            .execute(&self.pool)
            .await?;
        }
        if filled > 0 {
            tracing::info!(orders = filled, "indexed the stored orders for search");
        }
        Ok(())
    }

    /// Marks the database as set up and, the first time only, stores the sample orders. Servers
    /// starting together wait on the one that inserts the mark, then find it there.
    async fn set_up(&self, sample_data: bool) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query(
            "INSERT INTO store_info (key, value) VALUES ('created', now()::text)
             ON CONFLICT (key) DO NOTHING",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if created && sample_data {
            for order in sample_orders() {
                insert(&mut tx, &order).await?;
            }
            sqlx::query("SELECT setval('order_ids', $1)")
                .bind(last_sample_id())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
}

/// Inserts `order` under its own ID; false when that ID is taken.
async fn insert(conn: &mut PgConnection, order: &Order) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO orders (id, items, description, price, destination, search_text)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&order.id)
    .bind(&order.items)
    .bind(&order.description)
    .bind(order.price)
    .bind(&order.destination)
    .bind(search_text(&order.items))
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Inserts `order` under the next free number of the ID sequence, which it returns. One
/// statement: the number comes from the sequence and, if an order was added with that number as
/// its own ID, the next one is tried.
async fn insert_numbered(conn: &mut PgConnection, order: &Order) -> Result<String, Error> {
    loop {
        let id: Option<String> = sqlx::query_scalar(
            "INSERT INTO orders (id, items, description, price, destination, search_text)
             VALUES (nextval('order_ids')::text, $1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(&order.items)
        .bind(&order.description)
        .bind(order.price)
        .bind(&order.destination)
        .bind(search_text(&order.items))
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| match exhausted(&e) {
            true => Error::Exhausted("order IDs"),
            false => e.into(),
        })?;
        if let Some(id) = id {
            return Ok(id);
        }
    }
}

/// Up to `$2` orders after the ID `$1`, in ID order (shorter IDs first). Made once, not for
/// every page.
static PAGE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM orders
         WHERE (length(id), id) > (length($1), $1 COLLATE \"C\")
         ORDER BY length(id), id LIMIT $2"
    )
});

/// A walking search's page: of the next `$3` orders after the ID `$1` in ID order, the first
/// `$2` whose search text contains `$4`. PostgreSQL reads the window lazily, and stops at `$2`.
static WALK_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM (
             SELECT {COLUMNS}, search_text, length(id) AS len FROM orders
             WHERE (length(id), id) > (length($1), $1 COLLATE \"C\")
             ORDER BY length(id), id LIMIT $3
         ) AS walked
         WHERE strpos(search_text, $4) > 0 OR search_text IS NULL
         ORDER BY len, id LIMIT $2"
    )
});

/// The ID `$2` orders after the ID `$1`: where a walk's window ended.
const WINDOW_END_SQL: &str = "SELECT id FROM orders
     WHERE (length(id), id) > (length($1), $1 COLLATE \"C\")
     ORDER BY length(id), id OFFSET $2 LIMIT 1";

/// Up to `$2` orders after the ID `$1` whose search text is `LIKE` `$3`, in ID order. The order
/// and cursor are written `length(id) + 0` so that no plan walks the ID index (a whole-table
/// scan for a rare term): the trigram index finds the candidates, and only they are sorted.
static FOUND_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM orders
         WHERE search_text LIKE $3
           AND (length(id) + 0, id) > (length($1), $1 COLLATE \"C\")
         ORDER BY length(id) + 0, id LIMIT $2"
    )
});

fn order(row: &PgRow) -> Result<Order, sqlx::Error> {
    Ok(Order {
        id: row.try_get("id")?,
        items: row.try_get("items")?,
        description: row.try_get("description")?,
        price: row.try_get("price")?,
        destination: row.try_get("destination")?,
    })
}

/// See [`batch::Engine::add_alone`]: [`insert_numbered`] as a statement of its own.
async fn add_numbered(pool: &PgPool, order: &Order, commit: &Commit) -> Outcome {
    let mut conn = pool.acquire().await?;
    let _committing = commit.begin()?;
    match insert_numbered(&mut conn, order).await {
        Ok(id) => Ok(Applied::Done(Done::Added(Added::Id(id)))),
        // The statement was sent and its answer lost, not refused by PostgreSQL: it may have
        // committed.
        Err(Error::Database(e)) if !matches!(e, sqlx::Error::Database(_)) => Err(Error::InDoubt(e)),
        Err(e) => Err(e),
    }
}

/// A sequence past its maximum ("nextval: reached maximum value of sequence").
fn exhausted(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("2200H"))
}

/// A client stream's orders written as they arrive inside one transaction, which commits only
/// when the stream has ended well and its caller still wants it; dropped, it rolls back. Row
/// locks are held on the updated orders only.
struct PgStaging {
    tx: Transaction<'static, Pg>,
    kind: Kind,
    written: Written,
    seen: HashSet<String>,
    /// The key's row, found when the transaction began: the same request done before (checked
    /// once the whole request is known), and nothing is written meanwhile.
    replay: Option<Stored>,
}

#[tonic::async_trait]
impl Staging for PgStaging {
    async fn push(&mut self, orders: Vec<Order>, deadline: Instant) -> Result<(), Error> {
        if self.replay.is_some() {
            return Ok(());
        }
        for order in orders {
            let id = until(deadline, write_one(&mut self.tx, &order, self.kind)).await?;
            self.written.record(&id, &mut self.seen);
        }
        Ok(())
    }

    async fn apply(mut self: Box<Self>, commit: Commit) -> Result<Applied<Written>, Error> {
        if let Some(key) = &commit.key {
            if let Some(answer) = key.replay(self.replay.take())? {
                return Ok(Applied::Replayed(answer));
            }
            let answer = self.written.to_string();
            until(
                commit.deadline,
                remember(
                    &mut *self.tx,
                    key,
                    &answer,
                    commit.now,
                    commit.keys_expired_before,
                ),
            )
            .await?;
        }
        commit.commit(self.tx).await?;
        Ok(Applied::Done(self.written))
    }
}

/// Replaces (`NOT_FOUND` if it does not exist) or stores (`ALREADY_EXISTS` if its ID is taken)
/// `order`; returns its ID.
async fn write_one(conn: &mut PgConnection, order: &Order, kind: Kind) -> Result<String, Error> {
    match kind {
        Kind::Update => {
            let changed = sqlx::query(
                "UPDATE orders SET items = $2, description = $3, price = $4,
                     destination = $5, search_text = $6 WHERE id = $1",
            )
            .bind(&order.id)
            .bind(&order.items)
            .bind(&order.description)
            .bind(order.price)
            .bind(&order.destination)
            .bind(search_text(&order.items))
            .execute(conn)
            .await?
            .rows_affected();
            if changed == 0 {
                return Err(Error::NotFound(order.id.clone()));
            }
            Ok(order.id.clone())
        }
        Kind::Add if order.id.is_empty() => insert_numbered(conn, order).await,
        Kind::Add => match insert(conn, order).await? {
            true => Ok(order.id.clone()),
            false => Err(Error::AlreadyExists(order.id.clone())),
        },
    }
}

/// The rows stored under the keys of `$1` to `$3` (arrays of callers, keys and each key's
/// `expired_before`), a key at a time through the index (the file says why; a test plans it on an
/// empty table).
const STORED_KEYS_SQL: &str = include_str!("stored_keys.pg.sql");

/// Inserts the orders of `$1` (a JSON array of `[id, items, description, price, destination,
/// search text]`), skipping IDs taken; the IDs inserted.
const INSERT_ORDERS_SQL: &str =
    "INSERT INTO orders (id, items, description, price, destination, search_text)
     SELECT j->>0,
            ARRAY(SELECT item FROM json_array_elements_text(j->1) WITH ORDINALITY AS i(item, n)
                  ORDER BY n),
            j->>2, (j->>3)::real, j->>4, j->>5
     FROM json_array_elements($1::json) AS j
     ON CONFLICT (id) DO NOTHING RETURNING id";

/// Stores the keys of `$1` to `$6` (arrays of callers, keys, methods, digests, answers and
/// creation times, one element a key) as [`super::keys::INSERT_KEY`] does one; the keys stored.
const INSERT_KEYS_SQL: &str =
    "INSERT INTO idempotency_keys (caller, key, method, digest, answer, created)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                          $6::bigint[])
     ON CONFLICT (caller, key) DO UPDATE SET method = excluded.method,
         digest = excluded.digest, answer = excluded.answer, created = excluded.created
     WHERE idempotency_keys.created < $7
     RETURNING caller, key";

/// One field of every row, as the array a statement `unnest`s.
fn column<'a, R, T>(rows: &'a [R], field: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(field).collect()
}

impl batch::Engine for Postgres {
    type Db = Pg;

    async fn stored_keys<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        keys: &'c [(&'c Key, i64)],
    ) -> Result<HashMap<Key, Stored>, Error> {
        let rows = sqlx::query_as(STORED_KEYS_SQL)
            .bind(column(keys, |(key, _)| key.caller.as_str()))
            .bind(column(keys, |(key, _)| key.key.as_str()))
            .bind(column(keys, |&(_, expired)| expired))
            .fetch_all(conn)
            .await?;
        Ok(batch::stored_by_key(rows))
    }

    async fn insert_orders<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        orders: &'c [(String, &'c Order)],
    ) -> Result<HashSet<String>, Error> {
        let json = json(
            &orders
                .iter()
                .map(|(id, order)| {
                    (
                        id,
                        &order.items,
                        &order.description,
                        order.price,
                        &order.destination,
                        search_text(&order.items),
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        let ids: Vec<String> = sqlx::query_scalar(INSERT_ORDERS_SQL)
            .bind(json)
            .fetch_all(conn)
            .await?;
        Ok(ids.into_iter().collect())
    }

    async fn numbers<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        count: usize,
    ) -> Result<Vec<i64>, Error> {
        let mut numbers: Vec<i64> =
            sqlx::query_scalar("SELECT nextval('order_ids') FROM generate_series(1, $1)")
                .bind(count as i64)
                .fetch_all(conn)
                .await
                .map_err(|e| match exhausted(&e) {
                    true => Error::Exhausted("order IDs"),
                    false => e.into(),
                })?;
        numbers.sort_unstable();
        Ok(numbers)
    }

    async fn insert_keys<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        keys: &'c [(&'c KeyRecord, &'c str, &'c Commit)],
        expired_before: i64,
    ) -> Result<HashSet<Key>, Error> {
        let kept = sqlx::query_as(INSERT_KEYS_SQL)
            .bind(column(keys, |(record, _, _)| record.key.caller.as_str()))
            .bind(column(keys, |(record, _, _)| record.key.key.as_str()))
            .bind(column(keys, |(record, _, _)| record.method))
            .bind(column(keys, |(record, _, _)| record.digest.as_slice()))
            .bind(column(keys, |(_, answer, _)| *answer))
            .bind(column(keys, |(_, _, commit)| commit.now))
            .bind(expired_before)
            .fetch_all(conn)
            .await?;
        Ok(batch::keys_of(kept))
    }

    async fn begin(&self) -> Result<Transaction<'static, Pg>, sqlx::Error> {
        self.pool.begin().await
    }

    /// One statement, one round trip, where a batch's transaction takes four (`BEGIN`, the
    /// number, the insert, `COMMIT`): one `addOrder` at a time is as quick as before group
    /// commit.
    async fn add_alone<'c>(&'c self, order: &'c Order, commit: &'c Commit) -> Option<Outcome> {
        Some(add_numbered(&self.pool, order, commit).await)
    }

    async fn execute<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        sql: &'static str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(conn).await.map(|_| ())
    }

    /// One statement an order, as a long stream's are.
    async fn write_stream<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        kind: Kind,
        orders: &'c [Order],
    ) -> Result<Written, Error> {
        let mut written = match kind {
            Kind::Update => Written::updated(),
            Kind::Add => Written::added(),
        };
        let mut seen = HashSet::new();
        for order in orders {
            let id = write_one(conn, order, kind).await?;
            written.record(&id, &mut seen);
        }
        Ok(written)
    }
}

#[tonic::async_trait]
impl Backend for Postgres {
    async fn get(&self, id: &str) -> Result<Option<Order>, Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
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
            Plan::Index if search.indexed() => {
                let rows = sqlx::query(&FOUND_SQL)
                    .bind(after)
                    .bind(limit)
                    .bind(&search.like)
                    .fetch(&self.pool);
                Page::read(rows, limit, max_bytes, order).await
            }
            Plan::Walk | Plan::Index => {
                let rows = sqlx::query(&WALK_SQL)
                    .bind(after)
                    .bind(limit)
                    .bind(WALK_ROWS)
                    .bind(&search.needle)
                    .fetch(&self.pool);
                let mut page = Page::read(rows, limit, max_bytes, order).await?;
                if page.last {
                    // Fewer matches than asked for: the window ended, or the store did.
                    page.resume = sqlx::query_scalar(WINDOW_END_SQL)
                        .bind(after)
                        .bind(WALK_ROWS - 1)
                        .fetch_optional(&self.pool)
                        .await?;
                    page.last = page.resume.is_none();
                }
                Ok(page)
            }
        }
    }

    async fn stage(
        &self,
        kind: Kind,
        key: Option<&Key>,
        keys_expired_before: i64,
        deadline: Instant,
    ) -> Result<Box<dyn Staging>, Error> {
        // Begun on a task of its own (see `uncancelled`); the rest may be cancelled safely: a
        // dropped transaction is rolled back.
        let pool = self.pool.clone();
        let begin = uncancelled(async move { Ok(pool.begin().await?) });
        let mut tx = until(deadline, begin).await?;
        let replay = match key {
            Some(key) => until(deadline, stored(&mut *tx, key, keys_expired_before)).await?,
            None => None,
        };
        Ok(Box::new(PgStaging {
            tx,
            kind,
            written: match kind {
                Kind::Update => Written::updated(),
                Kind::Add => Written::added(),
            },
            seen: HashSet::new(),
            replay,
        }))
    }

    async fn stored_key(&self, key: &Key, expired_before: i64) -> Result<Option<Stored>, Error> {
        stored(&self.pool, key, expired_before).await
    }

    async fn remember_key(&self, commit: Commit, answer: String) -> Result<(), Error> {
        let Some(key) = &commit.key else {
            return Ok(());
        };
        commit.still_wanted()?;
        let mut tx = self.pool.begin().await?;
        remember(
            &mut *tx,
            key,
            &answer,
            commit.now,
            commit.keys_expired_before,
        )
        .await?;
        commit.commit(tx).await
    }

    async fn forget_keys(&self, before: i64, limit: i64) -> Result<u64, Error> {
        Ok(sqlx::query(
            "DELETE FROM idempotency_keys WHERE ctid IN
                 (SELECT ctid FROM idempotency_keys WHERE created < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn next_shipment(&self) -> Result<i64, Error> {
        sqlx::query_scalar("SELECT nextval('shipment_ids')")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| match exhausted(&e) {
                true => Error::Exhausted("shipment IDs"),
                false => e.into(),
            })
    }

    fn pool_use(&self) -> super::PoolUse {
        super::PoolUse::of(&self.pool)
    }

    async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
