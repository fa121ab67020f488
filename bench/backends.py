"""SQLite and PostgreSQL side by side, and one PostgreSQL instance against two.

    python bench/backends.py [--rounds 3] [--duration 3] [--postgres URL]

Needs wrk (Debian: apt-get install wrk) and a PostgreSQL server (default: the local
one, user postgres); a database of its own is made for the run and dropped. Both
backends start from the same 1,000 pods (the PostgreSQL database is filled with
``copy``). Servers, each one process with its backend's default threads (SQLite 1,
PostgreSQL 4; ``--pg-threads`` to try others):
  sqlite, sqlite-writes   the SQLite backend (creates on a copy of their own)
  pg, pg-writes           the PostgreSQL backend (creates in a schema of their own)
  pg-a, pg-b              two more instances on the reading database, loaded together
and, in interleaved rounds: GET one pod at 8 connections and create at 8 (SQLite
against PostgreSQL, both durable: a 200 means committed and flushed), and GET at 32
connections on one PostgreSQL instance against 16 + 16 on two, the order flipped each
round. Medians, min-max, and the median of the per-round ratios.
"""

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))  # dbtools: URLs naming a database, a schema

import psycopg  # noqa: E402
import run  # noqa: E402
from dbtools import with_database, with_schema  # noqa: E402
from pods.cli import THREADS_DEFAULT, THREADS_DEFAULT_POSTGRES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a server where a database may be made for the run")
    parser.add_argument("--pg-threads", type=int, default=THREADS_DEFAULT_POSTGRES,
                        help="request threads of each PostgreSQL server")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="pods-backends-"))
    name = f"pods_bench_{secrets.token_hex(3)}"
    admin = psycopg.connect(args.postgres, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    database = with_database(args.postgres, name)
    procs = {}
    try:
        ids_file = run.write_ids(work, run.seed(work / "small.db", 1000))
        shutil.copy(work / "small.db", work / "writes.db")
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA reads; CREATE SCHEMA writes")
        reads, writes = with_schema(database, "reads"), with_schema(database, "writes")
        for dest in (reads, writes):
            subprocess.run([sys.executable, BENCH.parent / "app.py", "copy", work / "small.db", dest],
                           check=True, capture_output=True)
        procs = {
            "sqlite": run.pods_server("sqlite", work / "small.db", work, THREADS_DEFAULT),
            "sqlite-writes": run.pods_server("sqlite-writes", work / "writes.db", work, THREADS_DEFAULT),
            "pg": run.pods_server("pg", reads, work, args.pg_threads),
            "pg-writes": run.pods_server("pg-writes", writes, work, args.pg_threads),
            "pg-a": run.pods_server("pg-a", reads, work, args.pg_threads),
            "pg-b": run.pods_server("pg-b", reads, work, args.pg_threads),
        }
        get_env = {"BENCH_IDS": str(ids_file)}
        results: dict = {}

        def record(scenario, target, rps):
            results.setdefault(scenario, {}).setdefault(target, []).append(rps)
            print(f"{scenario:14} {target:14} {rps:8.0f} req/s", file=sys.stderr)

        def get_at_32(target):
            if target == "1 instance":
                return run.wrk(procs["pg-a"], "get_pod.lua", 32, args.duration, get_env)["rps"]
            return together([procs["pg-a"], procs["pg-b"]], 16, args.duration, get_env)

        for n in range(args.rounds):
            order = 1 if n % 2 == 0 else -1  # flipped each round: a machine growing busier shifts both alike
            for target in ("sqlite", "pg")[::order]:
                record("get@8", target, run.wrk(procs[target], "get_pod.lua", 8, args.duration, get_env)["rps"])
            for target in ("sqlite-writes", "pg-writes")[::order]:
                record("create@8", target, run.wrk(procs[target], "create.lua", 8, args.duration, {})["rps"])
            for target in ("1 instance", "2 instances")[::order]:
                record("get@32", target, get_at_32(target))
    finally:
        for p in procs.values():
            p.stop()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(work)

    def ratio(scenario, this, that) -> float:
        """The median of the per-round ratios (each round's two runs were side by side)."""
        return statistics.median(a / b for a, b in zip(results[scenario][this], results[scenario][that]))

    print("| scenario | server | req/s median (min–max) |\n|---|---|---|")
    for scenario, by in results.items():
        for target, values in by.items():
            print(f"| {scenario} | {target} | {statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f}) |")
    print()
    print("Median of the per-round ratios:")
    print(f"GET at 8, PostgreSQL / SQLite: {ratio('get@8', 'pg', 'sqlite'):.2f} (wanted >= 0.6)")
    print(f"create at 8, PostgreSQL / SQLite: {ratio('create@8', 'pg-writes', 'sqlite-writes'):.2f} (wanted >= 0.8)")
    print(f"GET at 32, two instances / one: {ratio('get@32', '2 instances', '1 instance'):.2f} (wanted >= 1.3)")
    print(f"({os.cpu_count()} CPUs; PostgreSQL on the same machine)")


def together(targets, conns, duration, env) -> float:
    """wrk against every target at once; the sum of their rates."""
    rates = []
    threads = [threading.Thread(target=lambda t=t: rates.append(run.wrk(t, "get_pod.lua", conns, duration, env)["rps"]))
               for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(rates)


if __name__ == "__main__":
    main()
