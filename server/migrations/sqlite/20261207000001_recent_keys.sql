-- The idempotency keys of the latest writes, appended in the order they are stored, with a hash
-- index: a batch of keys changes a few pages here instead of a leaf page of `idempotency_keys`
-- for each key. The server moves them, in key order, into `idempotency_keys` once there are a
-- thousand (server/src/store/sqlite_keys.rs). One row per hash, so one per key: the newest.
CREATE TABLE recent_keys (
    seq     INTEGER PRIMARY KEY,
    -- The first 64 bits of a SHA-256 of the caller, a zero byte and the key.
    hash    INTEGER NOT NULL,
    caller  TEXT NOT NULL,
    key     TEXT NOT NULL,
    method  TEXT NOT NULL,
    digest  BLOB NOT NULL,
    answer  TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE UNIQUE INDEX recent_keys_by_hash ON recent_keys (hash);
