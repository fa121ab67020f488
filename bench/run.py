"""Benchmark pods against its ceiling, side by side, in interleaved rounds.

    python bench/run.py [--rounds 3] [--duration 3] [--threads N] [--out FILE]

Needs wrk (Debian: apt-get install wrk). Starts, on loopback:
  pods       the real server (python app.py), one worker
  pods-2w    the real server with --workers 2 (on the same database file)
  writes     the real server again, on a copy of the database, for creates,
             so that they do not grow the file the reads measure (and
             writes-2w with --workers 2)
  deep-1k    the real server on 1,000 pods, deep-50k on 50,000, for one page
             from the middle of the list
  ceiling    a bare Flask app on the same waitress set-up, answering with the
             same bytes the real server sends (bench/ceiling.py)
  stock      the same bare app on waitress as it comes (the "known trap")
and runs every scenario against each, round after round (pods, ceiling, pods,
ceiling ...), so that a noisy shared machine shifts both sides alike. Reports
medians with min-max, checks the targets, writes JSON and prints a table.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from pods.storage import sqlite  # noqa: E402
from pods.api.auth import hash_key  # noqa: E402

KEY = "bench-key"


# -- processes -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, path: str, timeout: float = 5.0) -> bytes:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


class Process:
    def __init__(self, name: str, cmd: list, workdir: Path):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(c).replace("{port}", str(self.port)) for c in cmd]
        self.log = open(workdir / f"{name}.log", "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir)
        self.first_answer = wait_for_health(self.url, self.proc) - self.started
        self.requests = 0

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()


def write_ids(work: Path, ids: list[str]) -> Path:
    """The pod ids for the GET scenarios, one per line (wrk's BENCH_IDS)."""
    path = work / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return path


def wait_for_health(url: str, proc) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return time.monotonic()
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"{url}: no answer")


def pods_server(name, db_path, workdir, threads, workers=1) -> Process:
    return Process(
        name,
        [sys.executable, ROOT / "app.py", "--port", "{port}", "--db", db_path,
         "--threads", threads, "--workers", workers],
        workdir,
    )


# -- data ----------------------------------------------------------------------


