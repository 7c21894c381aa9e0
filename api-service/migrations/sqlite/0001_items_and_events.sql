-- Items: the things on the map; ids match the embedding corpus ids.
CREATE TABLE items (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    category    TEXT    NOT NULL DEFAULT '',
    attributes  TEXT    NOT NULL DEFAULT '{}',   -- JSON object of extra string fields
    created_at  INTEGER NOT NULL,                 -- unix milliseconds
    updated_at  INTEGER NOT NULL
);

-- Events: public traffic, one row per view or search. client_key makes retries idempotent.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id     INTEGER NOT NULL REFERENCES items(id),
    kind        INTEGER NOT NULL CHECK (kind IN (1, 2)),
    client_key  TEXT UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE INDEX events_by_item ON events(item_id);

-- Per-item counts, kept in the same transaction as each event so reads are O(1).
CREATE TABLE item_stats (
    item_id     INTEGER PRIMARY KEY REFERENCES items(id),
    views       INTEGER NOT NULL DEFAULT 0,
    searches    INTEGER NOT NULL DEFAULT 0
);
