//! Group commit: the writes waiting at the same time share one transaction and one commit (one
//! fsync), as every database does with its own log.
//!
//! One writer task per store takes every write that is waiting (up to [`MAX_BATCH`]) and applies
//! them in one transaction, then answers each once the commit is durable. An idle server's write
//! waits for no one: it is alone in its batch. Each write keeps its own rules:
//! - its own outcome: an ID taken, an unknown ID, an idempotency key reused fails that write only.
//!   A client stream's write runs in a savepoint of its own; an `addOrder` writes nothing before
//!   it knows it succeeds. A write that fails with the database in an unknown state has the
//!   batch rolled back and run again without it.
//! - its own gate ([`super::write::Gate`]): a caller who gave up before the commit began is not
//!   applied. Every gate is claimed before the `COMMIT`; if one was abandoned after its write
//!   ran, the batch is rolled back and run again without it.
//! - its own key, looked up and stored in the batch's transaction, as alone.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tokio::sync::{mpsc, oneshot};

use order_api::pb::Order;

use super::{
    keys::{Key, KeyRecord, Stored},
    write::Commit,
    Added as AddedOrder, Applied, Kind, Written,
};
use crate::error::{is_unavailable, Error};

/// Most writes one transaction takes.
pub(super) const MAX_BATCH: usize = 256;

/// What one call writes.
#[derive(Debug)]
pub(super) enum Work {
    /// `addOrder`.
    Add(Order),
    /// `updateOrders` or `addOrders` whose orders arrived whole (a staged one commits alone).
    Stream(Kind, Vec<Order>),
}

/// What a write did.
#[derive(Debug)]
pub(super) enum Done {
    Added(AddedOrder),
    Written(Written),
}

/// A write's answer.
pub(super) type Outcome = Result<Applied<Done>, Error>;

/// A write waiting for its batch.
#[derive(Debug)]
pub(super) struct Write {
    pub(super) work: Work,
    pub(super) commit: Commit,
}

/// A database that can apply a batch.
pub(super) trait Engine: Send + Sync {
    type Db: sqlx::Database;

    /// Begins the batch's transaction.
    fn begin(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
           + Send;

    /// Does one write inside the batch's transaction, its key looked up and stored with it. An
    /// `Err` from a stream's write is rolled back to its savepoint; from an `addOrder`, the batch
    /// runs again without it.
    /// Runs one statement of `sql` with no parameters (a savepoint's).
    fn execute<'c>(
        &'c self,
        conn: &'c mut <Self::Db as sqlx::Database>::Connection,
        sql: &'static str,
    ) -> impl std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'c;

    /// The rows stored under these keys, each unless stored before its `expired_before`.
    fn stored_keys<'c>(
        &'c self,
        conn: &'c mut <Self::Db as sqlx::Database>::Connection,
        keys: &'c [(&'c Key, i64)],
    ) -> impl std::future::Future<Output = Result<HashMap<Key, Stored>, Error>> + Send + 'c;

    /// Inserts each order under its ID, in one statement (SQLite: one per 64 orders), skipping
    /// IDs taken (by an order stored or one earlier in `orders`); returns the IDs inserted.
    fn insert_orders<'c>(
        &'c self,
        conn: &'c mut <Self::Db as sqlx::Database>::Connection,
        orders: &'c [(String, &'c Order)],
    ) -> impl std::future::Future<Output = Result<HashSet<String>, Error>> + Send + 'c;

    /// `count` new numbers of the ID sequence, in increasing order ([`Error::Exhausted`] past its
    /// end).
    fn numbers<'c>(
        &'c self,
        conn: &'c mut <Self::Db as sqlx::Database>::Connection,
        count: usize,
    ) -> impl std::future::Future<Output = Result<Vec<i64>, Error>> + Send + 'c;

    /// Stores each key with its answer, in one statement (SQLite: one per 64), over (PostgreSQL)
    /// or beside (SQLite) only rows stored before `expired_before`; returns the keys stored (one
    /// missing was stored meanwhile by another server's call). The keys were looked up in this transaction first
    /// ([`Engine::stored_keys`]) and found not stored.
    fn insert_keys<'c>(
        &'c self,
        conn: &'c mut <Self::Db as sqlx::Database>::Connection,
        keys: &'c [(&'c KeyRecord, &'c str, &'c Commit)],
        expired_before: i64,
    ) -> impl std::future::Future<Output = Result<HashSet<Key>, Error>> + Send + 'c;

    /// An `addOrder` alone in its batch (the server was idle), with no key and no ID of its own:
    /// `Some` when the engine did it in fewer round trips than a batch's transaction takes, as
    /// its own transaction, its gate claimed (see [`Commit::begin`]) before the statement that
    /// commits it; `None` to apply it as any batch.
    fn add_alone<'c>(
        &'c self,
        order: &'c Order,
        commit: &'c Commit,
    ) -> impl std::future::Future<Output = Option<Outcome>> + Send + 'c {
        let _ = (order, commit);
        async { None }
    }

    /// Writes one client stream's orders inside the batch's transaction (in a savepoint of its
    /// own: an `Err` may leave some of them written).
    fn write_stream<'c>(
        &'c self,
        conn: &'c mut <Self::Db as sqlx::Database>::Connection,
        kind: Kind,
        orders: &'c [Order],
    ) -> impl std::future::Future<Output = Result<Written, Error>> + Send + 'c;
}

