//! SQLite's idempotency keys: a table in the order they are stored, found by a hash.
//!
//! `idempotency_keys` keeps each key's row in the order keys are stored (`seq`): a batch of keys
//! fills the table's last page or two, wherever its keys fall in key order. Clients' keys are
//! random (UUIDs): a table ordered by key changed a leaf page of its own for nearly every key.
//! Keys first appended to a log and moved into such a table 8 192 at a time fared little better
//! once it held a few hundred thousand: each move changed most of its pages (110–135 ms of
//! statements a move with 300 000 keys stored, and keyed `addOrder`s with UUID keys at
//! 9 900–11 900 a second against 17 200–18 300 with keys that all fell in one stretch of the key
//! order).
//!
//! Rows are found by a 64-bit hash of the caller and the key, in `idempotency_keys_by_hash`: an
//! entry of two integers a key, a few hundred a page. The newest rows, after
//! `idempotency_keys_indexed.upto`, are not in it yet (the tail): once the tail holds
//! [`MERGE_AT`] keys, the transaction that filled it adds them to the index in hash order, so each
//! page of the index changed there takes many keys.
//!
//! The tail has no index on disk: this process keeps its keys by hash in memory ([`Recent`]).
//! That is safe because one server owns the file (its lock file keeps out a second one), and the
//! map is checked against the table itself:
//! - every transaction that stores keys holds the database's write lock; it compares the map with
//!   the table's newest place and the index's mark first, and reads the tail again if they differ
//!   (after a rollback, a pruning, an indexing);
//! - it puts its own keys in the map as it appends them, so the map has every committed key of the
//!   tail. A key that never committed only sends a lookup to a row that is not there;
//! - a lookup checks the row the map or the index points at (caller and key, and its age); a
//!   reader that finds the map being read again looks through the tail itself.
//!
//! Everything happens in the write's own transaction, so a key is stored exactly when its write
//! is, through rollbacks, savepoints and crashes. A key has at most one live row: it is stored
//! again only once its row has expired, and the lookup skips expired rows. The map holds one row
//! per hash: a second key of the same hash is refused as in progress (`ABORTED`, to retry) while
//! the first one's row is live and in the tail. By chance that is about two in 10^12 for each
//! tail of 8 192 keys; on purpose, a client can only make its own keys collide (the hash covers
//! the caller), with billions of tries. The index keeps every row of a hash (its key is
//! `(hash, seq)`), so it has no collisions to refuse.
//!
//! Most keys a write brings are new, and a new key's lookup in the index would read a page of it
//! that the page cache seldom holds once there are a few hundred thousand keys. So the
//! transactions holding the write lock also keep a filter of the hashes that may have a row
//! ([`Filter`], two bits a hash): a key whose bits are not both set has no row and is not looked
//! up. The filter is read from the table by the first of those transactions, and again when the
//! table has a place it never saw (stored by no transaction of this process) or once the pruning
//! has forgotten half as many keys as it has seen (each leaves its bits behind). A bit set for a
//! key that rolled back, or was forgotten, only costs a lookup.

use std::{
    collections::{HashMap, HashSet},
    sync::{LazyLock, Mutex, PoisonError},
};

use sha2::{Digest as _, Sha256};
use sqlx::{sqlite::SqliteRow, FromRow, SqliteConnection};

use super::{
    batch,
    keys::{Key, KeyRecord, Stored},
    sqlite::{Values, VALUES_ROWS},
    write::Commit,
};
use crate::error::Error;

/// Keys in the tail (counted by their places) that make the transaction adding them index them.
pub(super) const MERGE_AT: i64 = 8192;

/// The row stored under each key of a row `(caller, key, expired_before, seq, hash)` (`seq` the
/// tail's row of the key's hash, or null), unless stored before its `expired_before`: the tail's,
/// else the index's.
static LOOKUP: LazyLock<Values> = LazyLock::new(|| lookup("k.seq = w.seq"));

/// [`LOOKUP`] without the map: the tail read through for each key's hash.
static LOOKUP_IN_TAIL: LazyLock<Values> = LazyLock::new(|| {
    lookup("k.seq > (SELECT upto FROM idempotency_keys_indexed) AND k.hash = w.hash")
});

