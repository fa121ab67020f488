"""Metrics on against off, in CPU instructions per request: a count the machine's
other load does not move.

    python bench/instructions.py [--get 500,1500] [--create 200,600]

On a shared machine wrk's throughput moves by tens of percent from one run to the
next, far more than the few percent metrics may cost. Instructions executed do
not: each side runs the app in process (WSGI calls, as bench/app_cost.py does),
under valgrind's callgrind, for two numbers of requests; the difference between
the two runs, divided by the difference in requests, is the instructions of one
request, setup and warm-up cancelled out. The "on" side records what a serving
process records per request (the app's observer, and the queue wait the serving
layer adds). The access log and the record of key use are off on both sides:
they run on threads and clocks, which valgrind slows differently from one run to
the next, and they are the same work on each. Not measured here:
waitress (sockets, threads), which both sides run alike, so that the ratio is an
upper bound for a whole request's.

Needs valgrind (Debian: apt-get install valgrind). Takes a few minutes.
"""

import argparse
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import run  # noqa: E402


def child(side: str, what: str, n: int, db: str, ids_file: str) -> None:
    """Serve ``n`` requests (after a warm-up) in this process: what callgrind counts."""
    logging.basicConfig(level=logging.WARNING)
    from app_cost import environ
    from prometheus_client import CollectorRegistry

    from pods import create_app
    from pods.api import keyuse
    from pods.serving.metrics import ServerMetrics

    # Work that depends on the clock, not on the requests (valgrind slows the clock's
    # share by fifty): no key use noted, none written.
    keyuse.RECORD_AFTER = 1e9  # seconds: a use is noted only if the last was before 1994
    metrics = ServerMetrics(CollectorRegistry()) if side == "on" else None
    app = create_app({"DB": db, "KEY_USE_FLUSH_SECONDS": 3600}, observer=metrics)
    ids = Path(ids_file).read_text().split()

    def request(i):
        if what == "get":
            return environ(f"/agent/v0/pods/{ids[i % len(ids)]}")
        body = json.dumps({"name": f"n{i}"}).encode()
        return {**environ("/agent/v0/pods"), "REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/json",
                "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}

    for i in range(200 + n):  # the first 200 warm caches and first-use paths, in both runs
        b"".join(app(request(i), lambda *a: None))
        if metrics is not None:
            metrics.queue_wait(0.0001)  # what the serving layer records per request


def instructions(work: Path, side: str, what: str, n: int, seed: Path, ids: Path) -> int:
    db = work / f"{side}-{what}-{n}.db"
    shutil.copy(seed, db)
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work / 'callgrind.out'}",
         sys.executable, __file__, "--child", side, what, str(n), str(db), str(ids)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return int(re.search(r"Collected : (\d+)", out.stderr).group(1))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        side, what, n, db, ids = sys.argv[2:7]
        child(side, what, int(n), db, ids)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--get", default="500,1500", help="two numbers of GETs")
    parser.add_argument("--create", default="200,600", help="two numbers of creates")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")
    work = Path(tempfile.mkdtemp(prefix="pods-instructions-"))
    try:
        seed = work / "seed.db"
        ids = run.write_ids(work, run.seed(seed, 1000))
        print("| request | metrics off, instructions | metrics on, instructions | on / off |")
        print("|---|---|---|---|")
        for what, counts in (("get", args.get), ("create", args.create)):
            small, large = map(int, counts.split(","))
            per = {}
            for side in ("off", "on"):
                per[side] = (instructions(work, side, what, large, seed, ids)
                             - instructions(work, side, what, small, seed, ids)) / (large - small)
            label = "GET one pod" if what == "get" else "create"
            print(f"| {label} | {per['off']:,.0f} | {per['on']:,.0f} | {per['on'] / per['off']:.3f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
