-- The order store on SQLite. Orders are listed in "ID order": shorter IDs first, then by ID, so
-- numeric IDs come in numeric order ("99" before "102").
CREATE TABLE orders (
    id          TEXT PRIMARY KEY NOT NULL,
    -- The items as a JSON array of strings, in the order the client sent them.
    items       TEXT NOT NULL,
    description TEXT NOT NULL,
    price       REAL NOT NULL,
    destination TEXT NOT NULL
);
CREATE INDEX orders_in_id_order ON orders (length(id), id);

-- SQLite has no sequences: each row is one, advanced inside the transaction that uses a value.
CREATE TABLE sequences (
    name       TEXT PRIMARY KEY NOT NULL,
    last_value INTEGER NOT NULL
);
INSERT INTO sequences (name, last_value) VALUES ('order_ids', 0), ('shipment_ids', 0);

-- Facts about the database itself; 'created' marks a database that has been set up (and seeded).
CREATE TABLE store_info (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