/// The lookup of [`LOOKUP`], the tail's rows found by `in_tail`.
fn lookup(in_tail: &str) -> Values {
    let live = "k.caller = w.caller AND k.key = w.key AND k.created >= w.expired";
    Values::new(
        "WITH w (caller, key, expired, seq, hash) AS (VALUES ",
        5,
        &format!(
            ") SELECT w.caller, w.key, k.method, k.digest, k.answer
               FROM w JOIN idempotency_keys AS k ON {in_tail}
               WHERE {live}
               UNION ALL
               SELECT w.caller, w.key, k.method, k.digest, k.answer
               FROM w JOIN idempotency_keys_by_hash AS h ON h.hash = w.hash
                   JOIN idempotency_keys AS k ON k.seq = h.seq
               WHERE {live}"
        ),
    )
}

/// Appends keys to the table, each at its place: a row of [`KeyRow`], after its place and hash.
static APPEND: LazyLock<Values> = LazyLock::new(|| {
    Values::new(
        "INSERT INTO idempotency_keys (seq, hash, caller, key, method, digest, answer, created)
         SELECT * FROM (VALUES ",
        8,
        ") WHERE column1 IS NOT NULL",
    )
});

/// The tail's keys by hash, as this process has them, and the filter of every hash stored: see
/// the module's documentation.
#[derive(Debug)]
pub(super) struct Recent {
    /// `None` until read from the table, and from an indexing to the end of its transaction.
    tail: Mutex<Option<Tail>>,
    /// `None` until read from the table, and from the pruning that left it too stale.
    filter: Mutex<Option<Filter>>,
}

/// The tail's rows by hash (the newest of each), its newest place and where it begins.
#[derive(Debug, Default)]
struct Tail {
    seqs: HashMap<i64, i64>,
    last: i64,
    indexed: i64,
}

/// Bits of a [`Filter`]: 2 MiB. With a million keys, about one new key in 80 is looked up.
const FILTER_BITS: u64 = 1 << 24;

/// Which hashes may have a row (a Bloom filter with two bits a hash, from two parts of the hash,
/// which is uniform already): every key of the table has its two bits set, and every key stored
/// since the filter was read sets its own, committed or not.
#[derive(Debug)]
struct Filter {
    bits: Vec<u64>,
    /// The newest place it has seen.
    last: i64,
    /// Keys it has seen, and keys the pruning has forgotten since it was read.
    seen: u64,
    forgotten: u64,
}

impl Filter {
    fn new(last: i64) -> Self {
        Self {
            bits: vec![0; (FILTER_BITS / 64) as usize],
            last,
            seen: 0,
            forgotten: 0,
        }
    }

    /// The two bits of `hash`: its word and the bit in it, each.
    fn bits(hash: i64) -> [(usize, u64); 2] {
        let hash = hash as u64;
        [hash, hash >> 24].map(|part| {
            let bit = part % FILTER_BITS;
            ((bit / 64) as usize, 1 << (bit % 64))
        })
    }

    fn insert(&mut self, hash: i64) {
        for (word, bit) in Self::bits(hash) {
            self.bits[word] |= bit;
        }
        self.seen += 1;
    }

    /// Inserts each hash of a list as SQLite's `group_concat` writes it.
    fn insert_all(&mut self, hashes: Option<&str>) -> Result<(), sqlx::Error> {
        for hash in hashes.into_iter().flat_map(|list| list.split(',')) {
            self.insert(hash.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?);
        }
        Ok(())
    }

    /// False only if no key of `hash` is stored.
    fn may_have(&self, hash: i64) -> bool {
        Self::bits(hash)
            .iter()
            .all(|&(word, bit)| self.bits[word] & bit != 0)
    }
}

impl Recent {
    /// A map and a filter to be read from the table by the first transaction that stores a key.
    pub(super) fn new() -> Self {
        Self {
            tail: Mutex::new(None),
            filter: Mutex::new(None),
        }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Option<Tail>> {
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn filter(&self) -> std::sync::MutexGuard<'_, Option<Filter>> {
        self.filter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts keys the pruning has forgotten (committed): once they are half the keys the filter
    /// has seen, the next transaction that stores a key reads it again.
    pub(super) fn forgotten(&self, count: u64) {
        let mut filter = self.filter();
        if let Some(seen) = filter.as_mut() {
            seen.forgotten += count;
            if seen.forgotten * 2 > seen.seen {
                *filter = None;
            }
        }
    }

    /// Forgets the map and the filter, as a new process starts: the next transaction that
    /// stores a key reads them from the table.
    #[cfg(test)]
    pub(super) fn forget(&self) {
        *self.tail() = None;
        *self.filter() = None;
    }
}

/// 64 bits of a SHA-256 of the caller and the key: what keys are found by.
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

/// The table's newest place (or the index's mark, if later: no place is ever taken twice) and
/// the index's mark.
async fn places(conn: &mut SqliteConnection) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT max(coalesce((SELECT max(seq) FROM idempotency_keys), 0), upto), upto
         FROM idempotency_keys_indexed",
    )
    .fetch_one(conn)
    .await
}

/// Makes the map and the filter right for the transaction on `conn`, which holds the database's
/// write lock: the tail read again unless the map ends where the table does and begins where the
/// index ends; the filter read again if it is gone or the table has a place it never saw.
async fn sync(conn: &mut SqliteConnection, recent: &Recent) -> Result<(), Error> {
    let (last, indexed) = places(conn).await?;
    if !matches!(&*recent.filter(), Some(filter) if filter.last >= last) {
        *recent.filter() = Some(read_filter(conn, last, indexed).await?);
    }
    if matches!(&*recent.tail(), Some(tail) if (tail.last, tail.indexed) == (last, indexed)) {
        return Ok(());
    }
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT hash, seq FROM idempotency_keys WHERE seq > ?1 ORDER BY seq")
            .bind(indexed)
            .fetch_all(&mut *conn)
            .await?;
    *recent.tail() = Some(Tail {
        seqs: rows.into_iter().collect(),
        last,
        indexed,
    });
    Ok(())
}

/// A filter of every hash in the table (whose newest place is `last`, indexed up to `indexed`):
/// the index's a few thousand at a time in its order, each few thousand as one text (a million
/// hashes in 0.3 s; a row a hash took four times as long), then the tail's.
async fn read_filter(
    conn: &mut SqliteConnection,
    last: i64,
    indexed: i64,
) -> Result<Filter, sqlx::Error> {
    const PAGE: &str = "SELECT max(hash), group_concat(hash) FROM
        (SELECT hash FROM idempotency_keys_by_hash WHERE hash >= ?1 ORDER BY hash LIMIT 4096)";
    const TAIL: &str = "SELECT group_concat(hash) FROM idempotency_keys WHERE seq > ?1";
    let mut filter = Filter::new(last);
    let mut from = Some(i64::MIN);
    while let Some(first) = from {
        let (end, hashes): (Option<i64>, Option<String>) = sqlx::query_as(PAGE)
            .bind(first)
            .fetch_one(&mut *conn)
            .await?;
        filter.insert_all(hashes.as_deref())?;
        from = end.and_then(|end| end.checked_add(1));
    }
    let hashes: Option<String> = sqlx::query_scalar(TAIL)
        .bind(indexed)
        .fetch_one(&mut *conn)
        .await?;
    filter.insert_all(hashes.as_deref())?;
    Ok(filter)
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
    let mut keys: Vec<(&Key, i64, i64)> = keys
        .iter()
        .map(|&(key, expired)| (key, expired, hash(key)))
        .collect();
    // Under the write lock, a key the filter has not seen is not stored: not looked up.
    if let (true, Some(filter)) = (locked, &*recent.filter()) {
        keys.retain(|&(_, _, hash)| filter.may_have(hash));
    }
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    // Each key's row in the tail by the map; without the map, the tail is searched.
    let (lookup, seqs): (&Values, Vec<Option<i64>>) = match &*recent.tail() {
        Some(tail) => (
            &LOOKUP,
            keys.iter()
                .map(|(_, _, hash)| tail.seqs.get(hash).copied())
                .collect(),
        ),
        None => (&LOOKUP_IN_TAIL, vec![None; keys.len()]),
    };
    let mut rows: Vec<(String, String, String, Vec<u8>, String)> = Vec::new();
    for (part, seqs) in keys.chunks(VALUES_ROWS).zip(seqs.chunks(VALUES_ROWS)) {
        let mut query = lookup.query(part.len());
        for ((key, expired, hash), seq) in part.iter().zip(seqs) {
            query = query
                .bind(&key.caller)
                .bind(&key.key)
                .bind(expired)
                .bind(*seq)
                .bind(hash);
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

/// Stores each key with its answer, unless a live row of the tail has its hash; returns the keys
/// stored. The caller's transaction holds the write lock and has looked these keys up ([`stored`],
/// since `expired_before` or later) and found none: nothing is searched for them again. Indexes
/// the tail once it holds [`MERGE_AT`] keys.
pub(super) async fn store(
    conn: &mut SqliteConnection,
    recent: &Recent,
    keys: &[(&KeyRecord, &str, &Commit)],
    expired_before: i64,
) -> Result<HashSet<Key>, Error> {
    sync(conn, recent).await?;
    // Each key's hash, and the tail's row of that hash if it has one.
    let mut seen = HashSet::new();
    let (last, placed): (i64, Vec<(usize, i64, Option<i64>)>) = {
        let tail = recent.tail();
        let tail = tail.as_ref().expect("made right above");
        let placed = keys
            .iter()
            .enumerate()
            .map(|(n, (record, _, _))| {
                let hash = hash(&record.key);
                (n, hash, tail.seqs.get(&hash).copied())
            })
            // Two keys of one hash in one batch: the second is refused.
            .filter(|&(_, hash, _)| seen.insert(hash))
            .collect();
        (tail.last, placed)
    };
    // A hash the tail has already: the key is stored only if that row expired (or is gone).
    let mut free = Vec::with_capacity(placed.len());
    for (n, hash, seq) in placed {
        if let Some(seq) = seq {
            let live: Option<i64> = sqlx::query_scalar(
                "SELECT seq FROM idempotency_keys WHERE seq = ?1 AND created >= ?2",
            )
            .bind(seq)
            .bind(expired_before)
            .fetch_optional(&mut *conn)
            .await?;
            if live.is_some() {
                continue;
            }
        }
        free.push((n, hash));
    }
    let rows: Vec<(i64, i64, (&KeyRecord, &str, &Commit))> = free
        .into_iter()
        .zip(last + 1..)
        .map(|((n, hash), seq)| (seq, hash, keys[n]))
        .collect();
    let mut stored = HashSet::new();
    if !rows.is_empty() {
        let appended: Vec<_> = rows
            .iter()
            .map(|&(seq, hash, key)| (seq, hash, KeyRow::of(key)))
            .collect();
        // Seen by the filter before the rows exist: a lookup never misses them.
        if let Some(filter) = &mut *recent.filter() {
            for &(seq, hash, _) in &rows {
                filter.insert(hash);
                filter.last = filter.last.max(seq);
            }
        }
        append(conn, &appended).await?;
        let mut tail = recent.tail();
        let tail = tail.as_mut().expect("made right above");
        for &(seq, hash, (record, _, _)) in &rows {
            tail.seqs.insert(hash, seq);
            tail.last = tail.last.max(seq);
            stored.insert(record.key.clone());
        }
    }
    let full = matches!(&*recent.tail(), Some(tail) if tail.last - tail.indexed >= MERGE_AT);
    if full {
        index_tail(conn, recent).await?;
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

/// Adds every key of the tail to the index, in hash order, and moves the index's mark to the
/// table's newest place. No statement here can fail halfway, so none keeps a journal of its own.
async fn index_tail(conn: &mut SqliteConnection, recent: &Recent) -> Result<(), sqlx::Error> {
    // Until this transaction's end, the map is the tail as it was: read again after it.
    *recent.tail() = None;
    let (last, indexed) = places(conn).await?;
    sqlx::query(
        "INSERT OR IGNORE INTO idempotency_keys_by_hash (hash, seq)
         SELECT hash, seq FROM idempotency_keys WHERE seq > ?1 ORDER BY hash, seq",
    )
    .bind(indexed)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE idempotency_keys_indexed SET upto = ?1")
        .bind(last)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Forgets up to `limit` keys stored before `before`, the oldest first, and their entries in the
/// index; how many.
pub(super) async fn forget(
    conn: &mut SqliteConnection,
    before: i64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    const OLDEST: &str = "SELECT seq FROM idempotency_keys WHERE created < ?1
                          ORDER BY created, seq LIMIT ?2";
    sqlx::query(&format!(
        "DELETE FROM idempotency_keys_by_hash WHERE (hash, seq) IN
             (SELECT hash, seq FROM idempotency_keys WHERE seq IN ({OLDEST}))"
    ))
    .bind(before)
    .bind(limit)
    .execute(&mut *conn)
    .await?;
    Ok(sqlx::query(&format!(
        "DELETE FROM idempotency_keys WHERE seq IN ({OLDEST})"
    ))
    .bind(before)
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Appends `rows` (place, hash, row) to the table ([`APPEND`]).
async fn append(
    conn: &mut SqliteConnection,
    rows: &[(i64, i64, KeyRow<'_>)],
) -> Result<(), sqlx::Error> {
    for part in rows.chunks(VALUES_ROWS) {
        let mut query = APPEND.query(part.len());
        for (seq, hash, row) in part {
            query = query
                .bind(seq)
                .bind(hash)
                .bind(row.caller)
                .bind(row.key)
                .bind(row.method)
                .bind(row.digest)
                .bind(row.answer)
                .bind(row.created);
        }
        APPEND.pad(query, part.len()).execute(&mut *conn).await?;
    }
    Ok(())
}

/// A key's row, beside its place and hash: whose key, which request, its answer, and when.
struct KeyRow<'a> {
    caller: &'a str,
    key: &'a str,
    method: &'a str,
    digest: &'a [u8],
    answer: &'a str,
    created: i64,
}

impl<'a> KeyRow<'a> {
    /// The row of a key stored by a write now.
    fn of((record, answer, commit): (&'a KeyRecord, &'a str, &Commit)) -> Self {
        Self {
            caller: &record.key.caller,
            key: &record.key.key,
            method: record.method,
            digest: &record.digest,
            answer,
            created: commit.now,
        }
    }
}

/// Moves up to `limit` of the keys stored before keys were found by hash (the table
/// `idempotency_keys_unhashed`, see the migration `keys_by_hash`) into the table; once that table
/// is empty, drops it and indexes every key moved, in one statement in hash order (indexed a
/// thousand at a time, each batch would change most pages of the index). How many moved (0: none
/// are left). In a transaction that holds the write lock, before the server serves a call.
pub(super) async fn move_unhashed(
    conn: &mut SqliteConnection,
    recent: &Recent,
    limit: i64,
) -> Result<usize, sqlx::Error> {
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_schema WHERE name = 'idempotency_keys_unhashed'",
    )
    .fetch_one(&mut *conn)
    .await?;
    if left == 0 {
        return Ok(0);
    }
    let rows: Vec<(String, String, String, Vec<u8>, String, i64)> = sqlx::query_as(
        "SELECT caller, key, method, digest, answer, created FROM idempotency_keys_unhashed
         ORDER BY caller, key LIMIT ?1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        sqlx::query("DROP TABLE idempotency_keys_unhashed")
            .execute(&mut *conn)
            .await?;
        index_tail(conn, recent).await?;
        return Ok(0);
    }
    let (last, _) = places(conn).await?;
    let moved: Vec<(i64, i64, KeyRow)> = rows
        .iter()
        .zip(last + 1..)
        .map(|((caller, key, method, digest, answer, created), seq)| {
            let hash = hash(&Key {
                caller: caller.clone(),
                key: key.clone(),
            });
            let row = KeyRow {
                caller,
                key,
                method,
                digest,
                answer,
                created: *created,
            };
            (seq, hash, row)
        })
        .collect();
    append(conn, &moved).await?;
    sqlx::query(
        "DELETE FROM idempotency_keys_unhashed WHERE (caller, key) IN
             (SELECT caller, key FROM idempotency_keys_unhashed ORDER BY caller, key LIMIT ?1)",
    )
    .bind(limit)
    .execute(&mut *conn)
    .await?;
    Ok(rows.len())
}
