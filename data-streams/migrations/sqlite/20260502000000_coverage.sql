-- The coverage ledger (GET /streams/{id}/coverage). Keep in step with the other backend's
-- migration of the same name. INTEGER is SQLite's 64-bit integer (STRICT accepts no BIGINT).
--
-- Every change of a stream's desired state, so the ledger can tell a period a person stopped the
-- stream (nothing was expected) from slots it missed. Written with the change itself
-- (`Db::insert_stream`, `Db::set_state`). `id` is a UUIDv7: it orders two changes in one ms.
CREATE TABLE stream_states (
    id        BLOB    NOT NULL PRIMARY KEY,
    stream_id BLOB    NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    at        INTEGER NOT NULL,
    state     TEXT    NOT NULL CHECK (state IN ('running', 'stopped', 'failed'))
) STRICT;

CREATE INDEX stream_states_stream_at_idx ON stream_states (stream_id, at, id);

-- Streams older than this table get their current state as of their creation: no history was
-- kept, and a stream stopped now is not blamed for slots it may have missed before.
INSERT INTO stream_states (id, stream_id, at, state)
    SELECT randomblob(16), id, created_at, state FROM streams;

-- The ledger reads a stream's results by tick: the run's `scheduled_at`, or the fetch time for
-- references the reconciler found (no tick known). The expression is the query's, verbatim.
CREATE INDEX results_stream_tick_idx ON results (stream_id, (COALESCE(scheduled_at, fetched_at)));
