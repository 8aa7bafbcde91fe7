//! SQLite's idempotency keys: the newest in a log, the rest in the key table.
//!
//! A key table ordered by key makes every stored key change a leaf page of its own, wherever its
//! key falls: at a few dozen calls a commit, each of them wrote its own 4 KiB page to the WAL
//! (and again at the checkpoint), which halved durable keyed `addOrder`s. So a write appends its
//! key to `recent_keys`, in the order the keys come: a batch of keys fills a page or two of the
//! log. When the log holds [`MERGE_AT`] keys, the transaction that filled it moves them, sorted,
//! into `idempotency_keys` and empties it: thousands of keys in key order share the table's leaf
//! pages, so the move writes each of those pages once for many keys.
//!
//! The log has no index of its own on disk (an index by key or hash is a leaf page per key again
//! once it outgrows a few pages): this process keeps the log's keys by hash in memory
//! ([`Recent`]). That is safe because one server owns the file (its lock file keeps out a second
//! one), and the map is checked against the log itself:
//! - every transaction that stores keys holds the database's write lock; it compares the map with
//!   the log's newest position first and reads the map again from the log if they differ (after
//!   a rollback, a pruning, a move);
//! - it puts its own keys in the map as it appends them, so the map has every committed key of the
//!   log. A key that never committed only sends a lookup to a row that is not there;
//! - a lookup checks the row the map points at (caller and key); a reader that finds the map
//!   being read again looks through the log itself.
//!
//! Everything happens in the write's own transaction, so a key is still stored exactly when its
//! write is, through rollbacks, savepoints and crashes; a lookup reads the log first, then the
//! table. The log holds one live row per hash: a key stored again once its row expired takes the
//! row's place. Two keys of one hash cannot both be there: the second is refused as in progress
//! (`ABORTED`, to retry) until the log has moved. By chance that is about two in 10^12 for each
//! log of 8 192 keys; on purpose, a client can only make its own keys collide (the hash covers
//! the caller), with billions of tries.

use std::{
    collections::{HashMap, HashSet},
    sync::{LazyLock, Mutex, PoisonError},
};

use sha2::{Digest as _, Sha256};
use sqlx::{sqlite::SqliteRow, FromRow, SqliteConnection};

use super::{
    batch,
    keys::{Key, KeyRecord, Stored},
    sqlite::{SqliteQuery, Values, VALUES_ROWS},
    write::Commit,
};
use crate::error::Error;

/// Keys in the log (counted by their place in it) that make the transaction adding them move
/// them into the key table.
pub(super) const MERGE_AT: i64 = 8192;

/// The row stored under each key of a row `(caller, key, expired_before, seq)` (`seq` the log's
/// row for the key's hash, or null), unless stored before its `expired_before`: the log's if it
/// has one, else the table's.
static LOOKUP: LazyLock<Values> = LazyLock::new(|| lookup("seq", "w.seq"));

/// [`LOOKUP`] without the map (each row has the key's hash in place of `seq`): the log read
/// through, newest row first.
static LOOKUP_BY_HASH: LazyLock<Values> = LazyLock::new(|| {
    lookup(
        "hash",
        "(SELECT max(seq) FROM recent_keys WHERE hash = w.hash)",
    )
});

/// The lookup of [`LOOKUP`], each key's fourth value named `fourth` and its log row found at the
/// place `log_row`.
fn lookup(fourth: &str, log_row: &str) -> Values {
    Values::new(
        &format!("WITH w (caller, key, expired, {fourth}) AS (VALUES "),
        4,
        &format!(
            ") SELECT w.caller, w.key, coalesce(r.method, k.method),
                      coalesce(r.digest, k.digest), coalesce(r.answer, k.answer)
               FROM w
               LEFT JOIN recent_keys AS r
                   ON r.seq = {log_row} AND r.caller = w.caller AND r.key = w.key
               LEFT JOIN idempotency_keys AS k
                   ON r.seq IS NULL AND k.caller = w.caller AND k.key = w.key
               WHERE coalesce(r.created, k.created) >= w.expired"
        ),
    )
}

