-- The log of recent keys loses its index by hash: with thousands of keys in the log, each batch
-- of keys changed a leaf page of that index per key. The server keeps the log's keys by hash in
-- memory instead (server/src/store/sqlite_keys.rs), read from the log at its first keyed write.
DROP INDEX recent_keys_by_hash;
