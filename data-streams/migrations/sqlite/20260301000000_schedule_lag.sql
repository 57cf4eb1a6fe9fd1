-- When the schedule meant each run to start (its tick) and when it started, epoch ms UTC:
-- `started_at - scheduled_at` is the schedule lag. NULL for references the reconciler found
-- in the object store (no tick is known for those). Keep in step with ../postgres/.
-- INTEGER (SQLite's 64-bit integer): STRICT tables accept no other spelling of BIGINT.
ALTER TABLE results ADD COLUMN scheduled_at INTEGER;
ALTER TABLE results ADD COLUMN started_at INTEGER;
