"""Noisy neighbours: what one tenant's flood does to a quiet tenant, on an earlier
version of pods (default: main) and on this one, side by side, on SQLite and on
PostgreSQL.

    python bench/neighbors.py [--ref main] [--rounds 3] [--duration 4] [--backends sqlite,postgres]
                              [--postgres URL] [--out FILE]

The quiet tenant is one agent of the organization "quiet": a pod-scoped key that
reads its pod back to back over one keep-alive connection (wrk -c1). It is
measured alone, then while a noisy tenant floods the server with 64 connections
listing pods:

  (a) org        another organization's key
  (b) 8 keys     eight keys of another organization, in turn
  (c) unknown    a key the server does not know (every answer a 401)
  (d) same org   another pod-scoped key of the quiet tenant's own organization

and prints, per backend and version, the quiet tenant's p50 and p99 and how many
answers it got, and what the noisy tenant got (answers a second, and how many
were not 2xx). The database is seeded by each version's own code (same tokens),
so each side runs at its own schema. Every round runs every scenario on each
side in turn, the order flipped each round; figures are the medians of the
rounds. Both servers run with their default threads (1 on SQLite, 4 on
PostgreSQL) and default flags (no rate limit: fairness alone).

Targets, under every flood: the quiet tenant's median within 3x its median alone,
its p99 under 10 ms (SQLite) or 15 ms (PostgreSQL), no errors.

Needs wrk (apt-get install wrk) and git; PostgreSQL at --postgres (default: the
tests' server), where a database of its own is made and dropped.
"""

import argparse
import json
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
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402

