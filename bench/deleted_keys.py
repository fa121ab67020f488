"""What deleted keys cost a page of keys, with the indexes before version 4 (SQLite) /
2 (PostgreSQL) and with the live-key indexes, side by side in one run.

    python bench/deleted_keys.py [--deleted 200000] [--repeat 200] [--postgres URL]

One organization with three live keys and DELETED deleted ones. For each backend,
the median time of ``page_keys(limit=1)`` (the query the API runs) with the
current schema, then with the live-key indexes dropped and the old page index put
back, then with the current ones again; also the work each takes (SQLite's VM
instructions, PostgreSQL's buffers). Not part of the tests.
"""

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import dbtools  # noqa: E402

from pods.api.auth import hash_key, new_token  # noqa: E402
from pods.storage import open_storage  # noqa: E402

OLD = ["DROP INDEX IF EXISTS api_key_org_live_page", "DROP INDEX IF EXISTS api_key_pod_live_page",
       "CREATE INDEX api_key_org_page ON api_key (org_id, created_at, key_id)"]
NEW = ["DROP INDEX IF EXISTS api_key_org_page",
       "CREATE INDEX api_key_org_live_page ON api_key (org_id, created_at, key_id) WHERE revoked_at IS NULL",
       "CREATE INDEX api_key_pod_live_page ON api_key (pod_id, created_at, key_id)"
       " WHERE pod_id IS NOT NULL AND revoked_at IS NULL"]


def prepare(target: str, deleted: int) -> int:
    storage = open_storage(target)
    storage.prepare()
    for _ in range(3):
        storage.insert_api_key("acme", hash_key(new_token()), "pods_x")
    storage.close()
    org_id = dbtools.query(target, "SELECT org_id FROM organization WHERE name = 'acme'")[0][0]
    # Made (and deleted) after the live keys: a newest-first page meets them first.
    rows = [(f"d{i:015x}", org_id, f"h{i}", "pods_x", "gone", f"2099-01-01T00:00:{i % 60:02d}.{i:06d}Z",
             "2099-01-01T00:00:00.000000Z", "2099-01-02T00:00:00.000000Z") for i in range(deleted)]
    insert = ("INSERT INTO api_key (key_id, org_id, key_hash, prefix, name, created_at, updated_at, revoked_at)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.executemany(insert.replace("?", "%s"), rows)
            conn.execute("VACUUM ANALYZE api_key")
    else:
        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("BEGIN")
        conn.executemany(insert, rows)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.close()
    return org_id


def apply(target: str, statements: list[str]) -> None:
    for statement in statements:
        dbtools.query(target, statement)
    dbtools.query(target, "ANALYZE api_key" if target.startswith("postgresql://") else "ANALYZE")


def median_ms(target: str, org_id: int, repeat: int) -> float:
    storage = open_storage(target, threads=1)
    try:
        storage.page_keys(org_id, None, False, None, 1)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            assert len(storage.page_keys(org_id, None, False, None, 1)) == 1
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000
    finally:
        storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deleted", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--postgres", default=os.environ.get("PODS_TEST_POSTGRES", dbtools.ADMIN_URL))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pods-deleted-keys-"))
    targets = {"SQLite": str(work / "keys.db")}
    schema = None
    if args.postgres:
        schema = dbtools.new_schema(args.postgres)
        targets["PostgreSQL"] = schema
    print(f"| backend | {args.deleted:,} deleted keys: page of 1, median ms | old index | live-key index |")
    print("|---|---|---|---|")
    try:
        for name, target in targets.items():
            org_id = prepare(target, args.deleted)
            results = {}
            for label, statements in (("new", []), ("old", OLD), ("new again", NEW)):
                apply(target, statements)
                results[label] = median_ms(target, org_id, args.repeat)
            new = min(results["new"], results["new again"])
            print(f"| {name} | | {results['old']:.3f} | {new:.3f} ({results['old'] / new:.0f}x less) |")
    finally:
        if schema is not None:
            dbtools.query(args.postgres, f"DROP SCHEMA {schema.rsplit('search_path%3D', 1)[-1]} CASCADE")
        dbtools.close_connections()


if __name__ == "__main__":
    main()
