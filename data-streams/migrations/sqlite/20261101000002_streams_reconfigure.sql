-- A stream changed on a replica that does not lead: its worker needs the new config. The leader
-- hands it over on the follower's notification, or in its sweep if that was lost, and clears
-- the mark. Small by construction (empty between sweeps).
ALTER TABLE streams ADD COLUMN reconfigure BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX streams_reconfigure_idx ON streams (id) WHERE reconfigure;
