-- Background jobs; for now only `reparse`: rebuild readings from the raw objects with the
-- current parser. Keep in step with ../sqlite/ (same columns, same constraints; only the
-- types differ). Times are epoch milliseconds UTC.
CREATE TABLE jobs (
    -- A UUIDv7: jobs run in id order, and result ids above it are newer than the job.
    id             UUID    NOT NULL PRIMARY KEY,
    kind           TEXT    NOT NULL CHECK (kind IN ('reparse')),
    -- The scope: one stream, one adapter, or everything (both NULL); and a window on the
    -- results' fetched_at, from inclusive, to exclusive. No foreign key: a job's record outlives
    -- a deleted stream.
    stream_id      UUID,
    adapter        TEXT,
    from_ms        BIGINT,
    to_ms          BIGINT,
    -- The parser version the rebuilt rows get.
    parser_version BIGINT  NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    -- The last result id processed: a restart resumes after it.
    cursor         UUID,
    objects_total  BIGINT  NOT NULL DEFAULT 0,
    objects_read   BIGINT  NOT NULL DEFAULT 0,
    rows_written   BIGINT  NOT NULL DEFAULT 0,
    rows_skipped   BIGINT  NOT NULL DEFAULT 0,
    -- A JSON object: error class -> count. TEXT rather than JSONB so both backends hand back
    -- the same text.
    errors         TEXT    NOT NULL DEFAULT '{}',
    last_error     TEXT,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    finished_at    BIGINT,
    CHECK (from_ms IS NULL OR to_ms IS NULL OR from_ms < to_ms)
);

-- The runner picks the oldest running job, then the oldest queued one.
CREATE INDEX jobs_state_idx ON jobs (state, id);
