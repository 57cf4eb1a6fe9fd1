-- A stream changed on a replica that does not lead: its worker needs the new config. The leader
-- hands it over on the follower's notification, or in its sweep if that was lost, and clears
-- the mark. Small by construction (empty between sweeps). (`streams` is STRICT: no BOOLEAN.)
ALTER TABLE streams ADD COLUMN reconfigure INTEGER NOT NULL DEFAULT 0 CHECK (reconfigure IN (0, 1));
CREATE INDEX streams_reconfigure_idx ON streams (id) WHERE reconfigure;
