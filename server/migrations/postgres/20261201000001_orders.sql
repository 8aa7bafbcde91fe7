-- The order store on PostgreSQL. Orders are listed in "ID order": shorter IDs first, then by ID
-- byte by byte (COLLATE "C", whatever the database's locale), so numeric IDs come in numeric
-- order ("99" before "102") exactly as on SQLite.
CREATE TABLE orders (
    id          TEXT COLLATE "C" PRIMARY KEY,
    items       TEXT[] NOT NULL,
    description TEXT NOT NULL,
    price       REAL NOT NULL,
    destination TEXT NOT NULL
);
CREATE INDEX orders_in_id_order ON orders (length(id), id);

-- IDs the server assigns, unique across every process sharing this database.
CREATE SEQUENCE order_ids AS BIGINT;
CREATE SEQUENCE shipment_ids AS BIGINT;

-- Facts about the database itself; 'created' marks a database that has been set up (and seeded).
CREATE TABLE store_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
