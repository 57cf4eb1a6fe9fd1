-- The supervisor's schema on SQLite. Keep in step with ../postgres/: same tables, same columns,
-- same constraints; only the types differ. Timestamps are epoch milliseconds UTC, ids are
-- 16-byte BLOBs (sqlx's Uuid encoding), which sort like PostgreSQL's uuid.
-- STRICT tables reject a value of the wrong type instead of silently storing it.

CREATE TABLE streams (
    id             BLOB    NOT NULL PRIMARY KEY,
    adapter        TEXT    NOT NULL,
    endpoint       TEXT    NOT NULL,
    secret_key     TEXT    NOT NULL,
    interval_ms    INTEGER CHECK (interval_ms > 0),
    cron           TEXT,
    timeout_ms     INTEGER NOT NULL CHECK (timeout_ms > 0),
    bucket_name    TEXT    NOT NULL,
    -- A JSON object, the adapter parameters as the user gave them.
    params         TEXT    NOT NULL DEFAULT '{}',
    -- The desired state; `failed` waits for a person (bad or expired key).
    state          TEXT    NOT NULL CHECK (state IN ('running', 'stopped', 'failed')),
    -- The assignment: which worker runs it, under which generation.
    worker_id      TEXT,
    generation     INTEGER NOT NULL DEFAULT 0,
    last_result_at INTEGER,
    last_error     TEXT,
    last_error_at  INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    -- A worker's Schedule is either an interval or a cron expression, never both or neither.
    CHECK ((interval_ms IS NULL) <> (cron IS NULL))
) STRICT;

CREATE INDEX streams_created_idx ON streams (created_at, id);
CREATE INDEX streams_worker_idx ON streams (worker_id);

CREATE TABLE workers (
    id           TEXT    NOT NULL PRIMARY KEY,
    capacity     INTEGER NOT NULL,
    -- A JSON list of adapter names.
    adapters     TEXT    NOT NULL DEFAULT '[]',
    connected    INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL,
    connected_at INTEGER NOT NULL
) STRICT;

CREATE TABLE results (
    id         BLOB    NOT NULL PRIMARY KEY,
    stream_id  BLOB    NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    bucket     TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    fetched_at INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    sha256     TEXT    NOT NULL,
    status     TEXT    NOT NULL CHECK (status IN ('ok', 'reconciled')),
    created_at INTEGER NOT NULL
) STRICT;

-- Keyset pagination per stream, newest (highest UUIDv7) first; also serves the cascade.
CREATE INDEX results_stream_id_idx ON results (stream_id, id);

CREATE TABLE measurements (
    stream_id  BLOB    NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    -- current.pollution.ts: with the stream, the reading's identity (IQAir updates hourly).
    ts         INTEGER NOT NULL,
    result_id  BLOB    NOT NULL,
    city       TEXT,
    state      TEXT,
    country    TEXT,
    lat        REAL,
    lon        REAL,
    aqius      REAL,
    mainus     TEXT,
    aqicn      REAL,
    maincn     TEXT,
    weather_ts INTEGER,
    tp         REAL,
    pr         REAL,
    hu         REAL,
    ws         REAL,
    wd         REAL,
    ic         TEXT,
    heat_index REAL,
    PRIMARY KEY (stream_id, ts)
) STRICT, WITHOUT ROWID;

CREATE TABLE run_failures (
    run_id         BLOB    NOT NULL PRIMARY KEY,
    stream_id      BLOB    NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    at             INTEGER NOT NULL,
    class          TEXT    NOT NULL,
    message        TEXT    NOT NULL,
    stream_stopped INTEGER NOT NULL
) STRICT;

CREATE INDEX run_failures_stream_at_idx ON run_failures (stream_id, at);
