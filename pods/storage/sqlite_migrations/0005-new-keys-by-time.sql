-- Version 5: a server learns of keys made elsewhere (another worker, the CLI) within a
-- second, by polling for the live keys created since its last look; this index makes
-- that poll read the new keys only, however many there are.
BEGIN IMMEDIATE;
CREATE INDEX IF NOT EXISTS api_key_live_created ON api_key (created_at) WHERE revoked_at IS NULL;
PRAGMA user_version = 5;
COMMIT;
