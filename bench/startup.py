"""Size of pods.pyz, and its start-up time against python app.py (on demand, not a test).

    .venv/bin/python scripts/build_pyz.py
    .venv/bin/python bench/startup.py [--rounds 15] [--pyz pods.pyz]

Start-up is the time from launch to the first 200 from /healthz. Both start on a
database that already exists (a warm-up start made it), so neither pays for the
first start's schema and key. pods.pyz runs as ``python -I pods.pyz`` on a bare
venv of the same Python (none of the dependencies installed), python app.py on
the Python running this script. Rounds alternate the two, so drift in the
machine's load shifts both alike; prints medians, min-max and their ratio.
"""

import argparse
import http.client
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLL_SECONDS = 0.005


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start_up_seconds(command: list[str], db: Path) -> float:
    """Launch ``command`` as a server on ``db``; seconds until /healthz answers 200."""
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([*command, "--port", str(port), "--db", str(db)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not healthy(port):
            if proc.poll() is not None:
                sys.exit(f"error: {command} exited {proc.returncode} before answering")
            if time.perf_counter() - started > 30:
                sys.exit(f"error: {command} did not answer within 30 s")
            time.sleep(POLL_SECONDS)
        return time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--pyz", type=Path, default=ROOT / "pods.pyz")
    args = parser.parse_args()
    if not args.pyz.is_file():
        sys.exit(f"error: no {args.pyz}; build it first: python scripts/build_pyz.py")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp / "bare"], check=True)
        variants = {
            "python3 pods.pyz": [str(tmp / "bare" / "bin" / "python"), "-I", str(args.pyz)],
            "python app.py": [sys.executable, str(ROOT / "app.py")],
        }
        databases = {name: tmp / f"{i}.db" for i, name in enumerate(variants)}
        times = {name: [] for name in variants}
        for name, command in variants.items():  # warm-up: creates each database, fills the page cache
            start_up_seconds(command, databases[name])
        for _ in range(args.rounds):
            for name, command in variants.items():
                times[name].append(start_up_seconds(command, databases[name]))

    print(f"pods.pyz: {args.pyz.stat().st_size:,} bytes; Python {sys.version.split()[0]}; {args.rounds} rounds")
    for name, seconds in times.items():
        print(f"{name:18} median {statistics.median(seconds) * 1000:6.0f} ms"
              f"  (min {min(seconds) * 1000:.0f}, max {max(seconds) * 1000:.0f})")
    pyz, app = (statistics.median(s) for s in times.values())
    print(f"ratio pods.pyz / app.py: {pyz / app:.2f}")


if __name__ == "__main__":
    main()
