"""Throughput of the soak's mixed traffic (on demand, not a test).

    .venv/bin/python bench/soak.py [--clients 16] [--seconds 4] [--db PATH-OR-URL] [--floor N]

Starts ``python app.py`` on a new SQLite database (or ``--db``), runs the traffic of
tests/serving/test_soak.py against it (keep-alive clients creating, reading,
listing and deleting pods, with some bad requests), and prints the requests
answered, their statuses and the requests per second. The soak test checks that
nothing fails and no write is lost; how much traffic is answered is measured here.
``--floor N`` exits 1 when fewer than N requests were answered (the test's old floor
was 1,000 in 4 s with 16 clients).
"""

import argparse
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "serving")]  # helpers, and the soak's traffic

from helpers import KEY, Server  # noqa: E402
from test_soak import mixed_traffic  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--db", help="a new database (default: a SQLite file in a temporary folder)")
    parser.add_argument("--floor", type=int, help="exit 1 when fewer requests than this were answered")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pods-soak-") as folder:
        db = args.db or str(Path(folder) / "soak.db")
        with Server(db, env={"PODS_API_KEY": KEY}, workdir=folder) as server:
            statuses, problems, _ = mixed_traffic(server.url, args.clients, args.seconds)
    answered = sum(statuses.values())
    print(f"{answered} requests in {args.seconds:g} s from {args.clients} clients: "
          f"{answered / args.seconds:,.0f} requests/s")
    print("statuses: " + ", ".join(f"{status} x{n}" for status, n in sorted(statuses.items())))
    if problems:
        print(f"{len(problems)} problem(s), the first: {problems[0]}", file=sys.stderr)
        return 1
    if args.floor is not None and answered < args.floor:
        print(f"below the floor: {answered} < {args.floor}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
