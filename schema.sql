-- Schema version 1: the baseline. Applied only to a database whose user_version is 0;
-- later changes are pods/storage/sqlite_migrations/. Every statement is idempotent, so a crash
-- before the version bump is harmless: the next start runs this again.
BEGIN IMMEDIATE;

CREATE TABLE IF NOT EXISTS organization (
    org_id     INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS api_key (
    key_id     TEXT PRIMARY KEY,
    org_id     INTEGER NOT NULL REFERENCES organization (org_id),
    key_hash   TEXT NOT NULL UNIQUE,          -- sha256 hex of the token; the token is never stored
    created_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE TABLE IF NOT EXISTS pod (
    pod_id     TEXT PRIMARY KEY,
    org_id     INTEGER NOT NULL REFERENCES organization (org_id),
    name       TEXT NOT NULL,
    client_id  TEXT,
    created_at TEXT NOT NULL                  -- fixed-width RFC 3339 UTC, so text order is time order
);

-- Keyset paging: (org_id, created_at, pod_id) in either direction.
CREATE INDEX IF NOT EXISTS pod_org_order ON pod (org_id, created_at, pod_id);

-- Idempotent create: the index, not a read-then-insert, decides. NULL client_ids never collide.
CREATE UNIQUE INDEX IF NOT EXISTS pod_org_client ON pod (org_id, client_id);

CREATE TABLE IF NOT EXISTS setting (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

PRAGMA user_version = 1;
COMMIT;
