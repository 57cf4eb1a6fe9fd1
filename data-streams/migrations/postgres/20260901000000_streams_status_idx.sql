-- `GET /streams/count` at a million streams: a stream's status (running, pending, stopped,
-- failed) is a function of its worker, state and adapter, so with those three in one index the
-- counts (all of them, or one worker's) are read from the index alone instead of every row.
CREATE INDEX streams_status_idx ON streams (worker_id, state, adapter);
