-- Several supervisors on one PostgreSQL database (RFC §4, "Replicas"): the leader lease and
-- the replicas that are there. Both are ordinary, logged tables: an epoch kept in an UNLOGGED
-- table is emptied by a crash, and the next leader would be handed a fencing token that was
-- handed out before.

-- The lease: one row, ever. Who holds it, under which epoch, until when by the database's clock
-- (no replica's clock is ever compared with another's).
CREATE TABLE leader_lease (
    -- The key can only be 1: a second row cannot exist.
    id          SMALLINT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    -- The holding process: a UUIDv7 drawn at each process start, so a restarted process is a
    -- new holder and never renews what its previous life held.
    holder      UUID NOT NULL,
    -- The fencing token: one more at every acquisition, never reused.
    epoch       BIGINT NOT NULL CHECK (epoch > 0),
    expires_at  TIMESTAMPTZ NOT NULL,
    -- When this holder took it.
    since       TIMESTAMPTZ NOT NULL,
    -- Where the leader serves (as it advertises them), for the replicas and `GET /cluster`.
    http_addr   TEXT NOT NULL,
    worker_addr TEXT NOT NULL
);

-- The row carries the epoch: deleted, the next acquisition would start over at 1 and a
-- deposed leader's epoch could come round again. (TRUNCATE is not covered: nothing runs it.)
CREATE FUNCTION leader_lease_is_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the leader lease row is never deleted: its epoch must only grow';
END
$$;
CREATE TRIGGER leader_lease_is_never_deleted BEFORE DELETE ON leader_lease
    FOR EACH ROW EXECUTE FUNCTION leader_lease_is_never_deleted();

-- Every supervisor process, leader or not: a heartbeat row per process start.
CREATE TABLE replicas (
    -- The process's holder id (the same UUIDv7 it would hold the lease under).
    id          UUID PRIMARY KEY,
    http_addr   TEXT NOT NULL,
    worker_addr TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The database's clock at its last heartbeat.
    last_seen   TIMESTAMPTZ NOT NULL
);
-- Old rows (processes long gone) are deleted by the heartbeats by age.
CREATE INDEX replicas_last_seen_idx ON replicas (last_seen);
