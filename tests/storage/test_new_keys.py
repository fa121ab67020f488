"""How a server learns of keys made elsewhere (another worker or instance, the CLI):
``live_key_owners_since`` returns the live keys created since its last call's mark,
each once past the backend's overlap, and never a revoked or expired one."""

from pods.api.auth import hash_key, new_token, token_prefix
from pods.storage import open_storage


def at(second: int) -> str:
    return f"2026-03-01T00:{second // 60:02d}:{second % 60:02d}.000000Z"


def test_the_live_keys_made_since_the_last_look_are_found_and_nothing_else(database):
    storage = open_storage(database)
    storage.prepare()

    def make(org: str, **fields) -> tuple[str, dict]:
        token = new_token()
        return hash_key(token), storage.insert_api_key(org, hash_key(token), token_prefix(token), **fields)

    try:
        storage.clock = lambda: at(0)
        make("acme")  # before the first look: never returned
        storage.clock = lambda: at(60)
        owners, mark = storage.live_key_owners_since(None)
        assert owners == []  # the first look only sets the mark
        storage.clock = lambda: at(61)
        new_hash, new = make("globex")
        make("acme", expires_at=at(30))  # made expired
        _, revoked = make("acme")
        storage.revoke_api_key(revoked["key_id"])
        storage.clock = lambda: at(62)
        owners, mark = storage.live_key_owners_since(mark)
        org_id = storage.caller_for_key_hash(new_hash)["org_id"]
        assert owners == [(new_hash, org_id, "globex", new["key_id"])]
        # Looks long after it: nothing new (PostgreSQL looks 5 s back, for late commits).
        storage.clock = lambda: at(120)
        owners, mark = storage.live_key_owners_since(mark)
        storage.clock = lambda: at(121)
        assert storage.live_key_owners_since(mark)[0] == []
        later_hash, later = make("globex")
        storage.clock = lambda: at(122)
        assert storage.live_key_owners_since(mark)[0] == [(later_hash, org_id, "globex", later["key_id"])]
    finally:
        storage.close()