/// The writer's side of the queue.
#[derive(Debug, Clone)]
pub(super) struct Queue {
    waiting: mpsc::Sender<(Write, oneshot::Sender<Outcome>)>,
    tally: Arc<Tally>,
}

/// What the group commit has done, for the metrics.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Transactions committed with at least one write done.
    commits: AtomicU64,
    /// The writes done in them.
    writes: AtomicU64,
}

/// See [`Tally`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commits {
    /// Transactions committed with at least one call's write done.
    pub commits: u64,
    /// The calls' writes done in them: `writes / commits` is the writes per commit.
    pub writes: u64,
}

impl Queue {
    /// Hands `write` to the writer and waits for its answer: after its batch's commit.
    pub(super) async fn submit(&self, work: Work, commit: Commit) -> Outcome {
        let (answer, answered) = oneshot::channel();
        self.waiting
            .send((Write { work, commit }, answer))
            .await
            .map_err(|_| Error::Database(sqlx::Error::PoolClosed))?;
        answered
            .await
            .map_err(|_| Error::Database(sqlx::Error::PoolClosed))?
    }

    /// What the group commit has done so far.
    pub(super) fn commits(&self) -> Commits {
        Commits {
            commits: self.tally.commits.load(Ordering::Relaxed),
            writes: self.tally.writes.load(Ordering::Relaxed),
        }
    }
}

/// Starts the writer of a store: `apply` applies a batch in one transaction. It stops when the
/// store (every [`Queue`]) is gone.
pub(super) fn start<F, Fut>(apply: F) -> Queue
where
    F: Fn(Vec<Write>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<Outcome>> + Send,
{
    let (queue, mut waiting) = mpsc::channel::<(Write, oneshot::Sender<Outcome>)>(4 * MAX_BATCH);
    let tally = Arc::new(Tally::default());
    let counted = tally.clone();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let (writes, answers): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
            let outcomes = apply(writes).await;
            let done = outcomes
                .iter()
                .filter(|outcome| {
                    matches!(
                        outcome,
                        Ok(Applied::Done(
                            Done::Added(AddedOrder::Id(_)) | Done::Written(_)
                        ))
                    )
                })
                .count() as u64;
            if done > 0 {
                counted.commits.fetch_add(1, Ordering::Relaxed);
                counted.writes.fetch_add(done, Ordering::Relaxed);
            }
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                // A caller gone meanwhile has nobody to tell.
                let _ = answer.send(outcome);
            }
        }
    });
    Queue {
        waiting: queue,
        tally,
    }
}

