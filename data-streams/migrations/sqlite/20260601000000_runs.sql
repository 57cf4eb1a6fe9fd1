-- Runs as records (GET /streams/{id}/runs, GET /runs/{id}), sources that describe their calls
-- (HTTP_JSON), and incremental windows. Keep in step with the other backend's migration of the
-- same name. INTEGER is SQLite's 64-bit integer (STRICT accepts no BIGINT).
--
-- One row per run: a single fetch (its result or its failure says it all), or a run of several
-- steps (pages, an async job, a sweep) that workers report as it goes.
CREATE TABLE runs (
    -- The run's UUIDv7: newest first is id order.
    id             BLOB    NOT NULL PRIMARY KEY,
    stream_id      BLOB    NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    -- The slot (tick) the run is for, when it started, when it ended (NULL while it runs).
    scheduled_at   INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    status         TEXT    NOT NULL CHECK (status IN
        ('running', 'queued', 'processing', 'stored', 'failed', 'truncated')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    pages          INTEGER NOT NULL DEFAULT 0,
    records        INTEGER,
    bytes          INTEGER NOT NULL DEFAULT 0,
    -- The incremental window [start, end) the run covers; NULL for sources without windows.
    window_start   INTEGER,
    window_end     INTEGER,
    -- A JSON array of the async job's states, [{"state", "at"}]; NULL without a job.
    job            TEXT,
    -- Why it failed or was cut short.
    class          TEXT,
    message        TEXT,
    stream_stopped INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX runs_stream_id_idx ON runs (stream_id, id);

-- Every object names its run and its page in it. NULL for objects stored before runs were
-- recorded (each was a run of its own) and for references the reconciler found.
ALTER TABLE results ADD COLUMN run_id BLOB;
ALTER TABLE results ADD COLUMN page INTEGER;
CREATE INDEX results_run_idx ON results (run_id, page);

-- What an HTTP_JSON stream calls (request, pagination, records, max_pages, page_concurrency,
-- job), as the JSON object the user gave; '{}' for sources without one.
ALTER TABLE streams ADD COLUMN source TEXT NOT NULL DEFAULT '{}';
-- Where the first incremental window starts (epoch ms), when the user said.
ALTER TABLE streams ADD COLUMN start_at INTEGER;
-- The end of the newest window a run stored: where the next run's window starts.
ALTER TABLE streams ADD COLUMN window_end INTEGER;

-- The runs before this table: each stored object was one run, each failure one run.
INSERT INTO runs (id, stream_id, scheduled_at, started_at, finished_at, status, attempts, pages,
                  bytes)
    SELECT id, stream_id, COALESCE(scheduled_at, fetched_at), COALESCE(started_at, fetched_at),
           fetched_at, 'stored', 1, 1, size
    FROM results;
INSERT INTO runs (id, stream_id, scheduled_at, started_at, finished_at, status, attempts, pages,
                  bytes, class, message, stream_stopped)
    SELECT run_id, stream_id, at, at, at, 'failed', 1, 0, 0, class, message, stream_stopped
    FROM run_failures WHERE true
    ON CONFLICT (id) DO NOTHING;
UPDATE results SET run_id = id, page = 0;
