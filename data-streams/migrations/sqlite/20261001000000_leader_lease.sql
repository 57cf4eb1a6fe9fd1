-- Keeps the numbering of the PostgreSQL migrations, where this adds the leader lease and the
-- replicas. SQLite takes one supervisor per database file (an exclusive lock on the file
-- `<database>.supervisor-lock` beside it, `cluster::single`): there is no lease to hold, and
-- no replica but this one.
SELECT 1;
