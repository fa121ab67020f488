"""Replication off the device, measured (docs/replication.md):

    python bench/replication.py [--rounds 5] [--duration 3] [--kills 5] [--pods 100000]

Needs wrk (Debian: apt-get install wrk) and Litestream (pip install -e '.[replicate]').
All on loopback, with a file:// replica in a temporary directory:
  throughput  GET one pod and create, with --replica against without, both servers
              up side by side, measured in interleaved rounds (the order flips
              each round); reports median req/s and the median of the per-round
              ratios (replica / without), as bench/compare.py does
  kill -9     a server writing (two clients) killed with its whole process group;
              the database deleted, restored from the replica: how long before the
              kill the oldest acknowledged change the restore lacks was answered
              (0 if none is missing); median and max over --kills runs
  restore     `pods restore` (Litestream's restore, then check's verification and
              the counts) of a database of --pods pods, median of three
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402

APP = run.ROOT / "app.py"


def server(name: str, db: Path, work: Path, replica: str | None, new_session=False) -> run.Process:
    cmd = [sys.executable, APP, "--port", "{port}", "--db", db, "--log-level", "warning"]
    if replica:
        cmd += ["--replica", replica]
    if new_session:  # its own process group, as a service's: killed whole with kill -9
        cmd = [sys.executable, "-c", "import os, sys; os.setsid(); os.execv(sys.executable, sys.argv[1:])", *cmd]
    return run.Process(name, cmd, work)


def lag(url: str) -> float:
    return json.loads(run.get(url, "/healthz")).get("replica_lag_seconds", 0.0)


def wait_caught_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    time.sleep(1.5)
    while lag(url) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)


def restore(replica: str, dest: Path) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, APP, "restore", replica, str(dest)], check=True, capture_output=True, text=True)
    return time.monotonic() - started


def pod_ids(path: Path) -> set[str]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT pod_id FROM pod")}
    finally:
        conn.close()


# -- throughput --------------------------------------------------------------------


def throughput(work: Path, rounds: int, duration: int) -> list[dict]:
    ids = run.seed(work / "plain.db", 1000)
    shutil.copy(work / "plain.db", work / "replicated.db")
    ids_file = run.write_ids(work, ids)
    plain = server("plain", work / "plain.db", work, None)
    replicated = server("replicated", work / "replicated.db", work, f"file://{work}/replica")
    wait_caught_up(replicated.url)
    results = []
    try:
        for scenario, script, conns in (("GET", "get_pod.lua", 8), ("create", "create.lua", 8)):
            runs = {"without": [], "with --replica": []}
            ratios = []
            for i in range(rounds):
                order = [("without", plain), ("with --replica", replicated)]
                if i % 2:
                    order.reverse()
                got = {}
                for label, target in order:
                    got[label] = run.wrk(target, script, conns, duration, {"BENCH_IDS": str(ids_file)})
                    runs[label].append(got[label])
                ratios.append(got["with --replica"]["rps"] / got["without"]["rps"])
            results.append({
                "scenario": f"{scenario}@{conns}",
                "without": run.summary(runs["without"]),
                "with --replica": run.summary(runs["with --replica"]),
                "ratio_median": statistics.median(ratios),
                "ratios": ratios,
            })
        results.append({"replica_lag_after": lag(replicated.url)})
    finally:
        plain.stop()
        replicated.stop()
    return results


# -- kill -9 --------------------------------------------------------------------------


def writer(url: str, stop: threading.Event, acked: dict, seed: int) -> None:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    headers = {"Authorization": f"Bearer {run.KEY}", "Content-Type": "application/json"}
    n = 0
    while not stop.is_set():
        n += 1
        try:
            conn.request("POST", "/agent/v0/pods", json.dumps({"client_id": f"k{seed}-{n}"}), headers)
            answer = conn.getresponse()
            body = answer.read()
        except (OSError, http.client.HTTPException):
            return
        if answer.status == 200:
            acked[json.loads(body)["pod_id"]] = time.monotonic()


def kill_window(work: Path, index: int, seconds: float = 3.0) -> dict:
    site = work / f"kill-{index}"
    site.mkdir()
    db = site / "pods.db"
    run.seed(db, 10)
    replica = f"file://{site}/replica"
    target = server(f"kill-{index}", db, site, replica, new_session=True)
    acked, stop = {}, threading.Event()
    threads = [threading.Thread(target=writer, args=(target.url, stop, acked, i)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    os.killpg(target.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    stop.set()
    for t in threads:
        t.join()
    target.proc.wait()
    target.log.close()
    time.sleep(0.5)  # Litestream is gone (PR_SET_PDEATHSIG); nothing more reaches the replica
    for name in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        name.unlink(missing_ok=True)
    shutil.rmtree(site / ".pods.db-litestream", ignore_errors=True)
    restore(replica, site / "restored.db")
    present = pod_ids(site / "restored.db")
    lost = sorted(at for pod_id, at in acked.items() if pod_id not in present)
    return {"acknowledged": len(acked), "lost": len(lost), "window_s": killed - lost[0] if lost else 0.0}


# -- restore --------------------------------------------------------------------------


def restore_time(work: Path, pods: int) -> dict:
    db = work / "big.db"
    run.seed(db, pods)
    replica = f"file://{work}/big-replica"
    target = server("big", db, work, replica)
    wait_caught_up(target.url)
    target.stop()
    times = []
    for i in range(3):
        dest = work / f"big-restored-{i}.db"
        times.append(restore(replica, dest))
        assert len(pod_ids(dest)) == pods
    return {"pods": pods, "bytes": db.stat().st_size, "seconds_median": statistics.median(times), "seconds": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--out", help="write the results as JSON here too")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pods-bench-replication-"))
    try:
        report = {"throughput": throughput(work, args.rounds, args.duration)}
        kills = [kill_window(work, i) for i in range(args.kills)]
        windows = [k["window_s"] for k in kills]
        report["kill_9"] = {"runs": kills, "window_median_s": statistics.median(windows), "window_max_s": max(windows)}
        report["restore"] = restore_time(work, args.pods)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for row in report["throughput"]:
        if "scenario" in row:
            a, b = row["without"], row["with --replica"]
            print(f"{row['scenario']:10} without {a['rps_median']:8,.0f} req/s (p99 {a['p99_ms_median']:.1f} ms)   "
                  f"with --replica {b['rps_median']:8,.0f} req/s (p99 {b['p99_ms_median']:.1f} ms)   "
                  f"ratio median {row['ratio_median']:.3f} ({', '.join(f'{r:.2f}' for r in row['ratios'])})")
    k = report["kill_9"]
    print(f"kill -9   window lost: median {k['window_median_s']:.2f} s, max {k['window_max_s']:.2f} s "
          f"({', '.join('%.2f' % run_['window_s'] for run_ in k['runs'])}; lost/acknowledged: "
          f"{', '.join('%d/%d' % (run_['lost'], run_['acknowledged']) for run_ in k['runs'])})")
    r = report["restore"]
    print(f"restore   {r['pods']:,} pods ({r['bytes'] / 1e6:.1f} MB): median {r['seconds_median']:.2f} s "
          f"({', '.join(f'{s:.2f}' for s in r['seconds'])})")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
