-- A million streams: the assignment sweep reads the running, unassigned streams oldest first
-- (a partial index holds only those, so finding the next batch does not walk past the
-- assigned ones), and the paged list filters by state, adapter or worker in id order.
CREATE INDEX streams_unassigned_idx ON streams (created_at, id)
    WHERE state = 'running' AND worker_id IS NULL;
CREATE INDEX streams_state_id_idx ON streams (state, id);
CREATE INDEX streams_adapter_id_idx ON streams (adapter, id);
-- Replaces the index on worker_id alone: a worker's streams in id order.
CREATE INDEX streams_worker_id_idx ON streams (worker_id, id);
DROP INDEX streams_worker_idx;