/// Applies `writes` in one transaction of `engine` and one commit; each one's outcome, in order.
pub(super) async fn apply<E: Engine>(engine: &E, writes: Vec<Write>) -> Vec<Outcome> {
    if let [Write {
        work: Work::Add(order),
        commit,
    }] = writes.as_slice()
    {
        if commit.key.is_none() && order.id.is_empty() && !commit.gate.abandoned() {
            if let Some(outcome) = engine.add_alone(order, commit).await {
                return vec![outcome];
            }
        }
    }
    let mut outcomes: Vec<Option<Outcome>> = writes.iter().map(|_| None).collect();
    loop {
        for (write, outcome) in writes.iter().zip(&mut outcomes) {
            if outcome.is_none() && write.commit.gate.abandoned() {
                *outcome = Some(Err(Error::Abandoned));
            }
        }
        match attempt(engine, &writes, &mut outcomes).await {
            Attempt::Committed(done) => {
                for (outcome, done) in outcomes.iter_mut().zip(done) {
                    if let Some(done) = done {
                        *outcome = Some(done);
                    }
                }
                break;
            }
            // Someone's outcome is now decided: the rest run again.
            Attempt::Again => {}
            Attempt::Failed(error) => {
                let mut open = outcomes.iter_mut().filter(|o| o.is_none());
                let first = open.next();
                for outcome in open {
                    *outcome = Some(Err(copy_of(&error)));
                }
                if let Some(first) = first {
                    *first = Some(Err(error));
                }
                break;
            }
        }
    }
    outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or(Err(Error::Abandoned)))
        .collect()
}

enum Attempt {
    /// The outcomes of the writes that were still open, committed.
    Committed(Vec<Option<Outcome>>),
    /// A write's outcome was decided (failed, or abandoned after it ran): run the rest again.
    Again,
    /// The batch failed as a whole: the transaction could not begin or commit.
    Failed(Error),
}

async fn attempt<E: Engine>(
    engine: &E,
    writes: &[Write],
    decided: &mut [Option<Outcome>],
) -> Attempt {
    let open: Vec<usize> = (0..writes.len())
        .filter(|&n| decided[n].is_none())
        .collect();
    if open.is_empty() {
        return Attempt::Committed(Vec::new());
    }
    let mut tx = match engine.begin().await {
        Ok(tx) => tx,
        Err(error) => return Attempt::Failed(Error::Database(error)),
    };
    let mut done: Vec<Option<Outcome>> = writes.iter().map(|_| None).collect();
    let adds: Vec<usize> = open
        .iter()
        .copied()
        .filter(|&n| matches!(writes[n].work, Work::Add(_)))
        .collect();
    if !adds.is_empty() {
        match add_all(engine, &mut tx, writes, &adds).await {
            Ok(Adds::All(outcomes)) => {
                for (n, outcome) in outcomes {
                    done[n] = Some(outcome);
                }
            }
            Ok(Adds::Again(failed)) => {
                for (n, error) in failed {
                    decided[n] = Some(Err(error));
                }
                return Attempt::Again;
            }
            Err(error) => return Attempt::Failed(error),
        }
    }
    for &n in &open {
        let Write {
            work: Work::Stream(kind, orders),
            commit,
        } = &writes[n]
        else {
            continue;
        };
        match in_savepoint(engine, &mut tx, *kind, orders, commit).await {
            // A database error: the transaction may be unusable (PostgreSQL aborts it on any
            // error; the connection may be gone, and sqlx has been seen to answer a later
            // `COMMIT` on it with success). Nothing of it is committed: the others run again,
            // in a new one.
            Err(error @ (Error::Database(_) | Error::InDoubt(_))) => {
                decided[n] = Some(Err(error));
                return Attempt::Again;
            }
            outcome => done[n] = Some(outcome),
        }
    }
    // Claim every gate of a write that changed something before the commit.
    let mut committing = Vec::new();
    for &n in &open {
        if let Some(Ok(Applied::Done(_))) = &done[n] {
            match writes[n].commit.begin() {
                Ok(guard) => committing.push(guard),
                Err(abandoned) => {
                    decided[n] = Some(Err(abandoned));
                    return Attempt::Again;
                }
            }
        }
    }
    if let Err(error) = tx.commit().await {
        return Attempt::Failed(Error::InDoubt(error));
    }
    drop(committing);
    Attempt::Committed(done)
}

/// What the `addOrder`s of a batch did.
enum Adds {
    /// Each one's outcome.
    All(Vec<(usize, Outcome)>),
    /// These failed after their order was inserted: run the batch again without them.
    Again(Vec<(usize, Error)>),
}

