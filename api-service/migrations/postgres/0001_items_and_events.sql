-- The SQLite schema (migrations/sqlite/0001) in PostgreSQL's types: ids and times as BIGINT, so
-- both backends read the same i64 values.

-- Items: the things on the map; ids match the embedding corpus ids.
CREATE TABLE items (
    id          BIGINT  PRIMARY KEY,
    name        TEXT    NOT NULL,
    category    TEXT    NOT NULL DEFAULT '',
    attributes  TEXT    NOT NULL DEFAULT '{}',   -- JSON object of extra string fields
    created_at  BIGINT  NOT NULL,                 -- unix milliseconds
    updated_at  BIGINT  NOT NULL
);

-- Events: public traffic, one row per view or search. client_key makes retries idempotent, across
-- replicas too: the unique index, never a replica's memory, decides.
CREATE TABLE events (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item_id     BIGINT  NOT NULL REFERENCES items(id),
    kind        BIGINT  NOT NULL CHECK (kind IN (1, 2)),
    client_key  TEXT    UNIQUE,
    created_at  BIGINT  NOT NULL
);
CREATE INDEX events_by_item ON events(item_id);

-- Per-item counts, kept in the same transaction as each event so reads are O(1).
CREATE TABLE item_stats (
    item_id     BIGINT  PRIMARY KEY REFERENCES items(id),
    views       BIGINT  NOT NULL DEFAULT 0,
    searches    BIGINT  NOT NULL DEFAULT 0
);
