//! SQLite's idempotency keys: the newest in a short log, the rest in the key table.
//!
//! A key table ordered by key makes every stored key change a leaf page of its own, wherever its
//! key falls: at a few dozen calls a commit, each of them wrote its own 4 KiB page to the WAL
//! (and again at the checkpoint), which halved durable keyed `addOrder`s. So a write stores its
//! key by appending it to `recent_keys`, in the order the keys come, indexed by a 64-bit hash of
//! the key: a batch of keys fills a page or two of the log, plus its small hash index. When the
//! log holds [`MERGE_AT`] keys, the transaction that filled it moves them, sorted, into
//! `idempotency_keys` and empties it: a thousand keys in key order share leaf pages there.
//!
//! Everything happens in the write's own transaction, so a key is still stored exactly when its
//! write is, through rollbacks, savepoints and crashes; a lookup reads the log first, then the
//! table. The log holds one row per hash: a key stored again once its row expired takes the
//! row's place. Two keys of one hash cannot both be there: the second is refused as in progress
//! (`ABORTED`, to retry) until the log has moved. By chance that is about one in 10^13 for each
//! thousand keys; on purpose, a client can only make its own keys collide (the hash covers the
//! caller), with billions of tries.

use std::collections::{HashMap, HashSet};

use sha2::{Digest as _, Sha256};
use sqlx::SqliteConnection;

use super::{
    batch, json,
    keys::{hex, Key, KeyRecord, Stored},
    write::Commit,
};
use crate::error::Error;

/// Keys in the log (counted by their place in it) that make the transaction adding them move
/// them into the key table.
pub(super) const MERGE_AT: i64 = 1024;

/// The row stored under each key of `?1` (a JSON array of `[caller, key, expired_before,
/// hash]`), unless stored before its `expired_before`: the log's if it has one, else the table's.
const STORED_SQL: &str = "SELECT w.caller, w.key, coalesce(r.method, k.method),
         coalesce(r.digest, k.digest), coalesce(r.answer, k.answer)
     FROM (SELECT value->>0 AS caller, value->>1 AS key, value->>2 AS expired,
                  value->>3 AS hash FROM json_each(?1)) AS w
     LEFT JOIN recent_keys AS r ON r.hash = w.hash AND r.caller = w.caller AND r.key = w.key
     LEFT JOIN idempotency_keys AS k
         ON r.seq IS NULL AND k.caller = w.caller AND k.key = w.key
     WHERE coalesce(r.created, k.created) >= w.expired";

/// Stores the keys of `?1` (rows of [`key_rows`]) in the log: each unless the table has it
/// stored since `?2`, over the log's row of the same hash if that row is the same key's and was
/// stored before `?2` (expired); the keys stored, and their place in the log.
const APPEND_SQL: &str =
    "INSERT INTO recent_keys (hash, caller, key, method, digest, answer, created)
     SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, unhex(j.value->>4), j.value->>5,
            j.value->>6
     FROM json_each(?1) AS j
     WHERE NOT EXISTS (SELECT 1 FROM idempotency_keys AS k WHERE k.caller = j.value->>1
                           AND k.key = j.value->>2 AND k.created >= ?2)
     ON CONFLICT (hash) DO UPDATE SET method = excluded.method, digest = excluded.digest,
         answer = excluded.answer, created = excluded.created
     WHERE recent_keys.created < ?2 AND recent_keys.caller = excluded.caller
         AND recent_keys.key = excluded.key
     RETURNING caller, key, seq";

/// Moves every key of the log into the table, in key order, over the table's expired rows.
const MERGE_SQL: &str =
    "INSERT INTO idempotency_keys (caller, key, method, digest, answer, created)
     SELECT caller, key, method, digest, answer, created FROM recent_keys WHERE true
     ORDER BY caller, key
     ON CONFLICT (caller, key) DO UPDATE SET method = excluded.method,
         digest = excluded.digest, answer = excluded.answer, created = excluded.created";

/// 64 bits of a SHA-256 of the caller and the key: the log's index.
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

/// The rows stored under `keys`, each unless stored before its `expired_before`.
pub(super) async fn stored(
    conn: &mut SqliteConnection,
    keys: &[(&Key, i64)],
) -> Result<HashMap<Key, Stored>, Error> {
    let lookups: Vec<_> = keys
        .iter()
        .map(|(key, expired)| (&key.caller, &key.key, expired, hash(key)))
        .collect();
    let rows = sqlx::query_as(STORED_SQL)
        .bind(json(&lookups)?)
        .fetch_all(conn)
        .await?;
    Ok(batch::stored_by_key(rows))
}

/// The row stored under `key`, unless it was stored before `expired_before`.
pub(super) async fn stored_one(
    conn: &mut SqliteConnection,
    key: &Key,
    expired_before: i64,
) -> Result<Option<Stored>, Error> {
    Ok(stored(conn, &[(key, expired_before)]).await?.remove(key))
}

/// Stores each key with its answer, unless a row stored since `expired_before` has it already;
/// returns the keys stored. Moves the log into the table once it holds [`MERGE_AT`] keys.
pub(super) async fn store(
    conn: &mut SqliteConnection,
    keys: &[(&KeyRecord, &str, &Commit)],
    expired_before: i64,
) -> Result<HashSet<Key>, Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(APPEND_SQL)
        .bind(key_rows(keys)?)
        .bind(expired_before)
        .fetch_all(&mut *conn)
        .await?;
    if rows.iter().any(|&(_, _, seq)| seq >= MERGE_AT) {
        merge(conn).await?;
    }
    Ok(rows
        .into_iter()
        .map(|(caller, key, _)| Key { caller, key })
        .collect())
}

/// Stores the commit's key with `answer`; `ABORTED` if a row stored since the commit's expiry
/// time has it (see [`store`]).
pub(super) async fn store_one(
    conn: &mut SqliteConnection,
    key: &KeyRecord,
    answer: &str,
    commit: &Commit,
) -> Result<(), Error> {
    let stored = store(conn, &[(key, answer, commit)], commit.keys_expired_before).await?;
    match stored.contains(&key.key) {
        true => Ok(()),
        false => Err(Error::KeyInProgress(key.key.key.clone())),
    }
}

/// Moves every key of the log into the table, and empties the log.
async fn merge(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::query(MERGE_SQL).execute(&mut *conn).await?;
    sqlx::query("DELETE FROM recent_keys")
        .execute(&mut *conn)
        .await?;
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

/// Keys to store as one JSON parameter: `[hash, caller, key, method, digest as hex, answer,
/// created]` each.
fn key_rows(keys: &[(&KeyRecord, &str, &Commit)]) -> Result<String, Error> {
    let rows: Vec<_> = keys
        .iter()
        .map(|(record, answer, commit)| {
            (
                hash(&record.key),
                &record.key.caller,
                &record.key.key,
                record.method,
                hex(&record.digest),
                answer,
                commit.now,
            )
        })
        .collect();
    json(&rows)
}
