"""App-side CPU per request, without network or server: call each WSGI app directly.

    python bench/app_cost.py
    python bench/app_cost.py --metrics

Seeds 1,000 pods, then times the ceiling app's GET and pods' GET, list limit=10 and
list limit=100 (best of 5 runs each). The difference between these and what
bench/run.py measures through waitress is the cost of serving: sockets, threads,
the GIL hand-offs around every SQLite call and write.

Then the floor: pods' GET again, its own steps swapped for constants one after
another (key lookup, pod lookup, access-log line, dump, teardown, JSON encoding).
What is left is Flask, flask-httpauth and the blueprint, i.e. the least a GET
through the mandated stack can cost; its ratio to the ceiling bounds what any
amount of work on pods' own code can reach.

With --metrics: what recording metrics adds to a GET and a create, apps with and
without an observer timed in alternation on one database (best of 9 each; the
serving layer's own call, the queue wait, included), and what one scrape costs.
Best-of timings on one CPU are what a machine shared with other load still
measures well; wrk's throughput there moves by tens of percent between runs.
"""

import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import ceiling  # noqa: E402
import run  # noqa: E402

from pods import create_app  # noqa: E402


def environ(path: str, query: str = "") -> dict:
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": False, "wsgi.run_once": False, "HTTP_HOST": "127.0.0.1",
        "HTTP_AUTHORIZATION": f"Bearer {run.KEY}",
    }


def cost_us(wsgi, make_environ, n: int, runs: int = 5) -> float:
    def start_response(status, headers, exc_info=None):
        pass

    for i in range(min(n, 300)):  # warm
        b"".join(wsgi(make_environ(i), start_response))
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for i in range(n):
            b"".join(wsgi(make_environ(i), start_response))
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def metrics_cost() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from pods.serving.metrics import ServerMetrics

    work = Path(tempfile.mkdtemp(prefix="pods-app-cost-"))
    ids = run.seed(work / "cost.db", 1000)
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    off = create_app({"DB": str(work / "cost.db")})
    on_app = create_app({"DB": str(work / "cost.db")}, observer=metrics)

    def on(environ, start_response):  # and what the serving layer records per request
        metrics.queue_wait(0.0001)
        return on_app(environ, start_response)

    def by_id(i):
        return environ(f"/agent/v0/pods/{ids[i % len(ids)]}")

    def create(i):
        body = json.dumps({"name": f"cost {i}"}).encode()
        return {**environ("/agent/v0/pods"), "REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/json",
                "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}

    print("| request | metrics off, µs | metrics on, µs | on / off |")
    print("|---|---|---|---|")
    for label, make, n in (("GET one pod", by_id, 200), ("create", create, 20)):
        best = {"off": float("inf"), "on": float("inf")}
        for i in range(150):  # short runs in alternation: some fall between the machine's other work
            for side, app in (("off", off), ("on", on))[:: 1 if i % 2 else -1]:
                best[side] = min(best[side], cost_us(app, make, n, runs=1))
        print(f"| {label} | {best['off']:.1f} | {best['on']:.1f} | {best['on'] / best['off']:.3f} |")
    text = generate_latest(registry)
    scrape = min(_timed(lambda: generate_latest(registry)) for _ in range(50))
    print(f"\none scrape of these series ({len(text.splitlines())} lines): {scrape * 1e3:.2f} ms")


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    # The access log as when serving at the default level, written nowhere.
    sys.stderr = open(os.devnull, "w")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if "--metrics" in sys.argv[1:]:
        os.dup2(sys.stderr.fileno(), 2)  # where the log stream writes access lines
        metrics_cost()
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="pods-app-cost-"))
    ids = run.seed(work / "cost.db", 1000)
    app = create_app({"DB": str(work / "cost.db")})
    pod = b"".join(app(environ(f"/agent/v0/pods/{ids[0]}"), lambda *a: None)).decode()
    bare = ceiling.build_app({"pod": pod, "page10": json.dumps({}), "page100": json.dumps({})})

    def by_id(i):
        return environ(f"/agent/v0/pods/{ids[i % len(ids)]}")

    rows = [
        ("ceiling GET", cost_us(bare, by_id, 3000)),
        ("pods GET", cost_us(app, by_id, 3000)),
        ("pods list limit=10", cost_us(app, lambda i: environ("/agent/v0/pods", "limit=10"), 3000)),
        ("pods list limit=100", cost_us(app, lambda i: environ("/agent/v0/pods", "limit=100"), 1000)),
    ]
    for label, us in rows:
        print(f"{label:22} {us:7.0f} us per request")
    print("\nthe floor: pods GET with its own steps swapped for constants, one after another")
    for label, us in floor(app, by_id, ids[0]):
        print(f"{label:34} {us:7.0f} us per request  (ceiling / this: {rows[0][1] / us:.2f})")


def floor(app, by_id, pod_id: str) -> list:
    """Patch pods' GET step by step; returns (what is left, cost) after each patch."""
    from flask import Response

    from pods.api import auth
    from pods.api.schemas import pod_schema
    from pods.api.application import STORAGE_EXTENSION as EXTENSION_KEY
    from pods.storage.interface import path_pod
    from pods.storage.sqlite import SQLiteStorage

    storage = app.extensions[EXTENSION_KEY]
    caller = dict(storage.caller_for_key_hash(auth.hash_key(run.KEY), pod_id))  # the key and the pod
    caller["used_at"] = "9999-01-01T00:00:00.000000Z"  # its use recorded, as in a long run
    dumped = pod_schema.dump(path_pod(caller))
    body = (json.dumps(dumped, separators=(",", ":")) + "\n").encode()
    steps = [
        ("key and pod lookup",
         lambda: setattr(SQLiteStorage, "caller_for_key_hash",
                         lambda self, key_hash, pod_id=None: {**caller, "path_pod_id": pod_id})),
        ("access-log line", lambda: logging.getLogger("pods.access").setLevel(logging.WARNING)),
        ("dump", lambda: setattr(pod_schema, "dump", lambda obj: dumped)),
        ("teardown", app.teardown_appcontext_funcs.clear),
        ("JSON encoding", lambda: setattr(app.json, "response", lambda obj: Response(body, mimetype="application/json"))),
    ]
    results = [("pods GET, as it is", cost_us(app, by_id, 3000))]
    for label, patch in steps:
        patch()
        results.append((f"... and no {label}", cost_us(app, by_id, 3000)))
    return results


if __name__ == "__main__":
    main()
