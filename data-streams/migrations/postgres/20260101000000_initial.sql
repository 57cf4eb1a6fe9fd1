-- The supervisor's schema on PostgreSQL. Keep in step with ../sqlite/: same tables, same
-- columns, same constraints; only the types differ. Timestamps are epoch milliseconds UTC
-- (BIGINT), exact and identical on both backends; the API layer formats them.

CREATE TABLE streams (
    id             UUID    NOT NULL PRIMARY KEY,
    adapter        TEXT    NOT NULL,
    endpoint       TEXT    NOT NULL,
    secret_key     TEXT    NOT NULL,
    interval_ms    BIGINT  CHECK (interval_ms > 0),
    cron           TEXT,
    timeout_ms     BIGINT  NOT NULL CHECK (timeout_ms > 0),
    bucket_name    TEXT    NOT NULL,
    -- A JSON object, the adapter parameters as the user gave them. TEXT rather than JSONB so
    -- both backends hand back the same text and nothing queries inside it.
    params         TEXT    NOT NULL DEFAULT '{}',
    -- The desired state; `failed` waits for a person (bad or expired key).
    state          TEXT    NOT NULL CHECK (state IN ('running', 'stopped', 'failed')),
    -- The assignment: which worker runs it, under which generation.
    worker_id      TEXT,
    generation     BIGINT  NOT NULL DEFAULT 0,
    last_result_at BIGINT,
    last_error     TEXT,
    last_error_at  BIGINT,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    -- A worker's Schedule is either an interval or a cron expression, never both or neither.
    CHECK ((interval_ms IS NULL) <> (cron IS NULL))
);

CREATE INDEX streams_created_idx ON streams (created_at, id);
CREATE INDEX streams_worker_idx ON streams (worker_id);

CREATE TABLE workers (
    id           TEXT    NOT NULL PRIMARY KEY,
    capacity     BIGINT  NOT NULL,
    -- A JSON list of adapter names.
    adapters     TEXT    NOT NULL DEFAULT '[]',
    connected    BOOLEAN NOT NULL,
    last_seen    BIGINT  NOT NULL,
    connected_at BIGINT  NOT NULL
);

CREATE TABLE results (
    id         UUID    NOT NULL PRIMARY KEY,
    stream_id  UUID    NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    bucket     TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    fetched_at BIGINT  NOT NULL,
    size       BIGINT  NOT NULL,
    sha256     TEXT    NOT NULL,
    status     TEXT    NOT NULL CHECK (status IN ('ok', 'reconciled')),
    created_at BIGINT  NOT NULL
);

-- Keyset pagination per stream, newest (highest UUIDv7) first; also serves the cascade.
CREATE INDEX results_stream_id_idx ON results (stream_id, id);

CREATE TABLE measurements (
    stream_id  UUID    NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    -- current.pollution.ts: with the stream, the reading's identity (IQAir updates hourly).
    ts         BIGINT  NOT NULL,
    result_id  UUID    NOT NULL,
    city       TEXT,
    state      TEXT,
    country    TEXT,
    lat        DOUBLE PRECISION,
    lon        DOUBLE PRECISION,
    aqius      DOUBLE PRECISION,
    mainus     TEXT,
    aqicn      DOUBLE PRECISION,
    maincn     TEXT,
    weather_ts BIGINT,
    tp         DOUBLE PRECISION,
    pr         DOUBLE PRECISION,
    hu         DOUBLE PRECISION,
    ws         DOUBLE PRECISION,
    wd         DOUBLE PRECISION,
    ic         TEXT,
    heat_index DOUBLE PRECISION,
    PRIMARY KEY (stream_id, ts)
);

CREATE TABLE run_failures (
    run_id         UUID    NOT NULL PRIMARY KEY,
    stream_id      UUID    NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    at             BIGINT  NOT NULL,
    class          TEXT    NOT NULL,
    message        TEXT    NOT NULL,
    stream_stopped BOOLEAN NOT NULL
);

CREATE INDEX run_failures_stream_at_idx ON run_failures (stream_id, at);
