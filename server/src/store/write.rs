//! What keeps a write honest: it commits only while its caller still wants it ([`Gate`]), with
//! the read cache invalidated around its commit by the work itself, never by a caller that may
//! be gone ([`Commit::begin`]).

use std::{
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{cache::ReadCache, keys::KeyRecord};
use crate::error::Error;

const WANTED: u8 = 0;
const COMMITTING: u8 = 1;
const ABANDONED: u8 = 2;

/// Shared by a write's caller and the task doing it: the task may commit only if the caller has
/// not given up, and the caller may say "not applied" only if the task will not commit. Whoever
/// comes first decides.
#[derive(Debug, Clone, Default)]
pub(super) struct Gate(Arc<AtomicU8>);

impl Gate {
    /// The task is about to commit: true if it may (the caller still waits for it).
    fn commit(&self) -> bool {
        match self
            .0
            .compare_exchange(WANTED, COMMITTING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == COMMITTING,
        }
    }

    /// The caller gives up: true if the task will never commit, false if its commit has begun.
    pub(super) fn abandon(&self) -> bool {
        match self
            .0
            .compare_exchange(WANTED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == ABANDONED,
        }
    }

    /// True once the caller gave up before the commit: the work can stop early.
    pub(super) fn abandoned(&self) -> bool {
        self.0.load(Ordering::Acquire) == ABANDONED
    }

    /// Gives up when dropped (the caller's future was dropped: its client went away or its
    /// deadline passed). After the outcome is known this changes nothing.
    pub(super) fn abandon_on_drop(&self) -> AbandonOnDrop {
        AbandonOnDrop(self.clone())
    }
}

/// See [`Gate::abandon_on_drop`].
pub(super) struct AbandonOnDrop(Gate);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// Everything a backend needs to commit a write: its idempotency key, its gate, when to stop
/// waiting for the database, and the cache to invalidate if it changes existing orders.
#[derive(Debug)]
pub(super) struct Commit {
    pub(super) key: Option<KeyRecord>,
    pub(super) gate: Gate,
    /// The one deadline of the write: pool wait, lock wait and work.
    pub(super) deadline: Instant,
    /// Keys stored before this (Unix milliseconds) have expired: they are ignored and replaced.
    pub(super) keys_expired_before: i64,
    /// When the key is stored (Unix milliseconds).
    pub(super) now: i64,
    cache: Option<Arc<ReadCache>>,
}

impl Commit {
    pub(super) fn new(
        key: Option<KeyRecord>,
        deadline: Instant,
        key_ttl: Duration,
        cache: Option<Arc<ReadCache>>,
    ) -> Self {
        Self {
            key,
            gate: Gate::default(),
            deadline,
            keys_expired_before: super::keys::expired_before(key_ttl),
            now: super::keys::unix_millis(),
            cache,
        }
    }

    /// Fails with [`Error::Abandoned`] if the caller has given up already, so the work stops
    /// before it waits for the database.
    pub(super) fn still_wanted(&self) -> Result<(), Error> {
        match self.gate.abandoned() {
            true => Err(Error::Abandoned),
            false => Ok(()),
        }
    }

    /// Called right before the transaction's `COMMIT`: fails with [`Error::Abandoned`] (the
    /// transaction is then dropped, and so rolled back) if the caller has given up. Otherwise the
    /// cached copies of every order are gone, and no read can cache one again, until the
    /// returned guard is dropped after the commit: no read can see an order older than the last
    /// commit, whoever is still waiting for this one.
    pub(super) fn begin(&self) -> Result<Committing, Error> {
        if !self.gate.commit() {
            return Err(Error::Abandoned);
        }
        if let Some(cache) = &self.cache {
            cache.begin_write();
        }
        Ok(Committing(self.cache.clone()))
    }

    /// Commits `tx` through [`Self::begin`]: not at all if the caller has given up (dropped,
    /// `tx` rolls back); a `COMMIT` that fails is in doubt, it may or may not have been applied.
    pub(super) async fn commit<DB: sqlx::Database>(
        &self,
        tx: sqlx::Transaction<'_, DB>,
    ) -> Result<(), Error> {
        let _committing = self.begin()?;
        tx.commit().await.map_err(Error::InDoubt)
    }
}

/// A commit under way: see [`Commit::begin`].
#[must_use]
pub(super) struct Committing(Option<Arc<ReadCache>>);

impl Drop for Committing {
    fn drop(&mut self) {
        if let Some(cache) = &self.0 {
            cache.end_write();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whoever_comes_first_decides() {
        let gate = Gate::default();
        assert!(
            gate.abandon(),
            "nothing began: the caller may say not applied"
        );
        assert!(!gate.commit(), "and the work may then never commit");

        let gate = Gate::default();
        assert!(gate.commit());
        assert!(
            !gate.abandon(),
            "the commit began: the caller must wait for it"
        );
        assert!(gate.commit());
    }
}
