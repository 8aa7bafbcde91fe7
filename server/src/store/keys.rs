//! Idempotency keys: a write sent again with the same key is answered from the first one's stored
//! answer instead of being applied twice.
//!
//! A key belongs to its caller (the token's `sub`, `anonymous` without authentication). It is
//! stored with the method, a digest of the whole request and the answer, in the write's own
//! transaction: a key is stored exactly when its write is. The same key again with the same
//! request gets the stored answer; with another request, `FAILED_PRECONDITION`; while the first
//! is still running in this server, `ABORTED`. Keys expire after `--idempotency-ttl`.

use std::{
    collections::HashSet,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use order_api::pb::Order;
use prost::Message;
use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// Longest idempotency key, in characters (a UUID is 36).
pub const MAX_KEY_CHARS: usize = 128;

/// An idempotency key as its caller sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// Who sent it: the token's `sub`, or `anonymous`.
    pub caller: String,
    /// The key: 1 to [`MAX_KEY_CHARS`] visible ASCII characters.
    pub key: String,
}

impl Key {
    /// The key `value` of `caller`, if it is one: visible ASCII, at most [`MAX_KEY_CHARS`].
    pub fn new(caller: String, value: &str) -> Result<Self, Error> {
        let valid = !value.is_empty()
            && value.len() <= MAX_KEY_CHARS
            && value.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(Error::BadKey(MAX_KEY_CHARS));
        }
        Ok(Self {
            caller,
            key: value.to_owned(),
        })
    }

    /// The record stored with the write of `method` whose request hashed to `digest`.
    pub(crate) fn record(self, method: &'static str, digest: Digest) -> KeyRecord {
        KeyRecord {
            key: self,
            method,
            digest: digest.finish(),
        }
    }
}

/// What is stored with a keyed write, beside its answer.
#[derive(Debug, Clone)]
pub(crate) struct KeyRecord {
    pub(super) key: Key,
    pub(super) method: &'static str,
    pub(crate) digest: Vec<u8>,
}

impl KeyRecord {
    /// What to answer given the row stored under this key, if any (found with
    /// [`Stored`]): `None` to go on and write, the stored answer for the same request, an error
    /// for another one.
    pub(crate) fn replay(&self, stored: Option<Stored>) -> Result<Option<String>, Error> {
        match stored {
            None => Ok(None),
            Some(stored) if stored.method == self.method && stored.digest == self.digest => {
                Ok(Some(stored.answer))
            }
            Some(stored) => Err(Error::KeyReused {
                key: self.key.key.clone(),
                method: stored.method,
            }),
        }
    }
}

/// A key's row as stored.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Stored {
    pub(crate) method: String,
    pub(crate) digest: Vec<u8>,
    pub(crate) answer: String,
}

/// A SHA-256 of a request: its method, then each message's length and protobuf encoding.
pub(crate) struct Digest(Sha256);

impl Digest {
    pub(crate) fn new(method: &str) -> Self {
        let mut hash = Sha256::new();
        hash.update(method.as_bytes());
        Self(hash)
    }

    pub(crate) fn update(&mut self, order: &Order) {
        self.update_bytes(&order.encode_to_vec());
    }

    /// Adds one message of the request, as its length and bytes.
    pub(crate) fn update_bytes(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn finish(self) -> Vec<u8> {
        self.0.finalize().to_vec()
    }
}

/// The keys of the writes running in this server: a second call with one of them gets `ABORTED`
/// until the first has ended.
#[derive(Debug, Default)]
pub(super) struct Registry(Mutex<HashSet<Key>>);

impl Registry {
    /// Marks `key` as running until the returned claim is dropped.
    pub(super) fn claim(self: &std::sync::Arc<Self>, key: Option<&Key>) -> Result<Claim, Error> {
        let Some(key) = key else {
            return Ok(Claim(None));
        };
        let mut running = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !running.insert(key.clone()) {
            return Err(Error::KeyInProgress(key.key.clone()));
        }
        Ok(Claim(Some((self.clone(), key.clone()))))
    }
}

/// See [`Registry::claim`].
pub(crate) struct Claim(Option<(std::sync::Arc<Registry>, Key)>);

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some((registry, key)) = self.0.take() {
            registry
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
    }
}

