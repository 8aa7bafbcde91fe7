-- Idempotency keys in the order they are stored, found by a hash of the caller and the key
-- (server/src/store/sqlite_keys.rs). A table ordered by key changed a leaf page per key, clients'
-- keys being random; appended in order, a batch of keys fills a page or two, and the index by
-- hash takes two integers a key.
--
-- The old table's keys have no hash (SHA-256 is not SQL's): they wait in
-- `idempotency_keys_unhashed` until the server moves them, at its first start after this
-- migration, before it serves a call.
DROP INDEX idempotency_keys_by_age;
ALTER TABLE idempotency_keys RENAME TO idempotency_keys_unhashed;
CREATE TABLE idempotency_keys (
    -- The key's place in the order keys are stored; never taken twice.
    seq     INTEGER PRIMARY KEY,
    -- The first 64 bits of a SHA-256 of the caller, a zero byte and the key.
    hash    INTEGER NOT NULL,
    -- The token's subject (`anonymous` without authentication): keys are per caller.
    caller  TEXT NOT NULL,
    key     TEXT NOT NULL,
    -- The RPC and a SHA-256 of its whole request: the same key with another request is refused.
    method  TEXT NOT NULL,
    digest  BLOB NOT NULL,
    answer  TEXT NOT NULL,
    -- Milliseconds since the Unix epoch; keys older than --idempotency-ttl are forgotten.
    created INTEGER NOT NULL
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created);
-- The keys up to `idempotency_keys_indexed.upto`, by hash; the newer ones (the tail) the server
-- keeps by hash in memory, and adds here a few thousand at a time, in hash order.
CREATE TABLE idempotency_keys_by_hash (
    hash INTEGER NOT NULL,
    seq  INTEGER NOT NULL,
    PRIMARY KEY (hash, seq)
) WITHOUT ROWID;
CREATE TABLE idempotency_keys_indexed (upto INTEGER NOT NULL);
-- The log of recent keys has their hashes: its keys move here, indexed.
INSERT INTO idempotency_keys (hash, caller, key, method, digest, answer, created)
    SELECT hash, caller, key, method, digest, answer, created FROM recent_keys ORDER BY seq;
INSERT INTO idempotency_keys_by_hash (hash, seq) SELECT hash, seq FROM idempotency_keys;
INSERT INTO idempotency_keys_indexed (upto) SELECT coalesce(max(seq), 0) FROM idempotency_keys;
DROP TABLE recent_keys;
