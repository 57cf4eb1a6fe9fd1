-- Reports (GET /reports/aqi) read every stream's readings in a time window.
CREATE INDEX measurements_ts_idx ON measurements (ts);
