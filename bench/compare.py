"""An earlier version of pods against this one, side by side, on the read paths;
or this version with metrics on against off.

    python bench/compare.py REF [--this REF2] [--rounds 5] [--duration 3] [--postgres URL] [--idle N]
    python bench/compare.py --metrics [--rounds 5] [--duration 3] [--scrape-interval 1]

REF is any git revision (a commit, a tag, ``main~3``). It is checked out into a
temporary worktree; the database is seeded (1,000 pods) by REF's own
``bench/run.py``, so it has REF's schema, and this version gets a copy, which it
migrates as it starts. Both servers run at once, on SQLite, with their default
threads; every scenario is run against each in turn, round after round, the order
flipped each round, so that a noisy machine shifts both alike. Reports each side's
median req/s and the median of the per-round ratios (this / REF), and the server's
CPU time per request (user + system, from /proc), which a machine shared with
other work disturbs far less than throughput. ``--this REF2`` puts another
revision in place of the working tree. ``--postgres URL`` runs both on
PostgreSQL instead, each on a database of its own made on URL's server (for
instance postgresql://postgres@127.0.0.1:5432/postgres) and seeded by its own
code (so REF must be one with pods/storage's ``open_storage``), then dropped.
``--idle N`` holds N more keep-alive connections open, idle, through each wrk
run (each sent one request first), as a server with many clients between
requests has: every turn of the event loop asks each of them what it waits for.

With ``--metrics``, both sides are this checkout on copies of one seeded
database: "off" as it starts by default, "on" with ``--metrics-port`` (and its
/metrics scraped every ``--scrape-interval`` seconds meanwhile: every second by
default, far more often than Prometheus usually does; 0, never). Scenarios: GET one pod and create at 8 connections, creates on a database of
each side's own; the contract's target is GET within 3% (on / off >= 0.97).

Needs wrk (Debian: apt-get install wrk) and git.
"""

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402

SCENARIOS = [  # name, wrk script, connections, extra environment
    ("GET one pod @1", "get_pod.lua", 1, {}),
    ("GET one pod @8", "get_pod.lua", 8, {}),
    ("list limit=10 @8", "get_path.lua", 8, {"BENCH_PATH": "/agent/v0/pods?limit=10"}),
    ("list limit=100 @8", "get_path.lua", 8, {"BENCH_PATH": "/agent/v0/pods?limit=100"}),
]