def seed(path: Path, pods: int) -> list[str]:
    """A database with one key and ``pods`` pods, 1 ms apart; returns their ids."""
    sqlite.init_db(str(path))
    storage = sqlite.SQLiteStorage(str(path))
    conn = storage.connection()
    try:
        storage.insert_api_key("bench", hash_key(KEY), KEY[:12])
        org_id = storage.caller_for_key_hash(hash_key(KEY))["org_id"]
        start = datetime(2026, 1, 1, tzinfo=UTC)
        rows = [
            (str(uuid.uuid4()), org_id, f"pod {i}", f"client-{i}",
             (start + timedelta(milliseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            for i in range(pods)
        ]
        # Bulk seeding only: one transaction instead of one durable create each.
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO pod (pod_id, org_id, name, client_id, created_at) VALUES (?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        storage.close()
    return [r[0] for r in rows]


def middle_token(url: str, pods: int) -> str:
    """The page token halfway through the list, found by walking it."""
    path, token = "/agent/v0/pods?limit=100", None
    for _ in range(pods // 200):
        page = json.loads(get(url, path + (f"&page_token={token}" if token else "")))
        token = page["next_page_token"]
    return token


# -- load ----------------------------------------------------------------------


def wrk(target: Process, script: str, conns: int, duration: int, env: dict) -> dict:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "-s", str(BENCH / "wrk" / script), target.url]
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True,
        env={**os.environ, "BENCH_DIR": str(BENCH), "BENCH_KEY": KEY, **env},
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    target.requests += result["requests"]
    return result


def summary(runs: list[dict]) -> dict:
    rps = [r["rps"] for r in runs]
    return {
        "rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
        "p50_ms_median": statistics.median(r["p50_us"] for r in runs) / 1000,
        "p99_ms_median": statistics.median(r["p99_us"] for r in runs) / 1000,
        "errors": sum(r["errors"] + r["non_2xx"] for r in runs),
        "runs": len(runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=None, help="server threads (default: the server's)")
    parser.add_argument("--out", default=None, help="JSON results file (default bench/results/TIMESTAMP.json)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    from pods.cli import THREADS_DEFAULT

    threads = args.threads or THREADS_DEFAULT
    work = Path(tempfile.mkdtemp(prefix="pods-bench-"))
    ids = seed(work / "small.db", 1000)
    # One copy per server, so that one scenario's writes never slow another's reads.
    for copy in ("writes", "writes-2w", "deep-1k", "startup"):
        shutil.copy(work / "small.db", work / f"{copy}.db")
    ids_file = write_ids(work, ids)
    seed(work / "large.db", 50_000)
    print(f"seeded 1,000 and 50,000 pods in {work}", file=sys.stderr)

    procs = {}
    try:
        procs["pods"] = pods_server("pods", work / "small.db", work, threads)
        procs["pods-2w"] = pods_server("pods-2w", work / "small.db", work, threads, workers=2)
        procs["writes"] = pods_server("writes", work / "writes.db", work, threads)
        procs["writes-2w"] = pods_server("writes-2w", work / "writes-2w.db", work, threads, workers=2)
        procs["deep-1k"] = pods_server("deep-1k", work / "deep-1k.db", work, threads)
        procs["deep-50k"] = pods_server("deep-50k", work / "large.db", work, threads)
        responses = {
            "pod": get(procs["pods"].url, f"/agent/v0/pods/{ids[0]}").decode(),
            "page10": get(procs["pods"].url, "/agent/v0/pods?limit=10").decode(),
            "page100": get(procs["pods"].url, "/agent/v0/pods?limit=100").decode(),
        }
        (work / "responses.json").write_text(json.dumps(responses))
        ceiling = [sys.executable, BENCH / "ceiling.py", "{port}", work / "responses.json", threads]
        procs["ceiling"] = Process("ceiling", ceiling, work)
        procs["stock"] = Process("stock", ceiling + ["--stock-waitress"], work)
        deep = {
            "deep-1k": f"/agent/v0/pods?limit=100&page_token={middle_token(procs['deep-1k'].url, 1000)}",
            "deep-50k": f"/agent/v0/pods?limit=100&page_token={middle_token(procs['deep-50k'].url, 50_000)}",
        }
        pods_before_2w = count_pods(work / "writes-2w.db")

        get_env = {"BENCH_IDS": str(ids_file)}
        scenarios = [
            ("get@1", "get_pod.lua", 1, get_env, ["pods", "ceiling", "stock"]),
            ("get@8", "get_pod.lua", 8, get_env, ["pods", "ceiling", "stock"]),
            ("get@32", "get_pod.lua", 32, get_env, ["pods", "pods-2w", "ceiling", "stock"]),
            ("list10@8", "get_path.lua", 8, {"BENCH_PATH": "/agent/v0/pods?limit=10"}, ["pods", "ceiling"]),
            ("list100@8", "get_path.lua", 8, {"BENCH_PATH": "/agent/v0/pods?limit=100"}, ["pods", "ceiling"]),
            ("create@8", "create.lua", 8, {}, ["writes", "writes-2w"]),
            ("deep page@1", "get_path.lua", 1, None, ["deep-1k", "deep-50k"]),
        ]
        runs: dict = {}
        for round_no in range(args.rounds):
            for name, script, conns, env, targets in scenarios:
                for target in targets:
                    run_env = env if env is not None else {"BENCH_PATH": deep[target]}
                    result = wrk(procs[target], script, conns, args.duration, run_env)
                    runs.setdefault(name, {}).setdefault(target, []).append(result)
                    print(f"round {round_no + 1} {name:12} {target:8} {result['rps']:8.0f} req/s  "
                          f"p99 {result['p99_us'] / 1000:6.1f} ms", file=sys.stderr)
        served = procs["pods"].requests
        rss = procs["pods"].rss_mb()
        acknowledged_2w = sum(r["requests"] - r["non_2xx"] for r in runs["create@8"]["writes-2w"])
    finally:
        for p in procs.values():
            p.stop()
    stored_2w = count_pods(work / "writes-2w.db") - pods_before_2w
    startups = [measure_startup(work, threads) for _ in range(5)]

    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "threads": threads, "cpus": os.cpu_count()},
        "scenarios": {name: {t: summary(rs) for t, rs in by_target.items()} for name, by_target in runs.items()},
        "raw": runs,
        "startup_s": {"median": statistics.median(startups), "all": startups},
        "rss_mb_after_requests": {"rss_mb": rss, "requests": served},
        "multi_process_writes": {"acknowledged": acknowledged_2w, "stored": stored_2w},
    }
    results["targets"] = targets_table(results)
    out = Path(args.out) if args.out else BENCH / "results" / f"{results['when'].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"\nresults: {out}")
    shutil.rmtree(work)


def count_pods(path: Path) -> int:
    storage = sqlite.SQLiteStorage(str(path))
    try:
        return storage.count_pods()
    finally:
        storage.close()


def measure_startup(work: Path, threads: int) -> float:
    """Seconds from exec to the first 200 from /healthz, on an existing database."""
    p = pods_server("startup", work / "startup.db", work, threads)
    p.stop()
    return p.first_answer


def targets_table(r: dict) -> list[dict]:
    s = r["scenarios"]

    def rps(scenario, target):
        return s[scenario][target]["rps_median"]

    rows = [
        ("GET one pod at 8: vs ceiling", rps("get@8", "pods") / rps("get@8", "ceiling"), ">= 0.75", lambda v: v >= 0.75),
        ("GET one pod at 8: p99 ms", s["get@8"]["pods"]["p99_ms_median"], "<= 25", lambda v: v <= 25),
        ("GET at 8 vs at 1", rps("get@8", "pods") / rps("get@1", "pods"), ">= 1", lambda v: v >= 1),
        ("GET at 32 vs at 1", rps("get@32", "pods") / rps("get@1", "pods"), ">= 1", lambda v: v >= 1),
        ("list limit=10 at 8: vs ceiling", rps("list10@8", "pods") / rps("list10@8", "ceiling"), ">= 0.6", lambda v: v >= 0.6),
        ("create at 8 vs own GET at 8", rps("create@8", "writes") / rps("get@8", "pods"), ">= 0.5", lambda v: v >= 0.5),
        ("deep page: 50,000 vs 1,000 pods latency",
         s["deep page@1"]["deep-50k"]["p50_ms_median"] / s["deep page@1"]["deep-1k"]["p50_ms_median"], "<= 1.3", lambda v: v <= 1.3),
        ("first answer after start, s", r["startup_s"]["median"], "<= 1.5", lambda v: v <= 1.5),
        (f"resident memory after {r['rss_mb_after_requests']['requests']:,} requests, MB",
         r["rss_mb_after_requests"]["rss_mb"], "<= 80", lambda v: v <= 80),
        ("GET at 32: 2 workers vs 1", rps("get@32", "pods-2w") / rps("get@32", "pods"), ">= 1.3", lambda v: v >= 1.3),
    ]
    return [{"what": w, "value": round(v, 3), "target": t, "ok": ok(v)} for w, v, t, ok in rows]


def render(r: dict) -> str:
    lines = ["| scenario | server | req/s median (min–max) | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for name, by_target in r["scenarios"].items():
        for target, m in by_target.items():
            lines.append(
                f"| {name} | {target} | {m['rps_median']:,.0f} ({m['rps_min']:,.0f}–{m['rps_max']:,.0f}) "
                f"| {m['p50_ms_median']:.2f} | {m['p99_ms_median']:.1f} | {m['errors']} |"
            )
    lines += ["", "| target | measured | wanted | holds |", "|---|---|---|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['what']} | {t['value']} | {t['target']} | {'yes' if t['ok'] else 'NO'} |")
    w = r["multi_process_writes"]
    lines += ["", f"2 workers, create at 8: {w['acknowledged']:,} acknowledged, {w['stored']:,} stored "
                  "(a create cut off when wrk stops may be stored without being counted)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
