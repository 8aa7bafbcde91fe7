-- Idempotency keys: each stored in the transaction of the write it names, with that write's
-- answer, so that the same request sent again with the same key is answered, not applied again.
CREATE TABLE idempotency_keys (
    -- The token's subject (`anonymous` without authentication): keys are per caller.
    caller  TEXT NOT NULL,
    key     TEXT NOT NULL,
    -- The RPC and a SHA-256 of its whole request: the same key with another request is refused.
    method  TEXT NOT NULL,
    digest  BYTEA NOT NULL,
    answer  TEXT NOT NULL,
    -- Milliseconds since the Unix epoch; keys older than --idempotency-ttl are forgotten.
    created BIGINT NOT NULL,
    PRIMARY KEY (caller, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created);
