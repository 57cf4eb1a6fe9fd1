-- Background jobs; for now only `reparse`: rebuild readings from the raw objects with the
-- current parser. Keep in step with ../postgres/ (same columns, same constraints; only the
-- types differ). INTEGER (SQLite's 64-bit integer): STRICT tables accept no other spelling of
-- BIGINT. Times are epoch milliseconds UTC.
CREATE TABLE jobs (
    -- A UUIDv7: jobs run in id order, and result ids above it are newer than the job.
    id             BLOB    NOT NULL PRIMARY KEY,
    kind           TEXT    NOT NULL CHECK (kind IN ('reparse')),
    -- The scope: one stream, one adapter, or everything (both NULL); and a window on the
    -- results' fetched_at, from inclusive, to exclusive. No foreign key: a job's record outlives
    -- a deleted stream.
    stream_id      BLOB,
    adapter        TEXT,
    from_ms        INTEGER,
    to_ms          INTEGER,
    -- The parser version the rebuilt rows get.
    parser_version INTEGER NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    -- The last result id processed: a restart resumes after it.
    cursor         BLOB,
    objects_total  INTEGER NOT NULL DEFAULT 0,
    objects_read   INTEGER NOT NULL DEFAULT 0,
    rows_written   INTEGER NOT NULL DEFAULT 0,
    rows_skipped   INTEGER NOT NULL DEFAULT 0,
    -- A JSON object: error class -> count.
    errors         TEXT    NOT NULL DEFAULT '{}',
    last_error     TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    CHECK (from_ms IS NULL OR to_ms IS NULL OR from_ms < to_ms)
) STRICT;

-- The runner picks the oldest running job, then the oldest queued one.
CREATE INDEX jobs_state_idx ON jobs (state, id);
