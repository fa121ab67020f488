"""How a server learns of keys made elsewhere (another worker or instance, the CLI):
``live_key_owners_since`` returns the live keys created since its last call's mark,
never a revoked or expired one, and never misses one: not one whose writer commits
long after its insert, not one made after a pod's deletion took the newest keys."""

import threading

from pods.api.auth import hash_key, new_token, token_prefix
from pods.storage import open_storage


def at(second: int) -> str:
    return f"2026-03-01T00:{second // 60:02d}:{second % 60:02d}.000000Z"


def make(storage, org: str, **fields) -> tuple[str, dict]:
    token = new_token()
    return hash_key(token), storage.insert_api_key(org, hash_key(token), token_prefix(token), **fields)


def owners_of(storage, mark) -> tuple[set, object]:
    owners, mark = storage.live_key_owners_since(mark)
    return {key_id for _, _, _, key_id in owners}, mark


def test_the_live_keys_made_since_the_last_look_are_found_and_nothing_else(database):
    storage = open_storage(database)
    storage.prepare()
    try:
        storage.clock = lambda: at(0)
        make(storage, "acme")  # before the first look: never returned
        storage.clock = lambda: at(60)
        owners, mark = storage.live_key_owners_since(None)
        assert owners == []  # the first look only sets the mark
        storage.clock = lambda: at(61)
        new_hash, new = make(storage, "globex")
        make(storage, "acme", expires_at=at(30))  # made expired
        _, revoked = make(storage, "acme")
        storage.revoke_api_key(revoked["key_id"])
        storage.clock = lambda: at(62)
        owners, mark = storage.live_key_owners_since(mark)
        org_id = storage.caller_for_key_hash(new_hash)["org_id"]
        assert owners == [(new_hash, org_id, "globex", new["key_id"])]
        storage.clock = lambda: at(120)
        assert owners_of(storage, mark)[0] == set()
    finally:
        storage.close()


def test_a_key_whose_writer_commits_long_after_its_insert_is_found(database):
    """The CLI prints a new token before it commits (a stalled terminal holds the
    transaction open); a look meanwhile must not pass it by."""
    storage = open_storage(database)
    storage.prepare()
    cli = open_storage(database)  # another process's, as it were
    cli.clock = lambda: at(10)
    inserted, commit = threading.Event(), threading.Event()
    made = {}

    def slow_writer():
        made["hash"], made["key"] = make(cli, "acme", before_commit=lambda row: (inserted.set(), commit.wait(10)))

    try:
        storage.clock = lambda: at(0)
        mark = owners_of(storage, None)[1]
        writer = threading.Thread(target=slow_writer)
        writer.start()
        assert inserted.wait(10)
        storage.clock = lambda: at(100)  # long after the insert, the transaction still open
        found, mark = owners_of(storage, mark)
        assert found == set()
        commit.set()
        writer.join(10)
        storage.clock = lambda: at(101)
        found, mark = owners_of(storage, mark)
        assert found == {made["key"]["key_id"]}
    finally:
        commit.set()
        cli.close()
        storage.close()


def test_a_key_made_after_a_pod_deletion_removed_the_newest_keys_is_found(database):
    storage = open_storage(database)
    storage.prepare()
    try:
        storage.clock = lambda: at(0)
        org_hash, _ = make(storage, "acme")
        org_id = storage.caller_for_key_hash(org_hash)["org_id"]
        pod = storage.insert_pod(org_id, "short-lived", None)
        _, pod_key = make(storage, "acme", pod_id=pod["pod_id"])
        storage.clock = lambda: at(1)
        found, mark = owners_of(storage, owners_of(storage, None)[1])
        assert storage.delete_pod(org_id, pod["pod_id"])  # its keys go with it
        storage.clock = lambda: at(2)
        _, after = make(storage, "acme")
        storage.clock = lambda: at(3)
        assert owners_of(storage, mark)[0] == {after["key_id"]}
    finally:
        storage.close()
