-- The rows stored under the keys of $1 (a JSON array of [caller, key, expired_before]).
--
-- Each key is looked up on its own (LATERAL, kept apart from the outer query by OFFSET 0), so the
-- plan is an index lookup per key whatever the table's size when it was made. As a plain join, a
-- plan made while the table was empty (at start, and then cached on each pooled connection)
-- hashed the keys and scanned the whole table for every batch: keyed addOrder on PostgreSQL fell
-- from 3 000/s to 1 400/s within 36 000 keys (bench/RESULTS.md, 2026-12-06).
SELECT k.caller, k.key, k.method, k.digest, k.answer
FROM json_array_elements($1::json) AS j
CROSS JOIN LATERAL (
    SELECT * FROM idempotency_keys AS k
    WHERE k.caller = j->>0 AND k.key = j->>1 AND k.created >= (j->>2)::bigint
    OFFSET 0
) AS k
