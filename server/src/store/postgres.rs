//! The shared store: PostgreSQL, for any number of servers behind a load balancer. IDs come from
//! database sequences, so they are unique across all of them; every write is committed (and so
//! durable, with PostgreSQL's default `synchronous_commit`) before the call is answered.

use std::{str::FromStr, time::Duration};

use futures::StreamExt;
use order_api::pb::Order;
use sqlx::{
    postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow},
    PgConnection, Row,
};

use super::{
    last_sample_id, redact, sample_orders, uncancelled, within, Added, Backend, OpenError,
    OrderStream, StoreOptions, Written,
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
            .application_name("order-server");
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
            .set_up(options.sample_data)
            .await
            .map_err(|source| OpenError::Connect {
                url: redact(url),
                source,
            })?;
        Ok(store)
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
        "INSERT INTO orders (id, items, description, price, destination)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&order.id)
    .bind(&order.items)
    .bind(&order.description)
    .bind(order.price)
    .bind(&order.destination)
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
            "INSERT INTO orders (id, items, description, price, destination)
             VALUES (nextval('order_ids')::text, $1, $2, $3, $4)
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(&order.items)
        .bind(&order.description)
        .bind(order.price)
        .bind(&order.destination)
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

fn order(row: &PgRow) -> Result<Order, sqlx::Error> {
    Ok(Order {
        id: row.try_get("id")?,
        items: row.try_get("items")?,
        description: row.try_get("description")?,
        price: row.try_get("price")?,
        destination: row.try_get("destination")?,
    })
}

/// A sequence past its maximum ("nextval: reached maximum value of sequence").
fn exhausted(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("2200H"))
}

/// What a client stream does with each of its orders.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// `updateOrders`: replace an existing order.
    Update,
    /// `addOrders`: store a new one.
    Add,
}

impl Postgres {
    /// Applies each order of `orders` as it arrives inside one transaction, which commits only
    /// after the client's stream ended well; any failure drops it, which rolls it back.
    async fn write_each(
        &self,
        mut orders: OrderStream<'_>,
        timeout: Duration,
        step: Step,
    ) -> Result<Written, Error> {
        // Begun on a task of its own (see `uncancelled`); the rest may be cancelled safely: a
        // dropped transaction is rolled back.
        let pool = self.pool.clone();
        let begin = uncancelled(async move { Ok(pool.begin().await?) });
        let mut tx = within(timeout, begin).await?;
        let mut written = match step {
            Step::Update => Written::updated(),
            Step::Add => Written::added(),
        };
        while let Some(next) = orders.next().await {
            let id = within(timeout, write_one(&mut tx, next?.into_inner(), step)).await?;
            written.record(&id);
        }
        within(timeout, async { Ok(tx.commit().await?) }).await?;
        Ok(written)
    }
}

/// Replaces (`NOT_FOUND` if it does not exist) or stores (`ALREADY_EXISTS` if its ID is taken)
/// `order`; returns its ID.
async fn write_one(conn: &mut PgConnection, order: Order, step: Step) -> Result<String, Error> {
    match step {
        Step::Update => {
            let changed = sqlx::query(
                "UPDATE orders SET items = $2, description = $3, price = $4,
                     destination = $5 WHERE id = $1",
            )
            .bind(&order.id)
            .bind(&order.items)
            .bind(&order.description)
            .bind(order.price)
            .bind(&order.destination)
            .execute(conn)
            .await?
            .rows_affected();
            if changed == 0 {
                return Err(Error::NotFound(order.id));
            }
            Ok(order.id)
        }
        Step::Add if order.id.is_empty() => insert_numbered(conn, &order).await,
        Step::Add => match insert(conn, &order).await? {
            true => Ok(order.id),
            false => Err(Error::AlreadyExists(order.id)),
        },
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

    async fn add(&self, new: Order) -> Result<Added, Error> {
        let mut conn = self.pool.acquire().await?;
        if !new.id.is_empty() {
            return Ok(match insert(&mut conn, &new).await? {
                true => Added::Id(new.id),
                false => Added::Taken,
            });
        }
        Ok(Added::Id(insert_numbered(&mut conn, &new).await?))
    }

    async fn page(&self, after: &str, limit: i64) -> Result<Vec<Order>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM orders
             WHERE (length(id), id) > (length($1), $1 COLLATE \"C\")
             ORDER BY length(id), id LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(order).collect::<Result<_, _>>()?)
    }

    /// Row locks are held on the updated orders only.
    async fn update_all(
        &self,
        orders: OrderStream<'_>,
        timeout: Duration,
    ) -> Result<Written, Error> {
        self.write_each(orders, timeout, Step::Update).await
    }

    async fn add_all(&self, orders: OrderStream<'_>, timeout: Duration) -> Result<Written, Error> {
        self.write_each(orders, timeout, Step::Add).await
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
