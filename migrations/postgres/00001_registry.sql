-- Registry and name tables shared by both PostgreSQL modes.
-- Public (documented in docs/sql.md): devices, metrics.
-- Internal: meridian_meta, device_ids, device_tokens, api_keys,
-- device_sessions (device_sessions is readable and documented too).

-- +goose Up
CREATE TABLE meridian_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Compact ids for device names as stored in readings. Never deleted when a
-- device is removed from the registry (its readings stay queryable), only
-- when it is purged; so a cached name->id mapping never goes stale.
CREATE TABLE device_ids (
    id     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device text NOT NULL UNIQUE
);

-- Compact ids for metric names; registered in bulk by the write path.
CREATE TABLE metrics (
    id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    metric     text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The device registry. acked_seq is the durable watermark: the highest
-- batch seq committed, read and written under this row's lock.
CREATE TABLE devices (
    device     text PRIMARY KEY,
    name       text NOT NULL DEFAULT '',
    labels     jsonb NOT NULL DEFAULT '{}',
    enabled    boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz,
    acked_seq  bigint NOT NULL DEFAULT 0 CHECK (acked_seq >= 0)
);

-- Device tokens: only a hash is stored, never the token.
CREATE TABLE device_tokens (
    hash       bytea PRIMARY KEY,
    device     text NOT NULL REFERENCES devices (device) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE INDEX device_tokens_device ON device_tokens (device);

-- Operator API keys: only a hash is stored.
CREATE TABLE api_keys (
    id         text PRIMARY KEY,
    hash       bytea NOT NULL UNIQUE,
    name       text NOT NULL DEFAULT '',
    role       text NOT NULL CHECK (role IN ('admin', 'viewer')),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE device_sessions (
    id           text PRIMARY KEY,
    device       text NOT NULL REFERENCES devices (device) ON DELETE CASCADE,
    node         text NOT NULL DEFAULT '',
    remote_addr  text NOT NULL DEFAULT '',
    transport    text NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL,
    ended_at     timestamptz,
    close_reason text NOT NULL DEFAULT '',
    readings     bigint NOT NULL DEFAULT 0
);
CREATE INDEX device_sessions_device_started ON device_sessions (device, started_at DESC);

-- +goose Down
DROP TABLE device_sessions;
DROP TABLE api_keys;
DROP TABLE device_tokens;
DROP TABLE devices;
DROP TABLE metrics;
DROP TABLE device_ids;
DROP TABLE meridian_meta;