/// The row stored under a key (`$1` caller, `$2` key), unless it was stored before `$3`, on
/// PostgreSQL (SQLite keeps its newest keys in a log first: `sqlite_keys.rs`).
pub(super) const SELECT_KEY: &str = "SELECT method, digest, answer FROM idempotency_keys
     WHERE caller = $1 AND key = $2 AND created >= $3";

/// Stores a key (`$1` caller, `$2` key, `$3` method, `$4` digest, `$5` answer, `$6` now) in the
/// write's transaction on PostgreSQL, replacing only a row stored before `$7` (expired). No row
/// changed: the key was stored meanwhile by a call that began after this one looked.
pub(super) const INSERT_KEY: &str =
    "INSERT INTO idempotency_keys (caller, key, method, digest, answer, created)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (caller, key) DO UPDATE SET method = excluded.method,
         digest = excluded.digest, answer = excluded.answer, created = excluded.created
     WHERE idempotency_keys.created < $7";

/// The row stored under `key`, unless it was stored before `expired_before`: [`SELECT_KEY`].
pub(super) async fn stored<'c>(
    conn: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    key: &Key,
    expired_before: i64,
) -> Result<Option<Stored>, Error> {
    Ok(sqlx::query_as(SELECT_KEY)
        .bind(key.caller.as_str())
        .bind(key.key.as_str())
        .bind(expired_before)
        .fetch_optional(conn)
        .await?)
}

/// Stores `key` with the write's `answer` in the write's transaction ([`INSERT_KEY`]), at `now`,
/// over a key stored before `expired_before` (Unix milliseconds both: the write's `Commit` has
/// them); `ABORTED` when the key was stored meanwhile, by another server's transaction, which
/// this one waited for.
pub(super) async fn remember<'c>(
    conn: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    key: &KeyRecord,
    answer: &str,
    now: i64,
    expired_before: i64,
) -> Result<(), Error> {
    let stored = sqlx::query(INSERT_KEY)
        .bind(key.key.caller.as_str())
        .bind(key.key.key.as_str())
        .bind(key.method)
        .bind(key.digest.as_slice())
        .bind(answer)
        .bind(now)
        .bind(expired_before)
        .execute(conn)
        .await?;
    match stored.rows_affected() {
        1 => Ok(()),
        _ => Err(Error::KeyInProgress(key.key.key.clone())),
    }
}

/// Keys stored before this (Unix milliseconds) are older than `ttl`: expired.
pub(super) fn expired_before(ttl: std::time::Duration) -> i64 {
    unix_millis().saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// Now, in milliseconds since the Unix epoch.
pub(super) fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_visible_ascii_of_bounded_length() {
        assert!(Key::new("a".into(), "7c4a8d09-ca37-4f0e-9a3b-1d2e3f4a5b6c").is_ok());
        for bad in ["", " ", "with space", "é", &"k".repeat(MAX_KEY_CHARS + 1)] {
            assert!(Key::new("a".into(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_same_request_replays_and_another_is_refused() {
        let order = Order {
            id: "1".into(),
            ..Order::default()
        };
        let record = |order: &Order| {
            let mut digest = Digest::new("addOrder");
            digest.update(order);
            Key::new("a".into(), "k")
                .unwrap()
                .record("addOrder", digest)
        };
        let first = record(&order);
        let stored = || Stored {
            method: "addOrder".into(),
            digest: first.digest.clone(),
            answer: "1".into(),
        };
        assert_eq!(first.replay(None).unwrap(), None);
        assert_eq!(
            record(&order).replay(Some(stored())).unwrap().as_deref(),
            Some("1")
        );
        let other = Order {
            id: "2".into(),
            ..Order::default()
        };
        assert!(matches!(
            record(&other).replay(Some(stored())),
            Err(Error::KeyReused { .. })
        ));
    }

    #[test]
    fn a_running_key_is_claimed_once() {
        let registry = std::sync::Arc::new(Registry::default());
        let key = Key::new("a".into(), "k").unwrap();
        let claim = registry.claim(Some(&key)).unwrap();
        assert!(matches!(
            registry.claim(Some(&key)),
            Err(Error::KeyInProgress(_))
        ));
        let other_caller = Key::new("b".into(), "k").unwrap();
        assert!(registry.claim(Some(&other_caller)).is_ok());
        drop(claim);
        assert!(registry.claim(Some(&key)).is_ok());
    }
}
