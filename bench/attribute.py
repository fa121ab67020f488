"""Where a live GET's time goes: the real server with one piece swapped for a constant.

    python bench/attribute.py [--rounds 3]

Variants, each started fresh and loaded with wrk at 8 connections, in interleaved
rounds: full; no access log (--log-level warning); the one SQL statement of a GET
(the key and the pod, read together) answered from memory. For attribution only:
that variant does not authenticate or read pods for real.
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import run  # noqa: E402

VARIANTS = ["full", "no-access-log", "no-sql"]

# Runs in the server process: patch, then serve like python app.py.
LAUNCH = """
import sys
sys.path.insert(0, {root!r})
variant, port, db = sys.argv[1:4]
from pods.storage.sqlite import SQLiteStorage
if variant == "no-sql":
    row = {{"org_id": 1, "org_name": "bench", "key_id": "k", "pod_id": None, "permissions": None,
           "expires_at": None, "used_at": "9999-01-01T00:00:00.000000Z", "path_pod_id": "p",
           "path_pod_name": "n", "path_pod_client_id": None, "path_pod_created_at": "2026-01-01T00:00:00.000000Z"}}
    SQLiteStorage.caller_for_key_hash = lambda self, key_hash, pod_id=None: {{**row, "path_pod_id": pod_id}}
sys.argv = ["app.py", "--port", port, "--db", db] + (["--log-level", "warning"] if variant == "no-access-log" else [])
from pods.cli import cli
cli()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pods-attribute-"))
    ids_file = run.write_ids(work, run.seed(work / "a.db", 1000))
    launch = LAUNCH.format(root=str(BENCH.parent))
    results = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            target = run.Process(variant, [sys.executable, "-c", launch, variant, "{port}", work / "a.db"], work)
            try:
                results[variant].append(run.wrk(target, "get_pod.lua", 8, 3, {"BENCH_IDS": str(ids_file)})["rps"])
            finally:
                target.stop()
    for variant in VARIANTS:
        rps = statistics.median(results[variant])
        print(f"{variant:14} {rps:6.0f} req/s  {1e6 / rps:5.0f} us per request")


if __name__ == "__main__":
    main()
