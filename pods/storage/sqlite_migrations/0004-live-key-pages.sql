-- Version 4: deleted keys leave nothing to walk. A key deleted over the API (or revoked
-- from the CLI) keeps its row, revoked, for the operator's `keys list`; a page of keys
-- walked past every such row of its organization (200,000 of them: 85 ms for a page of
-- one). The page indexes now hold live keys only, so a page costs the same whatever an
-- organization deleted. Deleting a pod still finds all of its keys, deleted ones too,
-- through api_key_pod_page.
BEGIN IMMEDIATE;
DROP INDEX IF EXISTS api_key_org_page;
CREATE INDEX IF NOT EXISTS api_key_org_live_page ON api_key (org_id, created_at, key_id) WHERE revoked_at IS NULL;
CREATE INDEX IF NOT EXISTS api_key_pod_live_page ON api_key (pod_id, created_at, key_id)
    WHERE pod_id IS NOT NULL AND revoked_at IS NULL;
PRAGMA user_version = 4;
COMMIT;
