-- custody-store schema version 2 (SQLite): enrollment tokens, shared by every service node.
-- Keep migrations/postgres/0002_enrollment_tokens.sql equivalent.

CREATE TABLE enrollment_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    device_group TEXT,                    -- the group devices enrolling with it join
    hash         TEXT NOT NULL,           -- SHA-256 of the secret; the secret is never stored
    uses         INTEGER NOT NULL,
    uses_left    INTEGER NOT NULL CHECK (uses_left >= 0),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);

-- Enrollment attempts that went through: a retry with the same id returns the same device.
CREATE TABLE enrollments (
    enrollment_id TEXT PRIMARY KEY,       -- chosen by the device
    token_id      TEXT NOT NULL REFERENCES enrollment_tokens (id) ON DELETE CASCADE,
    device_id     TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    at            INTEGER NOT NULL
);
CREATE INDEX enrollments_by_device ON enrollments (device_id);
