-- herald store schema, SQLite (see src/sqlite.rs).
--
-- channels.last_seq is the seq of the channel's newest message. It is raised
-- by an upsert in the same transaction as the message insert, so seqs are
-- 1, 2, 3, ... with no gap (never an AUTOINCREMENT: a rollback would leave
-- a gap).
CREATE TABLE channels (
    name     TEXT    NOT NULL PRIMARY KEY,
    last_seq INTEGER NOT NULL
);

-- data is the JSON text exactly as published (byte-exact round trip).
CREATE TABLE messages (
    channel TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    id      TEXT    NOT NULL,
    ts      INTEGER NOT NULL,
    sender  TEXT,
    data    TEXT    NOT NULL,
    PRIMARY KEY (channel, seq)
);

-- Age-based retention (prune) scans by ts.
CREATE INDEX messages_ts ON messages (ts);

-- Remembered idempotency keys, scoped to the publisher (PROTOCOL.md section 8).
-- fingerprint: sha256 hex of the sorted channel set and the data;
-- seqs: JSON [[channel, seq], ...] in the first request's order;
-- created_ms: the first request's ts, what the window is measured from.
CREATE TABLE idempotency (
    publisher   TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    ts          INTEGER NOT NULL,
    fingerprint TEXT    NOT NULL,
    seqs        TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (publisher, key)
);

CREATE INDEX idempotency_created ON idempotency (created_ms);
