-- The rows stored under the keys of $1 (callers), $2 (keys) and $3 (each key's expired_before),
-- arrays bound in PostgreSQL's binary format, so nothing is parsed per key.
--
-- Each key is looked up on its own (LATERAL, kept apart from the outer query by OFFSET 0), so the
-- plan is an index lookup per key whatever the table's size when it was made. As a plain join, a
-- plan made while the table was empty (at start, and then cached on each pooled connection)
-- hashed the keys and scanned the whole table for every batch: keyed addOrder on PostgreSQL fell
-- from 3 000/s to 1 400/s within 36 000 keys (bench/RESULTS.md, 2026-12-06).
SELECT k.caller, k.key, k.method, k.digest, k.answer
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS j (caller, key, expired)
CROSS JOIN LATERAL (
    SELECT * FROM idempotency_keys AS k
    WHERE k.caller = j.caller AND k.key = j.key AND k.created >= j.expired
    OFFSET 0
) AS k
