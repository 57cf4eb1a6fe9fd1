-- Each stream's call budget for its API key, in fixed UTC windows; 0 means no limit on that
-- window. The defaults are IQAir Community's (IQAIR.md §7). Keep in step with ../postgres/.
-- INTEGER (SQLite's 64-bit integer): STRICT tables accept no other spelling of BIGINT.
ALTER TABLE streams ADD COLUMN rate_per_minute INTEGER NOT NULL DEFAULT 5
    CHECK (rate_per_minute BETWEEN 0 AND 1000000);
ALTER TABLE streams ADD COLUMN rate_per_day INTEGER NOT NULL DEFAULT 500
    CHECK (rate_per_day BETWEEN 0 AND 1000000);
ALTER TABLE streams ADD COLUMN rate_per_month INTEGER NOT NULL DEFAULT 10000
    CHECK (rate_per_month BETWEEN 0 AND 1000000);
