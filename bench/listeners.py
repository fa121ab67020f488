"""How --workers share a port: pods' sockets (one per worker, SO_REUSEPORT, the
first bound without it so that a second server is refused) against one listening
socket inherited by every worker (gunicorn's way).

    python bench/listeners.py [--rounds 5] [--duration 3]

Each variant is the real server with --workers 2 on the same SQLite file, started
fresh for each run and loaded with GET at 32 connections, the variants alternating
round after round. Reports the median and the lowest run of each: an inherited
socket lets whichever worker wakes first take the connections, so some runs leave
one worker with most of them. Needs wrk (Debian: apt-get install wrk).
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402

VARIANTS = ["reuseport", "inherited"]

# Runs in the server process: patch, then serve like python app.py --workers 2.
LAUNCH = """
import sys
sys.path.insert(0, {root!r})
variant, port, db = sys.argv[1:4]
from pods.serving import workers
if variant == "inherited":
    one_per_worker = workers.listening_sockets
    workers.listening_sockets = lambda host, port, count: one_per_worker(host, port, 1) * count
sys.argv = ["app.py", "--port", port, "--db", db, "--workers", "2", "--log-level", "warning"]
from pods.cli import cli
cli()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pods-listeners-"))
    ids_file = run.write_ids(work, run.seed(work / "a.db", 1000))
    launch = LAUNCH.format(root=str(BENCH.parent))
    results = {v: [] for v in VARIANTS}
    for round_no in range(args.rounds):
        for variant in VARIANTS if round_no % 2 == 0 else VARIANTS[::-1]:
            target = run.Process(variant, [sys.executable, "-c", launch, variant, "{port}", work / "a.db"], work)
            try:
                rps = run.wrk(target, "get_pod.lua", 32, args.duration, {"BENCH_IDS": str(ids_file)})["rps"]
            finally:
                target.stop()
            results[variant].append(rps)
            print(f"round {round_no + 1} {variant:10} {rps:7.0f} req/s", file=sys.stderr)
    print("| --workers 2, GET at 32 | req/s median | lowest run | runs |\n|---|---|---|---|")
    for variant, rates in results.items():
        print(f"| {variant} | {statistics.median(rates):,.0f} | {min(rates):,.0f} | {len(rates)} |")


if __name__ == "__main__":
    main()
