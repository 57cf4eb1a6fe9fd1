-- Runs as records (GET /streams/{id}/runs, GET /runs/{id}), sources that describe their calls
-- (HTTP_JSON), and incremental windows. Keep in step with ../sqlite/ (same columns, same
-- constraints; only the types differ). Times are epoch milliseconds UTC.
--
-- One row per run: a single fetch (its result or its failure says it all), or a run of several
-- steps (pages, an async job, a sweep) that workers report as it goes.
CREATE TABLE runs (
    -- The run's UUIDv7: newest first is id order.
    id             UUID    NOT NULL PRIMARY KEY,
    stream_id      UUID    NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    -- The slot (tick) the run is for, when it started, when it ended (NULL while it runs).
    scheduled_at   BIGINT  NOT NULL,
    started_at     BIGINT  NOT NULL,
    finished_at    BIGINT,
    status         TEXT    NOT NULL CHECK (status IN
        ('running', 'queued', 'processing', 'stored', 'failed', 'truncated')),
    attempts       BIGINT  NOT NULL DEFAULT 0,
    pages          BIGINT  NOT NULL DEFAULT 0,
    records        BIGINT,
    bytes          BIGINT  NOT NULL DEFAULT 0,
    -- The incremental window [start, end) the run covers; NULL for sources without windows.
    window_start   BIGINT,
    window_end     BIGINT,
    -- A JSON array of the async job's states, [{"state", "at"}]; NULL without a job.
    job            TEXT,
    -- Why it failed or was cut short.
    class          TEXT,
    message        TEXT,
    stream_stopped BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE INDEX runs_stream_id_idx ON runs (stream_id, id);

-- Every object names its run and its page in it. NULL for objects stored before runs were
-- recorded (each was a run of its own) and for references the reconciler found.
ALTER TABLE results ADD COLUMN run_id UUID;
ALTER TABLE results ADD COLUMN page BIGINT;
CREATE INDEX results_run_idx ON results (run_id, page);

-- What an HTTP_JSON stream calls (request, pagination, records, max_pages, page_concurrency,
-- job), as the JSON object the user gave; '{}' for sources without one.
ALTER TABLE streams ADD COLUMN source TEXT NOT NULL DEFAULT '{}';
-- Where the first incremental window starts (epoch ms), when the user said.
ALTER TABLE streams ADD COLUMN start_at BIGINT;
-- The end of the newest window a run stored: where the next run's window starts.
ALTER TABLE streams ADD COLUMN window_end BIGINT;

-- The runs before this table: each stored object was one run, each failure one run.
INSERT INTO runs (id, stream_id, scheduled_at, started_at, finished_at, status, attempts, pages,
                  bytes)
    SELECT id, stream_id, COALESCE(scheduled_at, fetched_at), COALESCE(started_at, fetched_at),
           fetched_at, 'stored', 1, 1, size
    FROM results;
INSERT INTO runs (id, stream_id, scheduled_at, started_at, finished_at, status, attempts, pages,
                  bytes, class, message, stream_stopped)
    SELECT run_id, stream_id, at, at, at, 'failed', 1, 0, 0, class, message, stream_stopped
    FROM run_failures
    ON CONFLICT (id) DO NOTHING;
UPDATE results SET run_id = id, page = 0;