ADMIN_URL = os.environ.get("PODS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
SCENARIOS = ["alone", "(a) org", "(b) 8 keys", "(c) unknown", "(d) same org"]
TARGETS = {"sqlite": 10.0, "postgres": 15.0}  # quiet p99 under flood, ms

# Run with a version's own root first on sys.path: its storage makes the organizations,
# keys (with the tokens given) and pods, at its own schema. Prints the pod ids as JSON.
SEED = """
import json, sys
spec = json.loads(sys.argv[1])
from pods.api.auth import hash_key
from pods.storage import open_storage
storage = open_storage(spec["db"])
storage.prepare()
def key(org, token, pod_id=None):
    return storage.insert_api_key(org, hash_key(token), token[:12], None, pod_id)
key("quiet", spec["quiet_org"])
key("noisy", spec["noisy"][0])
org_ids = {"quiet": storage.caller_for_key_hash(hash_key(spec["quiet_org"]))["org_id"],
           "noisy": storage.caller_for_key_hash(hash_key(spec["noisy"][0]))["org_id"]}
quiet_pod = storage.insert_pod(org_ids["quiet"], "quiet", "quiet")["pod_id"]
agent_pod = storage.insert_pod(org_ids["quiet"], "agent-2", "agent-2")["pod_id"]
key("quiet", spec["quiet_agent"], quiet_pod)
key("quiet", spec["noisy_agent"], agent_pod)
for token in spec["noisy"][1:]:
    key("noisy", token)
for i in range(100):
    storage.insert_pod(org_ids["noisy"], f"noisy {i}", f"noisy-{i}")
storage.close()
print(json.dumps({"quiet_pod": quiet_pod}))
"""


def tokens() -> dict:
    new = lambda: "pods_" + secrets.token_urlsafe(32)  # noqa: E731
    return {"quiet_org": new(), "quiet_agent": new(), "noisy_agent": new(), "noisy": [new() for _ in range(8)],
            "unknown": new()}


def seed(root: Path, db: str, spec: dict) -> str:
    out = subprocess.run([sys.executable, "-c", SEED, json.dumps({**spec, "db": db})], capture_output=True,
                         text=True, check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    return json.loads(out.stdout.strip().splitlines()[-1])["quiet_pod"]


def flood(scenario: str, spec: dict) -> tuple[str, dict]:
    """The noisy tenant's wrk script and environment: listing pods with its key(s)."""
    keys = {"(a) org": spec["noisy"][:1], "(b) 8 keys": spec["noisy"], "(c) unknown": [spec["unknown"]],
            "(d) same org": [spec["noisy_agent"]]}[scenario]
    return "keys_path.lua", {"BENCH_PATH": "/agent/v0/pods", "BENCH_KEYS": ",".join(keys)}


def measure(server: run.Process, scenario: str, spec: dict, quiet_path: str, duration: int) -> dict:
    quiet_env = {"BENCH_PATH": quiet_path, "BENCH_KEY": spec["quiet_agent"]}
    if scenario == "alone":
        return {"quiet": run.wrk(server, "get_path.lua", 1, duration, quiet_env)}
    script, env = flood(scenario, spec)
    noisy = {}

    def noisy_run():
        noisy["result"] = run.wrk(server, script, 64, duration + 1, env)

    thread = threading.Thread(target=noisy_run)
    thread.start()
    threading.Event().wait(0.5)  # the flood is on
    quiet = run.wrk(server, "get_path.lua", 1, duration, quiet_env)
    thread.join()
    return {"quiet": quiet, "noisy": noisy["result"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="main", help="the earlier version (any git revision); 'none': this one only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4, help="seconds per measurement")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres", default=ADMIN_URL)
    parser.add_argument("--out", default=None, help="JSON results (default: none)")
    parser.add_argument("--flags", default="", help="more serve flags for both servers, e.g. '--threads 2'")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="pods-neighbors-"))
    sides = {"this": ROOT}
    if args.ref != "none":
        commit = subprocess.run(["git", "rev-parse", "--short", args.ref], capture_output=True, text=True,
                                check=True, cwd=ROOT).stdout.strip()
        before = work / "before"
        before.mkdir()
        archive = subprocess.run(["git", "archive", commit], capture_output=True, check=True, cwd=ROOT).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        sides = {commit: before, "this": ROOT}
    spec = tokens()
    backends = args.backends.split(",")
    databases = []
    results: dict = {}
    procs: dict = {}
    try:
        for backend in backends:
            for side, root in sides.items():
                if backend == "sqlite":
                    db = str(work / f"{side}.db")
                else:
                    import psycopg

                    name = f"pods_neighbors_{secrets.token_hex(4)}"
                    with psycopg.connect(args.postgres, autocommit=True) as admin:
                        admin.execute(f'CREATE DATABASE "{name}"')
                    databases.append(name)
                    db = args.postgres.rsplit("/", 1)[0] + "/" + name
                quiet_pod = seed(root, db, spec)
                server = run.Process(f"{backend}-{side}", [sys.executable, root / "app.py", "--port", "{port}",
                                                           "--db", db, "--log-level", "warning",
                                                           *args.flags.split()], work)
                procs[(backend, side)] = (server, f"/agent/v0/pods/{quiet_pod}")
        for round_no in range(args.rounds):
            for backend in backends:
                order = list(sides) if round_no % 2 == 0 else list(sides)[::-1]
                for scenario in SCENARIOS:
                    for side in order:
                        server, path = procs[(backend, side)]
                        result = measure(server, scenario, spec, path, args.duration)
                        results.setdefault(backend, {}).setdefault(side, {}).setdefault(scenario, []).append(result)
                        q = result["quiet"]
                        print(f"round {round_no + 1} {backend:8} {side:8} {scenario:13} quiet p50 "
                              f"{q['p50_us'] / 1000:6.2f} ms p99 {q['p99_us'] / 1000:6.2f} ms "
                              f"{q['requests']:6d} answers", file=sys.stderr)
    finally:
        for server, _ in procs.values():
            server.stop()
        if databases:
            import psycopg

            with psycopg.connect(args.postgres, autocommit=True) as admin:
                for name in databases:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)
    print(render(results, args))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def med(runs: list, who: str, field: str) -> float:
    return statistics.median(r[who][field] for r in runs)


def render(results: dict, args) -> str:
    lines = [f"{args.rounds} rounds of {args.duration} s per measurement; medians of the rounds", ""]
    for backend, by_side in results.items():
        lines += [f"### {backend}", "",
                  "| version | flood | quiet p50 ms | quiet p99 ms | quiet answers | p50 / alone | quiet errors "
                  "| noisy answers/s | noisy non-2xx | holds |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for side, by_scenario in by_side.items():
            alone = med(by_scenario["alone"], "quiet", "p50_us")
            for scenario, runs in by_scenario.items():
                p50, p99 = med(runs, "quiet", "p50_us") / 1000, med(runs, "quiet", "p99_us") / 1000
                errors = sum(r["quiet"]["errors"] + r["quiet"]["non_2xx"] for r in runs)
                answers = med(runs, "quiet", "requests")
                if scenario == "alone":
                    noisy, non2xx, holds = "", "", ""
                else:
                    noisy = f"{statistics.median(r['noisy']['rps'] for r in runs):,.0f}"
                    non2xx = f"{statistics.median(r['noisy']['non_2xx'] for r in runs):,.0f}"
                    ok = p50 * 1000 <= 3 * alone and p99 < TARGETS[backend] and errors == 0
                    holds = "yes" if ok else "NO"
                lines.append(f"| {side} | {scenario} | {p50:.2f} | {p99:.2f} | {answers:,.0f} | "
                             f"{p50 * 1000 / alone:.1f}x | {errors} | {noisy} | {non2xx} | {holds} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
