-- Each stream's call budget for its API key, in fixed UTC windows; 0 means no limit on that
-- window. The defaults are IQAir Community's (IQAIR.md §7). Keep in step with ../sqlite/.
ALTER TABLE streams
    ADD COLUMN rate_per_minute BIGINT NOT NULL DEFAULT 5
        CHECK (rate_per_minute BETWEEN 0 AND 1000000),
    ADD COLUMN rate_per_day BIGINT NOT NULL DEFAULT 500
        CHECK (rate_per_day BETWEEN 0 AND 1000000),
    ADD COLUMN rate_per_month BIGINT NOT NULL DEFAULT 10000
        CHECK (rate_per_month BETWEEN 0 AND 1000000);
