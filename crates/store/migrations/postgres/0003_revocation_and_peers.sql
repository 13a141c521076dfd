-- custody-store schema version 3 (PostgreSQL): revoked devices, enrollment tokens imported from the service's former
-- enrollment.json, and the announcements of peer-to-peer delivery.
-- Keep migrations/sqlite/0003_revocation_and_peers.sql equivalent.

-- A revoked device authenticates no more and is nobody's peer; its row stays for the record.
ALTER TABLE devices ADD COLUMN revoked_at BIGINT;

-- What `hash` is the SHA-256 of: the token's 32 secret bytes (`secret`), or, for a token imported from
-- enrollment.json, the secret's base64url text (`text`).
ALTER TABLE enrollment_tokens ADD COLUMN hash_scheme TEXT NOT NULL DEFAULT 'secret'
    CHECK (hash_scheme IN ('secret', 'text'));

-- A device offering a content to its peers (and asking for peers of it), until expires_at.
CREATE TABLE peer_announcements (
    content      TEXT NOT NULL,           -- the content's SHA-256
    device_id    TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    mode         BIGINT NOT NULL,         -- the device's download mode (1 LAN, 2 group, 3 internet)
    public_addr  TEXT NOT NULL,           -- the address the service saw the request come from
    addresses    TEXT NOT NULL,           -- JSON array of "ip/prefix": the device's own interfaces
    port         BIGINT NOT NULL,
    complete     BIGINT NOT NULL,         -- 1: has every piece
    cache_server BIGINT NOT NULL,         -- 1: a cache server of its group
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (content, device_id)
);
CREATE INDEX peer_announcements_by_expiry ON peer_announcements (expires_at);
CREATE INDEX peer_announcements_by_device ON peer_announcements (device_id);

-- The networks of each announcement ("network/prefix", host bits cleared): peers sharing one are on one LAN.
CREATE TABLE peer_networks (
    content   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    network   TEXT NOT NULL,
    PRIMARY KEY (content, device_id, network),
    FOREIGN KEY (content, device_id) REFERENCES peer_announcements (content, device_id) ON DELETE CASCADE
);
