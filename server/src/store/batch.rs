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

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::sync::{mpsc, oneshot};

use order_api::pb::Order;

use super::{write::Commit, Added, Applied, Kind, Written};
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
    Added(Added),
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

    fn run<'c>(
        &'c self,
        conn: &'c mut <Self::Db as sqlx::Database>::Connection,
        write: &'c Write,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'c;
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
                        Ok(Applied::Done(Done::Added(Added::Id(_)) | Done::Written(_)))
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
    for &n in &open {
        let write = &writes[n];
        let outcome = match &write.work {
            Work::Add(_) => engine.run(&mut *tx, write).await,
            Work::Stream(..) => in_savepoint(engine, &mut tx, write).await,
        };
        match outcome {
            // An `addOrder` that failed, or a database error anywhere: the transaction may be
            // unusable (PostgreSQL aborts it on any error; the connection may be gone, and
            // sqlx has been seen to answer a later `COMMIT` on it with success). Nothing of it
            // is committed: the others run again, in a new one.
            Err(error)
                if matches!(write.work, Work::Add(_))
                    || matches!(error, Error::Database(_) | Error::InDoubt(_)) =>
            {
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

/// Runs a stream's write in a savepoint: rolled back alone if it fails. Plain statements, not
/// sqlx's nested transactions, so that the batch's transaction is the only one sqlx knows of.
async fn in_savepoint<E: Engine>(
    engine: &E,
    tx: &mut sqlx::Transaction<'static, E::Db>,
    write: &Write,
) -> Outcome {
    engine.execute(&mut **tx, "SAVEPOINT write").await?;
    let outcome = engine.run(&mut **tx, write).await;
    if outcome.is_err() {
        engine
            .execute(&mut **tx, "ROLLBACK TO SAVEPOINT write")
            .await?;
    }
    engine.execute(&mut **tx, "RELEASE SAVEPOINT write").await?;
    outcome
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