/// Every `addOrder` of the batch (`adds`, indexes into `writes`) in a few statements whatever
/// their number: their keys looked up together, the orders with an ID inserted together, then
/// the others under numbers of the ID sequence (again for those whose number an order has as
/// its own ID), then the keys stored together. An ID taken, a key reused or a caller gone fails
/// that call only, and writes nothing of it.
async fn add_all<E: Engine>(
    engine: &E,
    tx: &mut sqlx::Transaction<'static, E::Db>,
    writes: &[Write],
    adds: &[usize],
) -> Result<Adds, Error> {
    let mut outcomes: HashMap<usize, Outcome> = HashMap::new();
    let keys: Vec<(&Key, i64)> = adds
        .iter()
        .filter_map(|&n| {
            let commit = &writes[n].commit;
            commit
                .key
                .as_ref()
                .map(|key| (&key.key, commit.keys_expired_before))
        })
        .collect();
    let mut stored = match keys.is_empty() {
        true => HashMap::new(),
        false => engine.stored_keys(&mut **tx, &keys).await?,
    };
    let mut explicit = Vec::new();
    let mut numbered = Vec::new();
    for &n in adds {
        let Write {
            work: Work::Add(order),
            commit,
        } = &writes[n]
        else {
            continue;
        };
        if commit.gate.abandoned() {
            outcomes.insert(n, Err(Error::Abandoned));
            continue;
        }
        if let Some(key) = &commit.key {
            match key.replay(stored.remove(&key.key)) {
                Ok(None) => {}
                Ok(Some(answer)) => {
                    outcomes.insert(n, Ok(Applied::Replayed(answer)));
                    continue;
                }
                Err(error) => {
                    outcomes.insert(n, Err(error));
                    continue;
                }
            }
        }
        match order.id.is_empty() {
            true => numbered.push((n, order)),
            false => explicit.push((n, order)),
        }
    }
    if !explicit.is_empty() {
        let rows: Vec<(String, &Order)> = explicit
            .iter()
            .map(|(_, order)| (order.id.clone(), *order))
            .collect();
        let mut inserted = engine.insert_orders(&mut **tx, &rows).await?;
        for (n, order) in explicit {
            let added = match inserted.remove(&order.id) {
                true => AddedOrder::Id(order.id.clone()),
                false => AddedOrder::Taken,
            };
            outcomes.insert(n, Ok(Applied::Done(Done::Added(added))));
        }
    }
    while !numbered.is_empty() {
        let numbers = match engine.numbers(&mut **tx, numbered.len()).await {
            Ok(numbers) => numbers,
            // PostgreSQL has aborted the transaction: the others run again.
            Err(Error::Exhausted(what)) => {
                let failed = numbered.iter().map(|&(n, _)| (n, Error::Exhausted(what)));
                return Ok(Adds::Again(failed.collect()));
            }
            Err(error) => return Err(error),
        };
        let rows: Vec<(String, &Order)> = numbered
            .iter()
            .zip(&numbers)
            .map(|((_, order), number)| (number.to_string(), *order))
            .collect();
        let inserted = engine.insert_orders(&mut **tx, &rows).await?;
        let mut taken = Vec::new();
        for ((n, order), (id, _)) in numbered.into_iter().zip(rows) {
            match inserted.contains(&id) {
                true => {
                    outcomes.insert(n, Ok(Applied::Done(Done::Added(AddedOrder::Id(id)))));
                }
                // An order has this number as its own ID: the next ones.
                false => taken.push((n, order)),
            }
        }
        numbered = taken;
    }
    let records: Vec<(&KeyRecord, &str, &Commit)> = adds
        .iter()
        .filter_map(|n| match (&writes[*n].commit.key, outcomes.get(n)) {
            (Some(key), Some(Ok(Applied::Done(Done::Added(AddedOrder::Id(id)))))) => {
                Some((key, id.as_str(), &writes[*n].commit))
            }
            _ => None,
        })
        .collect();
    if !records.is_empty() {
        // The latest of their expiry times: a row these keys found unexpired was answered from
        // above and never comes here, so only rows expired for their own call (or stored
        // meanwhile by another server's call, which is newer than any) meet this bound.
        let expired_before = records
            .iter()
            .map(|(_, _, commit)| commit.keys_expired_before)
            .max()
            .unwrap_or(i64::MIN);
        let kept = engine
            .insert_keys(&mut **tx, &records, expired_before)
            .await?;
        let lost: Vec<(usize, Error)> = records
            .iter()
            .filter(|(record, _, _)| !kept.contains(&record.key))
            .filter_map(|(record, _, _)| {
                let n = adds.iter().copied().find(|&n| {
                    writes[n].commit.key.as_ref().map(|k| &k.key) == Some(&record.key)
                })?;
                Some((n, Error::KeyInProgress(record.key.key.clone())))
            })
            .collect();
        if !lost.is_empty() {
            return Ok(Adds::Again(lost));
        }
    }
    Ok(Adds::All(outcomes.into_iter().collect()))
}

