-- custody-store schema version 2 (PostgreSQL): enrollment tokens, shared by every service node.
-- Keep migrations/sqlite/0002_enrollment_tokens.sql equivalent.

CREATE TABLE enrollment_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    device_group TEXT,                    -- the group devices enrolling with it join
    hash         TEXT NOT NULL,           -- SHA-256 of the secret; the secret is never stored
    uses         BIGINT NOT NULL,
    uses_left    BIGINT NOT NULL CHECK (uses_left >= 0),
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);

-- Enrollment attempts that went through: a retry with the same id returns the same device.
CREATE TABLE enrollments (
    enrollment_id TEXT PRIMARY KEY,       -- chosen by the device
    token_id      TEXT NOT NULL REFERENCES enrollment_tokens (id) ON DELETE CASCADE,
    device_id     TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    at            BIGINT NOT NULL
);
CREATE INDEX enrollments_by_device ON enrollments (device_id);
