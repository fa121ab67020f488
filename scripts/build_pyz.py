"""Build pods.pyz: pods and its pure-Python dependencies in one file, serving SQLite.

    .venv/bin/python scripts/build_pyz.py          # writes ./pods.pyz
    python3 pods.pyz --db /var/lib/pods/pods.db    # the same interface as python app.py

pods.pyz serves SQLite only: PostgreSQL's driver (psycopg) is compiled code, which a
zip cannot carry. For PostgreSQL, install pods as a package from a clone instead:
/usr/bin/python3 -m venv /opt/pods && /opt/pods/bin/pip install '.[postgres]' (in the clone).

The file is a standard-library zipapp: Python imports everything straight from
the zip, so nothing is extracted and nothing is written except the database.
It needs only Python 3.11+. It carries bytecode for the Python that built it,
so build it with the device's Python version for the fastest start; any other
3.11+ runs it too, compiling the sources in memory at each start.

Needs pip in the Python that runs it. With --find-links DIR it installs pods and
its dependencies from the wheels in DIR alone (no network); without, it builds
this checkout and fetches the dependencies from the package index.
"""

import argparse
import compileall
import py_compile
import shutil
import subprocess
import sys
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Compiled extension modules that only speed up a pure-Python fallback, and so
# can be left out. Any other compiled module fails the build: a zip cannot hold one.
OPTIONAL_ACCELERATORS = {"markupsafe/_speedups"}
COMPILED_SUFFIXES = {".so", ".pyd", ".dylib"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "pods.pyz", help="default: pods.pyz in the checkout")
    parser.add_argument("--find-links", type=Path, metavar="DIR",
                        help="install pods and its dependencies only from the wheels in DIR")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        install(staging, args.find_links)
        drop_optional_accelerators(staging)
        shutil.rmtree(staging / "bin", ignore_errors=True)  # console scripts: no use inside a zip
        compile_beside_sources(staging)
        zipapp.create_archive(staging, args.output, interpreter="/usr/bin/env python3",
                              main="pods.cli:cli", compressed=True)
    version = ".".join(map(str, sys.version_info[:2]))
    print(f"built {args.output}: {args.output.stat().st_size / 1e6:.1f} MB, bytecode for Python {version};"
          f" it serves SQLite only (for PostgreSQL, install pods as a package: pip install '.[postgres]' in a clone)")


# Left out of the copy of the checkout that is built: build output of earlier runs
# (setuptools reuses build/lib, so a renamed or deleted file would come back) and
# what is not part of the project.
NOT_SOURCES = shutil.ignore_patterns("build", "dist", "*.egg-info", ".venv", ".git", "__pycache__", "*.pyz",
                                     "results", "*.db", "*.db-*")


def install(target: Path, find_links: Path | None) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), "--no-compile"]
    if find_links is not None:
        command += ["--no-index", "--find-links", str(find_links), "pods-server"]
        subprocess.run(command, check=True)
        return
    with tempfile.TemporaryDirectory() as clean:  # build from a clean copy, never from stale build output
        source = Path(clean) / "pods"
        shutil.copytree(ROOT, source, ignore=NOT_SOURCES, symlinks=True)
        subprocess.run(command + [str(source)], check=True)


def drop_optional_accelerators(staging: Path) -> None:
    for path in staging.rglob("*"):
        if path.suffix not in COMPILED_SUFFIXES:
            continue
        module = path.relative_to(staging).as_posix().split(".")[0]
        if module not in OPTIONAL_ACCELERATORS:
            sys.exit(f"error: {module} is compiled code with no pure-Python fallback; it cannot run from a zip")
        path.unlink()


def compile_beside_sources(staging: Path) -> None:
    """Bytecode as x.pyc beside x.py, the one layout zipimport reads (it ignores
    __pycache__). Unchecked: the zip never changes, so there is nothing to check
    against, and a Python of another version skips these files for the sources."""
    ok = compileall.compile_dir(staging, quiet=1, legacy=True,
                                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    if not ok:
        sys.exit("error: some sources did not compile")


if __name__ == "__main__":
    main()
