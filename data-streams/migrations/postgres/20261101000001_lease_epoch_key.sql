-- The fence takes the lease row FOR KEY SHARE, not FOR SHARE. With the epoch part of a key:
-- - a takeover changes the epoch, a key update, which waits for every fenced transaction of the
--   old term to end (the fence's guarantee);
-- - a renewal changes only expires_at, which does not wait for them. With FOR SHARE a renewal
--   waited behind every fenced write, and new share lockers may keep joining ahead of a waiting
--   update: a busy leader could miss its renewals and step down under load.
CREATE UNIQUE INDEX leader_lease_epoch_key ON leader_lease (epoch);