def seed_with(root: Path, path: Path, pods: int) -> list[str]:
    """Seed ``path`` with the seed function of the pods at ``root``."""
    code = (f"import sys; from pathlib import Path; sys.path[:0] = [{str(root / 'bench')!r}, {str(root)!r}];"
            f"import run; print('\\n'.join(run.seed(Path({str(path)!r}), {pods})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    return out.stdout.split()


# The same seed on PostgreSQL, by the storage interface of the pods at the cwd: the
# bench key and N pods; prints their ids.
POSTGRES_SEED = """
import sys
from pods.api.auth import hash_key
from pods.storage import open_storage
url, key, pods = sys.argv[1], sys.argv[2], int(sys.argv[3])
storage = open_storage(url)
storage.prepare()
storage.insert_api_key("bench", hash_key(key), key[:12])
org_id = storage.caller_for_key_hash(hash_key(key))["org_id"]
for i in range(pods):
    print(storage.insert_pod(org_id, f"pod {i}", f"client-{i}")["pod_id"])
storage.close()
"""


def postgres_database(admin_url: str, root: Path, pods: int) -> tuple[str, str, list[str]]:
    """(name, URL, pod ids) of a new database on ``admin_url``'s server, seeded by
    the pods at ``root``."""
    import psycopg

    name = f"pods_compare_{os.urandom(4).hex()}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    out = subprocess.run([sys.executable, "-c", POSTGRES_SEED, url, run.KEY, str(pods)], capture_output=True,
                         text=True, check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    return name, url, out.stdout.split()


def drop_databases(admin_url: str, names: list[str]) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server(name: str, root: Path, db: Path | str, work: Path) -> run.Process:
    return run.Process(name, [sys.executable, root / "app.py", "--port", "{port}", "--db", db], work)


METRICS_SCENARIOS = [  # name, wrk script, connections, which servers (reads or writes)
    ("GET one pod @8", "get_pod.lua", 8, "reads"),
    ("create @8", "create.lua", 8, "writes"),
]


def metrics_on_against_off(args) -> None:
    """This version, metrics off ("off") against on ("on"), side by side."""
    work = Path(tempfile.mkdtemp(prefix="pods-compare-metrics-"))
    procs, scraping = {}, threading.Event()
    try:
        ids_file = run.write_ids(work, run.seed(work / "seed.db", 1000))
        for side in ("off", "on"):
            for role in ("reads", "writes"):
                shutil.copy(work / "seed.db", work / f"{side}-{role}.db")
                flags = ["--metrics-port", "0"] if side == "on" else []
                procs[side, role] = run.Process(
                    f"{side}-{role}", [sys.executable, ROOT / "app.py", "--port", "{port}",
                                       "--db", work / f"{side}-{role}.db", *flags], work)
        if args.scrape_interval > 0:
            urls = [metrics_url(procs["on", r], work) for r in ("reads", "writes")]
            threading.Thread(target=scrape_every, args=(urls, args.scrape_interval, scraping), daemon=True).start()
        runs = {name: {"off": [], "on": []} for name, *_ in METRICS_SCENARIOS}
        cpu = {name: {"off": [], "on": []} for name, *_ in METRICS_SCENARIOS}
        for round_no in range(args.rounds):
            sides = ["off", "on"] if round_no % 2 == 0 else ["on", "off"]
            for name, script, conns, role in METRICS_SCENARIOS:
                for side in sides:
                    measure(procs[side, role], f"metrics {side}", round_no, name, script, conns, args.duration,
                            {"BENCH_IDS": str(ids_file)}, runs[name][side], cpu[name][side])
    finally:
        scraping.set()
        for p in procs.values():
            p.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("| scenario | metrics off req/s median | metrics on req/s median | on / off, median of rounds (min–max) "
          "| server CPU µs per request, off / on (medians) |")
    print("|---|---|---|---|---|")
    for name, by_side in runs.items():
        ratios = [on / off for off, on in zip(by_side["off"], by_side["on"])]
        print(f"| {name} | {statistics.median(by_side['off']):.0f} | {statistics.median(by_side['on']):.0f} |"
              f" {statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) |"
              f" {statistics.median(cpu[name]['off']):.0f} / {statistics.median(cpu[name]['on']):.0f} |")
    print(json.dumps({"metrics": "on vs off", "rounds": args.rounds, "duration_s": args.duration,
                      "scrape_interval_s": args.scrape_interval, "rps": runs,
                      "cpu_us_per_request": cpu}), file=sys.stderr)


@contextlib.contextmanager
def idle_connections(proc: run.Process, count: int):
    """``count`` keep-alive connections to ``proc``, each answered once, then idle."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    conns = []
    try:
        for _ in range(count):
            conn = socket.create_connection(("127.0.0.1", proc.port))
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
            conns.append(conn)
        for conn in conns:
            conn.recv(65536)
        yield
    finally:
        for conn in conns:
            conn.close()


def measure(proc: run.Process, side: str, round_no: int, name: str, script: str, conns: int, duration: int,
            env: dict, rps: list, cpu_us: list, idle: int = 0) -> None:
    """One wrk run of a scenario against ``proc`` (beside ``idle`` idle connections):
    its req/s onto ``rps``, and the server's CPU time per request onto ``cpu_us`` (a
    cost that the machine's other load moves far less than it moves throughput)."""
    with idle_connections(proc, idle):
        used = proc.cpu_seconds()
        result = run.wrk(proc, script, conns, duration, env)
        used = proc.cpu_seconds() - used
    assert result["errors"] == result["non_2xx"] == 0, (side, name, result)
    rps.append(result["rps"])
    cpu_us.append(used / result["requests"] * 1e6)
    print(f"round {round_no + 1} {name:18} {side:11} {result['rps']:7.0f} req/s {cpu_us[-1]:6.0f} µs CPU/request",
          file=sys.stderr)


def metrics_url(proc: run.Process, work: Path) -> str:
    """The /metrics URL a server printed as it started."""
    return re.search(r"pods metrics on (\S+)", (work / f"{proc.name}.log").read_text()).group(1)


def scrape_every(urls: list[str], interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        for url in urls:
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref", nargs="?", help="the revision to compare this one with")
    parser.add_argument("--metrics", action="store_true", help="this version with metrics on against off")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--this", default=None, help="a revision to compare instead of the working tree")
    parser.add_argument("--postgres", default=None, metavar="URL",
                        help="both sides on PostgreSQL, a new database each on URL's server")
    parser.add_argument("--idle", type=int, default=0, metavar="N",
                        help="N idle keep-alive connections held open through each wrk run")
    parser.add_argument("--scrape-interval", type=float, default=1.0,
                        help="with --metrics: seconds between scrapes of the metrics side (0: none)")
    args = parser.parse_args()
    if (args.ref is None) == (not args.metrics):
        parser.error("give REF, or --metrics")
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    if args.metrics:
        metrics_on_against_off(args)
        return
    commit = subprocess.run(["git", "rev-parse", "--short", args.ref], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="pods-compare-"))
    before_root = work / "before"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before_root), commit], check=True, cwd=ROOT)
    this_root = ROOT
    if args.this:
        this_root = work / "this"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(this_root), args.this], check=True, cwd=ROOT)
    procs, databases = {}, []
    try:
        dbs, ids_files = {}, {}  # by side: the database, and its pods' ids (for the GETs)
        for side, root in ((commit, before_root), ("this", this_root)):
            if args.postgres:  # each side's own database, seeded by its own code
                name, dbs[side], ids = postgres_database(args.postgres, root, 1000)
                databases.append(name)
            elif side == commit:
                dbs[side] = work / "before.db"
                ids = seed_with(before_root, dbs[side], 1000)
            else:  # a copy of the other's, which this side migrates as it starts
                dbs[side] = work / "this.db"
                shutil.copy(work / "before.db", dbs[side])
            (work / f"ids-{side}").mkdir()  # not work / "this": --this checks out there
            ids_files[side] = run.write_ids(work / f"ids-{side}", ids)
        procs[commit] = server("before", before_root, dbs[commit], work)
        procs["this"] = server("this", this_root, dbs["this"], work)
        runs = {name: {side: [] for side in procs} for name, *_ in SCENARIOS}
        cpu = {name: {side: [] for side in procs} for name, *_ in SCENARIOS}  # µs per request
        for round_no in range(args.rounds):
            sides = list(procs) if round_no % 2 == 0 else list(procs)[::-1]
            for name, script, conns, env in SCENARIOS:
                for side in sides:
                    measure(procs[side], side, round_no, name, script, conns, args.duration,
                            {"BENCH_IDS": str(ids_files[side]), **env}, runs[name][side], cpu[name][side],
                            args.idle)
    finally:
        for p in procs.values():
            p.stop()
        if databases:
            drop_databases(args.postgres, databases)
        subprocess.run(["git", "worktree", "remove", "--force", str(before_root)], cwd=ROOT)
        if args.this:
            subprocess.run(["git", "worktree", "remove", "--force", str(this_root)], cwd=ROOT)
        shutil.rmtree(work, ignore_errors=True)

    this = args.this or "this"
    print(f"| scenario | {commit} req/s median | {this} req/s median | {this} / {commit}, median of rounds (min–max)"
          f" | CPU µs/request {commit} | {this} | {commit} / {this} (throughput the CPU allows) |")
    print("|---|---|---|---|---|---|---|")
    for name, by_side in runs.items():
        ratios = [b / a for a, b in zip(by_side[commit], by_side["this"])]
        spent = cpu[name]
        cpu_ratios = [a / b for a, b in zip(spent[commit], spent["this"])]
        print(f"| {name} | {statistics.median(by_side[commit]):.0f} | {statistics.median(by_side['this']):.0f} |"
              f" {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |"
              f" {statistics.median(spent[commit]):.0f} | {statistics.median(spent['this']):.0f} |"
              f" {statistics.median(cpu_ratios):.2f} ({min(cpu_ratios):.2f}–{max(cpu_ratios):.2f}) |")
    print(json.dumps({"ref": commit, "this": this, "rounds": args.rounds, "duration_s": args.duration, "rps": runs,
                      "cpu_us_per_request": cpu}), file=sys.stderr)


if __name__ == "__main__":
    main()
