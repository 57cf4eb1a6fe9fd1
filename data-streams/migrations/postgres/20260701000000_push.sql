-- Push streams (adapter PUSH): ingest tokens, idempotent requests, and the objects a push is
-- about to store (so an object stored by a request that never committed can be removed).

-- Tokens that may push to one stream. Only a SHA-256 of the token is kept; it is shown once.
CREATE TABLE ingest_tokens (
    id         UUID    NOT NULL PRIMARY KEY,
    stream_id  UUID    NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    hash       TEXT    NOT NULL UNIQUE,
    name       TEXT,
    created_at BIGINT  NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX ingest_tokens_stream_idx ON ingest_tokens (stream_id);

-- A request with an Idempotency-Key: how far it committed (lines, records, objects), moved in
-- the same transaction as each of its objects' references, and its answer once it ended.
CREATE TABLE ingest_requests (
    stream_id       UUID    NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    idempotency_key TEXT    NOT NULL,
    lines           BIGINT  NOT NULL,
    accepted        BIGINT  NOT NULL,
    -- A JSON list of the result ids committed so far.
    result_ids      TEXT    NOT NULL,
    -- The answer (status and JSON body) once the request ended; NULL while it may resume.
    status          INTEGER,
    answer          TEXT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    PRIMARY KEY (stream_id, idempotency_key)
);

-- An object a push is storing: written before the put, removed with the reference's commit.
-- One left behind is an object no reference will ever name; the reconciler deletes it.
CREATE TABLE push_intents (
    result_id  UUID    NOT NULL PRIMARY KEY,
    bucket     TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
