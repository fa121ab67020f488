"""Where a live GET's time goes: the real server with one piece swapped for a constant.

    python bench/attribute.py [--rounds 3]

Variants, each started fresh and loaded with wrk at 8 connections, in interleaved
rounds: full; no access log (--log-level warning); the one SQL statement of a GET
(the key and the pod, read together) answered from memory. For attribution only:
that variant does not authenticate or read pods for real.
"""

import argparse
import json
import os
import statistics
import subprocess
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
    ids = run.seed(work / "a.db", 1000)
    (work / "ids.txt").write_text("\n".join(ids) + "\n")
    launch = LAUNCH.format(root=str(BENCH.parent))
    results = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            port = run.free_port()
            proc = subprocess.Popen([sys.executable, "-c", launch, variant, str(port), str(work / "a.db")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}"
            run.wait_for_health(url, proc)
            out = subprocess.run(
                ["wrk", "-t1", "-c8", "-d3s", "-s", str(BENCH / "wrk" / "get_pod.lua"), url],
                capture_output=True, text=True, check=True,
                env={**os.environ, "BENCH_DIR": str(BENCH), "BENCH_KEY": run.KEY, "BENCH_IDS": str(work / "ids.txt")},
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results[variant].append(r["requests"] / (r["duration_us"] / 1e6))
            proc.terminate()
            proc.wait()
    for variant in VARIANTS:
        rps = statistics.median(results[variant])
        print(f"{variant:14} {rps:6.0f} req/s  {1e6 / rps:5.0f} us per request")


if __name__ == "__main__":
    main()
