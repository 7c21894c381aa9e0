-- A version of the items, bumped in the same transaction as every item write and persisted, so
-- that an ETag issued before a restart (or by another replica) can never match different content.
CREATE TABLE items_version (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  BIGINT  NOT NULL
);
INSERT INTO items_version (id, version) VALUES (1, 0);
