-- Indexed search. Each order's items, folded by the server (Unicode case folding, see
-- server/src/store/search.rs), are kept in `search_text`, NULL until the server fills it at its
-- first start after this migration, and indexed by trigrams (pg_trgm ships with PostgreSQL and
-- is a trusted extension: the database's owner may create it).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
ALTER TABLE orders ADD COLUMN search_text TEXT;
CREATE INDEX orders_search ON orders USING gin (search_text gin_trgm_ops);
