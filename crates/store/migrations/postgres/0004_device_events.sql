-- custody-store schema version 4 (PostgreSQL): events about a product or the agent, not only about one update
-- (update_id and revision may be NULL), their product, versions, rollback reason and recovery, the delivery
-- statistics of downloads, and those statistics summed per device.
-- Keep migrations/sqlite/0004_device_events.sql equivalent.

ALTER TABLE events
    ALTER COLUMN update_id DROP NOT NULL,
    ALTER COLUMN revision DROP NOT NULL,
    ADD COLUMN product             TEXT,
    ADD COLUMN from_version        TEXT,
    ADD COLUMN to_version          TEXT,
    ADD COLUMN reason              TEXT,
    ADD COLUMN operation           TEXT,
    ADD COLUMN outcome             TEXT,
    ADD COLUMN from_http           BIGINT,
    ADD COLUMN from_cache_server   BIGINT,
    ADD COLUMN from_lan_peers      BIGINT,
    ADD COLUMN from_group_peers    BIGINT,
    ADD COLUMN from_internet_peers BIGINT,
    ADD COLUMN to_peers            BIGINT;

-- Per device: the delivery statistics of its downloads, summed as events arrive (each event once).
CREATE TABLE delivery_totals (
    device_id           TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    downloads           BIGINT NOT NULL,
    from_http           BIGINT NOT NULL,
    from_cache_server   BIGINT NOT NULL,
    from_lan_peers      BIGINT NOT NULL,
    from_group_peers    BIGINT NOT NULL,
    from_internet_peers BIGINT NOT NULL,
    to_peers            BIGINT NOT NULL
);