/// Appends keys to the log, each at its place: a row of [`bind_key`]'s values each.
static APPEND: LazyLock<Values> = LazyLock::new(|| {
    Values::new(
        "INSERT INTO recent_keys (seq, hash, caller, key, method, digest, answer, created)
         SELECT * FROM (VALUES ",
        8,
        ") WHERE column1 IS NOT NULL",
    )
});

/// Stores a key (`?1` its place, the log's row of the same hash, then the other columns) in that
/// place, over the row there if it expired before `?9` (or where it was, if it was forgotten).
const REPLACE_SQL: &str =
    "INSERT INTO recent_keys (seq, hash, caller, key, method, digest, answer, created)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT (seq) DO UPDATE SET hash = excluded.hash, caller = excluded.caller,
         key = excluded.key, method = excluded.method, digest = excluded.digest,
         answer = excluded.answer, created = excluded.created
     WHERE recent_keys.created < ?9";

/// The log's keys by hash, as this process has them: see the module's documentation.
#[derive(Debug)]
pub(super) struct Recent {
    /// `None` until read from the log, and from a move of the log to the end of its transaction.
    log: Mutex<Option<Log>>,
}

/// The log's rows by hash (the newest of each) and its newest place.
#[derive(Debug, Default)]
struct Log {
    seqs: HashMap<i64, i64>,
    last: i64,
}

impl Recent {
    /// A map to be read from the log by the first transaction that stores a key.
    pub(super) fn new() -> Self {
        Self {
            log: Mutex::new(None),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Option<Log>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the map: the next transaction that stores a key reads it from the log.
    pub(super) fn forget(&self) {
        *self.log() = None;
    }
}

/// 64 bits of a SHA-256 of the caller and the key: what the log's keys are found by.
pub(super) fn hash(key: &Key) -> i64 {
    let digest = Sha256::new()
        .chain_update(key.caller.as_bytes())
        .chain_update([0])
        .chain_update(key.key.as_bytes())
        .finalize();
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(first)
}

/// Makes the map right for the transaction on `conn`, which holds the database's write lock: the
/// log read again unless the map ends where the log does.
async fn sync(conn: &mut SqliteConnection, recent: &Recent) -> Result<(), Error> {
    let last: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM recent_keys")
        .fetch_one(&mut *conn)
        .await?;
    if matches!(&*recent.log(), Some(log) if log.last == last) {
        return Ok(());
    }
    let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT hash, seq FROM recent_keys ORDER BY seq")
        .fetch_all(&mut *conn)
        .await?;
    *recent.log() = Some(Log {
        seqs: rows.into_iter().collect(),
        last,
    });
    Ok(())
}

/// The rows stored under `keys`, each unless stored before its `expired_before`. `locked`: the
/// caller's transaction holds the write lock (the map is made right first).
pub(super) async fn stored(
    conn: &mut SqliteConnection,
    recent: &Recent,
    keys: &[(&Key, i64)],
    locked: bool,
) -> Result<HashMap<Key, Stored>, Error> {
    if locked {
        sync(conn, recent).await?;
    }
    // Each key's row in the log by the map, or without the map its hash to look for.
    let (lookup, fourth): (&Values, Vec<Option<i64>>) = match &*recent.log() {
        Some(log) => (
            &LOOKUP,
            keys.iter()
                .map(|(key, _)| log.seqs.get(&hash(key)).copied())
                .collect(),
        ),
        None => (
            &LOOKUP_BY_HASH,
            keys.iter().map(|(key, _)| Some(hash(key))).collect(),
        ),
    };
    let mut rows: Vec<(String, String, String, Vec<u8>, String)> = Vec::new();
    for (part, fourth) in keys.chunks(VALUES_ROWS).zip(fourth.chunks(VALUES_ROWS)) {
        let mut query = lookup.query(part.len());
        for ((key, expired), fourth) in part.iter().zip(fourth) {
            query = query
                .bind(&key.caller)
                .bind(&key.key)
                .bind(expired)
                .bind(*fourth);
        }
        rows.extend(
            lookup
                .pad(query, part.len())
                .try_map(|row: SqliteRow| FromRow::from_row(&row))
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(batch::stored_by_key(rows))
}

/// The row stored under `key`, unless it was stored before `expired_before` (see [`stored`]).
pub(super) async fn stored_one(
    conn: &mut SqliteConnection,
    recent: &Recent,
    key: &Key,
    expired_before: i64,
    locked: bool,
) -> Result<Option<Stored>, Error> {
    Ok(stored(conn, recent, &[(key, expired_before)], locked)
        .await?
        .remove(key))
}

/// Stores each key with its answer, unless a live row of the log has its hash; returns the keys
/// stored. The caller's transaction holds the write lock and has looked these keys up ([`stored`],
/// since `expired_before` or later) and found none: the table is not searched for them again (a
/// second probe of it for every key cost a sixth of a keyed `addOrder`'s instructions). Moves the log into the
/// table once it holds [`MERGE_AT`] keys.
pub(super) async fn store(
    conn: &mut SqliteConnection,
    recent: &Recent,
    keys: &[(&KeyRecord, &str, &Commit)],
    expired_before: i64,
) -> Result<HashSet<Key>, Error> {
    sync(conn, recent).await?;
    // Each key's hash, and the log's row of that hash if it has one.
    let mut seen = HashSet::new();
    let (last, placed): (i64, Vec<(usize, i64, Option<i64>)>) = {
        let log = recent.log();
        let log = log.as_ref().expect("made right above");
        let placed = keys
            .iter()
            .enumerate()
            .map(|(n, (record, _, _))| {
                let hash = hash(&record.key);
                (n, hash, log.seqs.get(&hash).copied())
            })
            // Two keys of one hash in one batch: the second is refused.
            .filter(|&(_, hash, _)| seen.insert(hash))
            .collect();
        (log.last, placed)
    };
    let mut stored = HashSet::new();
    // A hash the log has already: the key takes that row's place if it expired.
    for &(n, hash, seq) in &placed {
        if let Some(seq) = seq {
            let replaced = bind_key(sqlx::query(REPLACE_SQL), seq, hash, keys[n])
                .bind(expired_before)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if replaced == 1 {
                stored.insert(keys[n].0.key.clone());
            }
        }
    }
    // The others, appended in one statement.
    let rows: Vec<(i64, i64, (&KeyRecord, &str, &Commit))> = placed
        .iter()
        .filter(|(_, _, seq)| seq.is_none())
        .zip(last + 1..)
        .map(|(&(n, hash, _), seq)| (seq, hash, keys[n]))
        .collect();
    if !rows.is_empty() {
        append(conn, &rows).await?;
        let mut log = recent.log();
        let log = log.as_mut().expect("made right above");
        for &(seq, hash, (record, _, _)) in &rows {
            log.seqs.insert(hash, seq);
            log.last = log.last.max(seq);
            stored.insert(record.key.clone());
        }
    }
    let full = matches!(&*recent.log(), Some(log) if log.last >= MERGE_AT);
    if full {
        merge(conn, recent).await?;
    }
    Ok(stored)
}

/// Stores the commit's key with `answer`; `ABORTED` if a row stored since the commit's expiry
/// time has it (see [`store`]).
pub(super) async fn store_one(
    conn: &mut SqliteConnection,
    recent: &Recent,
    key: &KeyRecord,
    answer: &str,
    commit: &Commit,
) -> Result<(), Error> {
    let stored = store(
        conn,
        recent,
        &[(key, answer, commit)],
        commit.keys_expired_before,
    )
    .await?;
    match stored.contains(&key.key) {
        true => Ok(()),
        false => Err(Error::KeyInProgress(key.key.key.clone())),
    }
}

/// Moves every key of the log into the table, in key order, over the table's rows of the same
/// keys (expired: a live one was never stored again), and empties the log. Each key's newest
/// row goes in; no statement here can fail halfway, so none keeps a journal of its own.
async fn merge(conn: &mut SqliteConnection, recent: &Recent) -> Result<(), sqlx::Error> {
    // Until this transaction's end, the map is the log's as it was: read again after it.
    recent.forget();
    for sql in [
        "DELETE FROM idempotency_keys
         WHERE (caller, key) IN (SELECT caller, key FROM recent_keys)",
        "INSERT OR IGNORE INTO idempotency_keys (caller, key, method, digest, answer, created)
         SELECT caller, key, method, digest, answer, created FROM recent_keys
         ORDER BY caller, key, seq DESC",
        "DELETE FROM recent_keys",
    ] {
        sqlx::query(sql).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Forgets up to `limit` keys stored before `before`, from the table, then the log; how many.
pub(super) async fn forget(
    conn: &mut SqliteConnection,
    before: i64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let mut forgotten = 0;
    for sql in [
        "DELETE FROM idempotency_keys WHERE (caller, key) IN
             (SELECT caller, key FROM idempotency_keys WHERE created < ?1 LIMIT ?2)",
        "DELETE FROM recent_keys WHERE seq IN
             (SELECT seq FROM recent_keys WHERE created < ?1 LIMIT ?2)",
    ] {
        let left = limit - i64::try_from(forgotten).unwrap_or(i64::MAX);
        if left <= 0 {
            break;
        }
        forgotten += sqlx::query(sql)
            .bind(before)
            .bind(left)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    Ok(forgotten)
}

/// Appends `rows` to the log, each at its place ([`APPEND`]).
async fn append(
    conn: &mut SqliteConnection,
    rows: &[(i64, i64, (&KeyRecord, &str, &Commit))],
) -> Result<(), sqlx::Error> {
    for part in rows.chunks(VALUES_ROWS) {
        let mut query = APPEND.query(part.len());
        for &(seq, hash, key) in part {
            query = bind_key(query, seq, hash, key);
        }
        APPEND.pad(query, part.len()).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Binds a key to store in the log at `seq` (its hash computed once, by [`store`]): `seq, hash,
/// caller, key, method, digest, answer, created`.
fn bind_key<'q>(
    query: SqliteQuery<'q>,
    seq: i64,
    hash: i64,
    (record, answer, commit): (&'q KeyRecord, &'q str, &Commit),
) -> SqliteQuery<'q> {
    query
        .bind(seq)
        .bind(hash)
        .bind(&record.key.caller)
        .bind(&record.key.key)
        .bind(record.method)
        .bind(&record.digest)
        .bind(answer)
        .bind(commit.now)
}
