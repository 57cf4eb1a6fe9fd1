-- The reconciler's watermarks: for each stream and layout, the last object (its key after the
-- stream's prefix, `dt=YYYY-MM-DD/<result_id>.json`) up to which everything listed is indexed.
-- Keys of one stream sort by time (UUIDv7 result ids), so a pass lists only what sorts after.
-- COLLATE "C": compared in byte order, as the object stores sort keys (a locale's collation
-- would not: it weighs '-' and '/' differently).
CREATE TABLE reconcile_watermarks (
    stream_id    UUID    NOT NULL PRIMARY KEY REFERENCES streams (id) ON DELETE CASCADE,
    -- The current layout (`<adapter>/stream_id=<id>/…`); NULL: nothing indexed past the window.
    hive_after   TEXT COLLATE "C",
    -- The first layout (`<adapter>/<id>/…`).
    legacy_after TEXT COLLATE "C",
    updated_at   BIGINT  NOT NULL
);
