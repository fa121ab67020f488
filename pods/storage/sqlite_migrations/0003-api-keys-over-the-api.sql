-- Version 3: API keys over the API. A key gets a name, the prefix of its token, an
-- optional pod scope, its permissions, an expiry, and when it was last used and
-- updated. Keys made before this version keep working as organization keys with
-- every permission; their tokens were never stored, so their prefix is unknown ('')
-- and they are named after their id. SQLite cannot add NOT NULL columns to a table
-- that has rows, so the table is rebuilt.
BEGIN IMMEDIATE;

CREATE TABLE api_key_v3 (
    key_id      TEXT PRIMARY KEY,
    org_id      INTEGER NOT NULL REFERENCES organization (org_id),
    pod_id      TEXT REFERENCES pod (pod_id),  -- NULL: an organization key
    key_hash    TEXT NOT NULL UNIQUE,          -- sha256 hex of the token; the token is never stored
    prefix      TEXT NOT NULL,                 -- the token's first 12 characters
    name        TEXT NOT NULL,
    permissions TEXT,                          -- NULL: every permission; else the granted names, space-separated
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    expires_at  TEXT,                          -- NULL: never
    used_at     TEXT,                          -- to within a minute; NULL: never used
    revoked_at  TEXT                           -- revoked (CLI) or deleted (API): refused, and gone from the API
);

INSERT INTO api_key_v3 (key_id, org_id, key_hash, prefix, name, created_at, updated_at, revoked_at)
    SELECT key_id, org_id, key_hash, '', 'key ' || key_id, created_at, created_at, revoked_at FROM api_key;
DROP TABLE api_key;
ALTER TABLE api_key_v3 RENAME TO api_key;

-- Keyset paging of an organization's keys, and of one pod's.
CREATE INDEX api_key_org_page ON api_key (org_id, created_at, key_id);
CREATE INDEX api_key_pod_page ON api_key (pod_id, created_at, key_id) WHERE pod_id IS NOT NULL;

PRAGMA user_version = 3;
COMMIT;
