-- The warehouse tables (`data-streams::tables`): one row per Parquet file written, i.e. per
-- (bucket, adapter, UTC day), with what it held when it was written. A closed day whose
-- measurements no longer match (`row_count`, `parser_version_sum`: late readings, a re-parse, a
-- deleted stream) is compacted again. Keep in step with the other backend's migration of the
-- same name.
CREATE TABLE table_files (
    bucket             TEXT    NOT NULL,
    adapter            TEXT    NOT NULL,
    -- The UTC day, YYYY-MM-DD (sorts as text).
    day                TEXT    NOT NULL,
    -- The object's key in `bucket`.
    key                TEXT    NOT NULL,
    row_count          BIGINT  NOT NULL,
    byte_count         BIGINT  NOT NULL,
    -- The distinct parser versions of the rows, ascending, comma-separated.
    parser_versions    TEXT    NOT NULL,
    -- The sum of the rows' parser versions: with `row_count`, the watermark a re-parse moves.
    parser_version_sum BIGINT  NOT NULL,
    compacted_at       BIGINT  NOT NULL,
    PRIMARY KEY (bucket, adapter, day)
);

CREATE INDEX table_files_day_idx ON table_files (day);
