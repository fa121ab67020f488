"""A whole served request's CPU instructions, against an earlier version: a count
the machine's other load does not move.

    python bench/served_instructions.py REF [--requests 200,1200]

On this shared machine wrk's throughput moves by tens of percent from one run to
the next (bench/compare.py), far more than a change on the request path is worth.
Instructions executed do not. Each side (REF, checked out in a temporary worktree,
and this checkout) serves a copy of one database seeded by REF's bench/run.py
(this side migrates it as it starts) as a user runs it (``app.py``, its default
threads), under valgrind's callgrind. A client sends GETs of one pod, lists of
10 and lists of 100, one at a time over one keep-alive connection; each scenario
runs twice, for two numbers of requests, and the difference in the server's
instructions, divided by the difference in requests, is one request: starting,
warming up and stopping cancel out. Everything the server process does is
counted: the event loop, the worker, the log's thread. Once a second the server
also looks for new keys and enforces deadlines, a little more in the longer run:
a few hundred instructions per request, alike on both sides.

One connection, so this counts what a request costs, not how the event loop and
the worker overlap under load (bench/compare.py measures that, as throughput).

Needs valgrind (Debian: apt-get install valgrind). Takes about ten minutes.
"""

import argparse
import concurrent.futures
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402
from compare import seed_with  # noqa: E402

SCENARIOS = [("GET one pod", None), ("list limit=10", "/agent/v0/pods?limit=10"),
             ("list limit=100", "/agent/v0/pods?limit=100")]


def served_instructions(root: Path, db: Path, port: int, ids: list[str], path: str | None, requests: int) -> int:
    """Instructions the server at ``root`` executes, from its start to its exit,
    serving ``requests`` requests for ``path`` (None: GET one pod, by turns)."""
    work = Path(tempfile.mkdtemp(prefix="pods-instructions-"))
    try:
        shutil.copy(db, work / "pods.db")
        out = work / "callgrind.out"
        log = open(work / "server.log", "wb")
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             str(root / "app.py"), "--port", str(port), "--db", str(work / "pods.db")],
            stdout=log, stderr=subprocess.STDOUT, cwd=work, env={**os.environ, "PYTHONMALLOC": "malloc"},
        )
        try:
            conn = _connected(port, server)
            for i in range(requests):
                target = path or f"/agent/v0/pods/{ids[i % len(ids)]}"
                conn.request("GET", target, headers={"Authorization": f"Bearer {run.KEY}"})
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"{target}: {answer.status}")
            conn.close()
        finally:
            server.terminate()
            server.wait(timeout=120)
            log.close()
        found = re.search(rb"Collected : (\d+)", (work / "server.log").read_bytes())
        if found is None:
            raise RuntimeError(f"callgrind printed no total: {(work / 'server.log').read_text()[-2000:]}")
        return int(found.group(1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _connected(port: int, server: subprocess.Popen) -> http.client.HTTPConnection:
    """A connection to the server once it answers (valgrind makes starting slow)."""
    deadline = time.monotonic() + 300
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return conn
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server under valgrind did not start") from None
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="the earlier version: any git revision")
    parser.add_argument("--requests", default="200,1200", help="the two numbers of requests per scenario")
    args = parser.parse_args()
    few, many = (int(n) for n in args.requests.split(","))
    commit = subprocess.run(["git", "rev-parse", "--short", args.ref], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="pods-instructions-"))
    before = work / "before"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before), commit], check=True, cwd=ROOT)
    try:
        ids = seed_with(before, work / "seed.db", 1000)
        sides = {commit: before, "this": ROOT}
        runs = [(side, name, path, count) for name, path in SCENARIOS for side in sides for count in (few, many)]
        # Two at a time: this machine has two cores, and each count is its own.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            counts = dict(zip(runs, pool.map(
                lambda r: served_instructions(sides[r[0]], work / "seed.db", run.free_port(), ids, r[2], r[3]),
                runs)))
        print(f"| request | {commit}, instructions | this | this / {commit} |")
        print("|---|---|---|---|")
        for name, path in SCENARIOS:
            per = {side: (counts[side, name, path, many] - counts[side, name, path, few]) / (many - few)
                   for side in sides}
            print(f"| {name} | {per[commit]:,.0f} | {per['this']:,.0f} | {per['this'] / per[commit]:.3f} |")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
