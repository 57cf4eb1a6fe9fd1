-- When the schedule meant each run to start (its tick) and when it started, epoch ms UTC:
-- `started_at - scheduled_at` is the schedule lag. NULL for references the reconciler found
-- in the object store (no tick is known for those). Keep in step with ../sqlite/.
ALTER TABLE results
    ADD COLUMN scheduled_at BIGINT,
    ADD COLUMN started_at BIGINT;
