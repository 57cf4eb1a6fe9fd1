-- Which version of the adapter's parser produced each reading (the catalogue owns the number,
-- `catalogue::Source::parser_version`), so rows from an older parser can be found and re-parsed
-- from the raw objects. Rows stored before this column existed came from version 1.
-- Keep in step with the other backend's migration of the same name.
ALTER TABLE measurements ADD COLUMN parser_version INTEGER NOT NULL DEFAULT 1;
