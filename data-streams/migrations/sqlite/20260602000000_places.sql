-- A reading's identity gains its place: one stream may now read many places (an IQAir sweep of
-- a country reads every city of it, each with the same hourly timestamp). The place is
-- `country/state/city` as the reading names them ('' parts where absent). Keep in step with the
-- other backend's migration of the same name.
--
-- SQLite cannot change a primary key in place: the table is rebuilt, rows copied.
CREATE TABLE measurements_by_place (
    stream_id      BLOB    NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    place          TEXT    NOT NULL,
    ts             INTEGER NOT NULL,
    result_id      BLOB    NOT NULL,
    city           TEXT,
    state          TEXT,
    country        TEXT,
    lat            REAL,
    lon            REAL,
    aqius          REAL,
    mainus         TEXT,
    aqicn          REAL,
    maincn         TEXT,
    weather_ts     INTEGER,
    tp             REAL,
    pr             REAL,
    hu             REAL,
    ws             REAL,
    wd             REAL,
    ic             TEXT,
    heat_index     REAL,
    parser_version INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (stream_id, place, ts)
) STRICT, WITHOUT ROWID;

INSERT INTO measurements_by_place
    (stream_id, place, ts, result_id, city, state, country, lat, lon, aqius, mainus, aqicn,
     maincn, weather_ts, tp, pr, hu, ws, wd, ic, heat_index, parser_version)
    SELECT stream_id,
           COALESCE(country, '') || '/' || COALESCE(state, '') || '/' || COALESCE(city, ''),
           ts, result_id, city, state, country, lat, lon, aqius, mainus, aqicn, maincn,
           weather_ts, tp, pr, hu, ws, wd, ic, heat_index, parser_version
    FROM measurements;

DROP TABLE measurements;
ALTER TABLE measurements_by_place RENAME TO measurements;
CREATE INDEX measurements_ts_idx ON measurements (ts);
-- A stream's readings by time (GET /streams/{id}/measurements, reports).
CREATE INDEX measurements_stream_ts_idx ON measurements (stream_id, ts);