/// A key lookup's rows (`caller, key, method, digest, answer`) by key.
pub(super) fn stored_by_key(
    rows: Vec<(String, String, String, Vec<u8>, String)>,
) -> HashMap<Key, Stored> {
    rows.into_iter()
        .map(|(caller, key, method, digest, answer)| {
            let stored = Stored {
                method,
                digest,
                answer,
            };
            (Key { caller, key }, stored)
        })
        .collect()
}

/// The keys an insert of keys returned (`caller, key`).
pub(super) fn keys_of(rows: Vec<(String, String)>) -> HashSet<Key> {
    rows.into_iter()
        .map(|(caller, key)| Key { caller, key })
        .collect()
}

/// Runs a stream's write in a savepoint: rolled back alone if it fails. Plain statements, not
/// sqlx's nested transactions, so that the batch's transaction is the only one sqlx knows of.
async fn in_savepoint<E: Engine>(
    engine: &E,
    tx: &mut sqlx::Transaction<'static, E::Db>,
    kind: Kind,
    orders: &[Order],
    commit: &Commit,
) -> Outcome {
    engine.execute(&mut **tx, "SAVEPOINT write").await?;
    let outcome = stream_in(engine, &mut **tx, kind, orders, commit).await;
    if outcome.is_err() {
        engine
            .execute(&mut **tx, "ROLLBACK TO SAVEPOINT write")
            .await?;
    }
    engine.execute(&mut **tx, "RELEASE SAVEPOINT write").await?;
    outcome
}

/// A stream's write with its key: the key looked up (its stored answer when it names the same
/// request), the orders written, the key stored with the answer, with the engine's batch
/// statements for one.
async fn stream_in<E: Engine>(
    engine: &E,
    conn: &mut <E::Db as sqlx::Database>::Connection,
    kind: Kind,
    orders: &[Order],
    commit: &Commit,
) -> Outcome {
    commit.still_wanted()?;
    if let Some(key) = &commit.key {
        let lookup = [(&key.key, commit.keys_expired_before)];
        let mut stored = engine.stored_keys(&mut *conn, &lookup).await?;
        if let Some(answer) = key.replay(stored.remove(&key.key))? {
            return Ok(Applied::Replayed(answer));
        }
    }
    let written = engine.write_stream(&mut *conn, kind, orders).await?;
    if let Some(key) = &commit.key {
        let answer = written.to_string();
        let record = [(key, answer.as_str(), commit)];
        let kept = engine
            .insert_keys(&mut *conn, &record, commit.keys_expired_before)
            .await?;
        if !kept.contains(&key.key) {
            return Err(Error::KeyInProgress(key.key.key.clone()));
        }
    }
    Ok(Applied::Done(Done::Written(written)))
}

/// The same failure for another write of the batch (a database error is not `Clone`): unavailable
/// stays unavailable, in doubt stays in doubt, anything else is internal. The first write keeps
/// the original, which is logged.
fn copy_of(error: &Error) -> Error {
    let copy = |error: &sqlx::Error| match is_unavailable(error) {
        true => sqlx::Error::PoolTimedOut,
        false => sqlx::Error::Configuration(error.to_string().into()),
    };
    match error {
        Error::InDoubt(error) => Error::InDoubt(copy(error)),
        Error::Database(error) => Error::Database(copy(error)),
        other => Error::Database(sqlx::Error::Configuration(other.to_string().into())),
    }
}
