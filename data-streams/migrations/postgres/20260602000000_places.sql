-- A reading's identity gains its place: one stream may now read many places (an IQAir sweep of
-- a country reads every city of it, each with the same hourly timestamp). The place is
-- `country/state/city` as the reading names them ('' parts where absent). Keep in step with
-- ../sqlite/.
ALTER TABLE measurements ADD COLUMN place TEXT NOT NULL DEFAULT '';
UPDATE measurements
    SET place = COALESCE(country, '') || '/' || COALESCE(state, '') || '/' || COALESCE(city, '');
ALTER TABLE measurements ALTER COLUMN place DROP DEFAULT;
ALTER TABLE measurements DROP CONSTRAINT measurements_pkey;
ALTER TABLE measurements ADD PRIMARY KEY (stream_id, place, ts);
-- A stream's readings by time (GET /streams/{id}/measurements, reports).
CREATE INDEX measurements_stream_ts_idx ON measurements (stream_id, ts);
