-- The newest orders wait in a short tail before they enter the trigram index. FTS5 writes a new
-- segment, its index entry, its structure and document-size records for every transaction that
-- adds to it: a commit of one order wrote 10 pages to the WAL instead of 4, and one `addOrder`
-- at a time took a third longer. Now an order whose `seq` is above `indexed_upto` is in the tail:
-- a search reads those (fewer than `merge_at`) directly, beside what the index finds. The insert
-- that brings the tail to `merge_at` orders moves them all into the index, in its own
-- transaction, so every write still leaves the index and the tail right together.
CREATE TABLE search_tail (
    -- The highest `seq` the index holds: orders above it are the tail.
    indexed_upto INTEGER NOT NULL,
    -- How many orders the tail reaches before they are indexed: a search reads up to that many
    -- directly; a smaller tail makes more, smaller index writes.
    merge_at     INTEGER NOT NULL CHECK (merge_at >= 1)
);
INSERT INTO search_tail (indexed_upto, merge_at) SELECT coalesce(max(seq), 0), 1024 FROM orders;

-- An order below the line (a `seq` freed by a delete and given again) goes to the index at once.
DROP TRIGGER order_search_insert;
CREATE TRIGGER order_search_insert AFTER INSERT ON orders
WHEN new.search_text IS NOT NULL AND new.seq <= (SELECT indexed_upto FROM search_tail) BEGIN
    INSERT INTO order_search (rowid, search_text) VALUES (new.seq, new.search_text);
END;
CREATE TRIGGER order_search_merge AFTER INSERT ON orders
WHEN new.seq >= (SELECT indexed_upto + merge_at FROM search_tail) BEGIN
    INSERT INTO order_search (rowid, search_text)
        SELECT seq, search_text FROM orders
        WHERE seq > (SELECT indexed_upto FROM search_tail) AND search_text IS NOT NULL;
    UPDATE search_tail SET indexed_upto = (SELECT max(seq) FROM orders);
END;

-- Changes to the tail need nothing: a search reads its orders as they are.
DROP TRIGGER order_search_update;
CREATE TRIGGER order_search_update AFTER UPDATE OF search_text ON orders
WHEN old.seq <= (SELECT indexed_upto FROM search_tail) BEGIN
    DELETE FROM order_search WHERE rowid = old.seq;
    INSERT INTO order_search (rowid, search_text)
        SELECT new.seq, new.search_text WHERE new.search_text IS NOT NULL;
END;
DROP TRIGGER order_search_delete;
CREATE TRIGGER order_search_delete AFTER DELETE ON orders
WHEN old.seq <= (SELECT indexed_upto FROM search_tail) BEGIN
    DELETE FROM order_search WHERE rowid = old.seq;
END;
