-- Indexed search. Each order's items, folded by the server (Unicode case folding, see
-- server/src/store/search.rs), are kept in `search_text`, and a trigram index over it in
-- `order_search`, updated by triggers in the transaction of every write.
--
-- The table is rebuilt to give each order a stable row number (`seq`, an INTEGER PRIMARY KEY):
-- the index names orders by it, and VACUUM may renumber the rows of a table without one.
-- `search_text` stays NULL until the server fills it, at its first start after this migration.
CREATE TABLE orders_with_seq (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    -- The items as a JSON array of strings, in the order the client sent them.
    items       TEXT NOT NULL,
    description TEXT NOT NULL,
    price       REAL NOT NULL,
    destination TEXT NOT NULL,
    search_text TEXT
);
INSERT INTO orders_with_seq (id, items, description, price, destination)
    SELECT id, items, description, price, destination FROM orders ORDER BY length(id), id;
DROP TABLE orders;
ALTER TABLE orders_with_seq RENAME TO orders;
CREATE INDEX orders_in_id_order ON orders (length(id), id);

-- Trigrams of the folded items, case-sensitive (they are folded already), without positions
-- (`detail = none`: a search asks for orders having all its trigrams, then checks the text).
-- Contentless: the text is in `orders` already.
CREATE VIRTUAL TABLE order_search USING fts5 (
    search_text,
    content = '',
    contentless_delete = 1,
    tokenize = 'trigram case_sensitive 1',
    detail = none
);
CREATE TRIGGER order_search_insert AFTER INSERT ON orders
WHEN new.search_text IS NOT NULL BEGIN
    INSERT INTO order_search (rowid, search_text) VALUES (new.seq, new.search_text);
END;
CREATE TRIGGER order_search_update AFTER UPDATE OF search_text ON orders BEGIN
    DELETE FROM order_search WHERE rowid = old.seq;
    INSERT INTO order_search (rowid, search_text)
        SELECT new.seq, new.search_text WHERE new.search_text IS NOT NULL;
END;
CREATE TRIGGER order_search_delete AFTER DELETE ON orders BEGIN
    DELETE FROM order_search WHERE rowid = old.seq;
END;
