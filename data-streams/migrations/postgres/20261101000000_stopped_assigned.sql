-- Streams whose desired state is no longer `running` but that are still assigned: a replica
-- that does not lead stores the stop, and the leader's sweep finds it here, stops the stream on
-- its worker and clears the assignment. Small by construction (empty between sweeps).
CREATE INDEX streams_stopped_assigned_idx ON streams (id)
    WHERE worker_id IS NOT NULL AND state <> 'running';
