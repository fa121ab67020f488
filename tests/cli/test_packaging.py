"""pods as it ships: the sdist, the wheel installed in a fresh venv, and pods.pyz
run by a Python that has none of the dependencies. Each serves, from outside the
source tree, a round trip of the official SDK. The distribution is pods-server;
what each install says to get PostgreSQL is a command that works."""

import ast
import hashlib
import importlib.metadata
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path
from typing import NamedTuple

import dbtools
import httpx
import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment
from agentmail.errors import NotFoundError
from helpers import Server, run_app
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import pods
from pods.storage import POSTGRES_REQUIREMENTS
from pods.storage import sqlite as db

pytestmark = pytest.mark.live  # it builds, installs and runs pods in processes of their own

ROOT = Path(__file__).resolve().parent.parent.parent
# Every .sql file under pods/: the schema, and each backend's migrations.
SQL_FILES = sorted(str(p.relative_to(ROOT / "pods")) for p in (ROOT / "pods").rglob("*.sql"))
# pyproject.toml holds these to the minor version the tests ran against (why: there).
BOUNDED = ["flask", "waitress", "marshmallow", "flask-httpauth", "prometheus-client"]
DIST = "pods-server"  # "pods" on PyPI is another project
WHEEL_NAME = "pods_server"  # the distribution's name in file names
POSTGRES_MIGRATIONS = len(list((ROOT / "pods" / "storage" / "postgres_migrations").glob("[0-9]*.sql")))
VERSION_LINE = (f"pods, version {pods.__version__} (database schema version {db.SCHEMA_VERSION} on SQLite,"
                f" {POSTGRES_MIGRATIONS} on PostgreSQL)\n")
BOUNDED_POSTGRES = ["psycopg-pool"]  # in the postgres extra


class Dist(NamedTuple):
    sdist: Path
    wheel: Path
    wheelhouse: Path  # the wheel and a wheel of each of its dependencies


def run(command, **kwargs) -> subprocess.CompletedProcess:
    """Run to completion; on failure, fail the test with the command's output."""
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> Dist:
    """Built once per session, as a release is: the sdist, then the wheel from the
    sdist (so a file missing from the sdist is missing from the wheel too)."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT])
    wheel = next(out.glob(f"{WHEEL_NAME}-*.whl"))
    wheelhouse = out / "wheelhouse"
    # Dependencies as wheels (the postgres extra's too, and setuptools to build a
    # clone), from pip's cache when it has them, so that installs into fresh
    # environments below need no index.
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", wheelhouse, f"{wheel}[postgres]",
         "setuptools>=68"])
    return Dist(next(out.glob(f"{WHEEL_NAME}-*.tar.gz")), wheel, wheelhouse)


def fresh_python(path: Path) -> Path:
    """A venv without pip or any package: only the standard library."""
    run([sys.executable, "-m", "venv", "--without-pip", path])
    return path / "bin" / "python"


def sdk_round_trip(server: Server) -> None:
    environment = AgentMailEnvironment(http=server.url + "/agent", websockets="ws://unused")
    with httpx.Client(timeout=30) as transport:
        client = AgentMail(api_key=server.bootstrap_token, environment=environment, httpx_client=transport)
        pod = client.pods.create(name="Edge", client_id="edge-1")
        assert (pod.name, pod.client_id) == ("Edge", "edge-1")
        assert client.pods.get(pod_id=pod.pod_id) == pod
        assert [p.pod_id for p in client.pods.list().pods] == [pod.pod_id]
        assert client.pods.delete(pod_id=pod.pod_id) is None
        with pytest.raises(NotFoundError):
            client.pods.get(pod_id=pod.pod_id)
        assert client.pods.list().count == 0


def schema_version(path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def third_party_imports(sources: dict[str, str]) -> set[str]:
    """Top-level names of the modules ``sources`` import, less the standard library and pods.
    An import in a ``try`` that handles ImportError is optional: left out."""
    names = set()
    for source in sources.values():
        tree = ast.parse(source)
        optional = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.Try) and _handles_import_error(node)
                    for statement in node.body for inner in ast.walk(statement)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"pods"}


def _handles_import_error(node: ast.Try) -> bool:
    caught = [h.type for h in node.handlers if h.type is not None]
    caught = [e for c in caught for e in (c.elts if isinstance(c, ast.Tuple) else [c])]
    return any(isinstance(e, ast.Name) and e.id in ("ImportError", "ModuleNotFoundError") for e in caught)


# -- the sdist and the wheel -------------------------------------------------------


def test_the_sdist_and_the_wheel_carry_the_schema_and_migrations_as_package_data(dist):
    with tarfile.open(dist.sdist) as sdist:
        top = f"{dist.sdist.name.removesuffix('.tar.gz')}/"
        design_card = sdist.extractfile(top + "schema.sql").read()
        assert sdist.extractfile(top + "pods/schema.sql").read() == design_card
        assert {top + "app.py", top + "tests/conftest.py", top + "tests/fixtures/v1.db"} <= set(sdist.getnames())
    assert design_card == (ROOT / "schema.sql").read_bytes()

    with zipfile.ZipFile(dist.wheel) as wheel:
        for name in SQL_FILES:
            assert wheel.read(f"pods/{name}") == (ROOT / "pods" / name).read_bytes(), name
        assert not [n for n in wheel.namelist() if not n.startswith(("pods/", f"{WHEEL_NAME}-"))]
        entry_points = wheel.read(f"{WHEEL_NAME}-{pods.__version__}.dist-info/entry_points.txt").decode()
        assert "pods = pods.cli:cli" in entry_points


def test_the_wheel_declares_every_package_pods_imports_and_bounds_the_fragile_ones(dist):
    with zipfile.ZipFile(dist.wheel) as wheel:
        sources = {n: wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".py")}
        metadata = HeaderParser().parsestr(wheel.read(f"{WHEEL_NAME}-{pods.__version__}.dist-info/METADATA").decode())
    assert metadata["Version"] == pods.__version__
    declared = list(map(Requirement, metadata.get_all("Requires-Dist")))
    requires = {canonicalize_name(r.name): r for r in declared if not r.marker}  # extras carry a marker
    postgres_extra = {canonicalize_name(r.name) for r in declared if r.marker and r.marker.evaluate({"extra": "postgres"})}
    # The PostgreSQL backend's module may import what the postgres extra installs.
    postgres_module = {n: t for n, t in sources.items() if n == "pods/storage/postgres.py"}
    imported = third_party_imports({n: t for n, t in sources.items() if n not in postgres_module})
    assert {"click", "flask", "werkzeug", "waitress"} <= imported
    for module in imported:
        distribution = canonicalize_name(importlib.metadata.packages_distributions()[module][0])
        assert distribution in requires, f"pods imports {module} but does not declare {distribution}"
    for module in third_party_imports(postgres_module) - imported:
        distribution = canonicalize_name(importlib.metadata.packages_distributions()[module][0])
        assert distribution in postgres_extra, f"the PostgreSQL backend imports {module}, not in the postgres extra"

    postgres_requires = {canonicalize_name(r.name): r for r in declared
                         if r.marker and r.marker.evaluate({"extra": "postgres"})}
    for name, among in [(n, requires) for n in BOUNDED] + [(n, postgres_requires) for n in BOUNDED_POSTGRES]:
        tested = Version(importlib.metadata.version(name))
        next_minor = Version(f"{tested.major}.{tested.minor + 1}")
        assert tested in among[name].specifier and next_minor not in among[name].specifier, name


def test_the_distribution_is_pods_server_giving_the_pods_command(dist):
    with zipfile.ZipFile(dist.wheel) as wheel:
        metadata = HeaderParser().parsestr(wheel.read(f"{WHEEL_NAME}-{pods.__version__}.dist-info/METADATA").decode())
    assert metadata["Name"] == DIST
    declared = list(map(Requirement, metadata.get_all("Requires-Dist")))
    extra = sorted(str(r).split(";")[0] for r in declared if r.marker and r.marker.evaluate({"extra": "postgres"}))
    # The hint of a pods installed without the extra installs what the extra would.
    assert extra == sorted(str(Requirement(r)) for r in POSTGRES_REQUIREMENTS)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == DIST and pyproject["project"]["scripts"] == {"pods": "pods.cli:cli"}
    assert f"{DIST}[postgres]" in pyproject["project"]["optional-dependencies"]["test"]


def test_one_version_everywhere(dist):
    """pods --version, the package metadata (read from pods.__version__, as pyproject.toml
    says) and the top entry of CHANGELOG.md name one version."""
    assert run_app("--version").stdout == VERSION_LINE
    assert dist.wheel.name.startswith(f"{WHEEL_NAME}-{pods.__version__}-")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pods.__version__"}
    changelog = (ROOT / "CHANGELOG.md").read_text()
    top = re.search(r"^## (\S+) \((\d{4}-\d\d-\d\d)\)$", changelog, re.MULTILINE)
    assert top and top.group(1) == pods.__version__, "CHANGELOG.md's top entry is not this version"
    versions = re.findall(r"^## (\S+) ", changelog, re.MULTILINE)
    assert versions == sorted(set(versions), key=Version, reverse=True)  # newest first, each once


# -- installed from the wheel -------------------------------------------------------


@pytest.fixture(scope="session")
def installed(dist, tmp_path_factory) -> Path:
    """A fresh venv outside the source tree with the wheel installed; its bin/."""
    python = fresh_python(tmp_path_factory.mktemp("installed") / "venv")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
         "--no-index", "--find-links", dist.wheelhouse, DIST])
    return python.parent


def test_the_installed_pods_command_serves_from_any_directory(installed, tmp_path):
    module = run([installed / "python", "-c", "import pods; print(pods.__file__)"], cwd=tmp_path).stdout
    assert Path(module).is_relative_to(installed.parent) and not Path(module).is_relative_to(ROOT)

    elsewhere, data = tmp_path / "elsewhere", tmp_path / "data"
    elsewhere.mkdir()
    data.mkdir()
    with Server(data / "pods.db", command=[installed / "pods"], cwd=elsewhere, workdir=tmp_path) as server:
        sdk_round_trip(server)
        assert schema_version(server.db) == db.SCHEMA_VERSION  # schema.sql and the migrations were found
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("command, prog", [(["pods"], "pods"), (["python", "-m", "pods"], "python -m pods")])
def test_pods_and_python_m_pods_are_the_same_command_line(installed, tmp_path, command, prog):
    command = [installed / command[0], *command[1:]]
    assert run([*command, "--version"], cwd=tmp_path).stdout == VERSION_LINE
    assert run([*command, "--help"], cwd=tmp_path).stdout == run_app("--help").stdout.replace("app.py", prog)
    wrong = subprocess.run([*command, "nosuch"], capture_output=True, text=True, cwd=tmp_path)
    assert wrong.returncode == 2
    assert f"Try '{prog} --help' for help." in wrong.stderr and "No such command 'nosuch'" in wrong.stderr


# -- pods.pyz ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def pyz(dist, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pyz") / "pods.pyz"
    run([sys.executable, ROOT / "scripts" / "build_pyz.py", "--find-links", dist.wheelhouse, "--output", out])
    return out


def test_the_pyz_holds_only_pure_python_and_the_package_data(pyz):
    with zipfile.ZipFile(pyz) as z:
        names = z.namelist()
        for name in SQL_FILES:
            assert z.read(f"pods/{name}") == (ROOT / "pods" / name).read_bytes(), name
    assert not [n for n in names if re.search(r"\.(so|pyd|dylib)$|__pycache__/", n)]
    assert "markupsafe/_native.py" in names  # the pure fallback for the speedups left out
    assert "flask/app.pyc" in names and "flask/app.py" in names  # bytecode zipimport reads, and the source


def test_the_pyz_alone_in_a_folder_serves_with_a_bare_python(pyz, tmp_path):
    python = fresh_python(tmp_path / "bare")
    missing = subprocess.run([python, "-I", "-c", "import flask"], capture_output=True, text=True)
    assert "No module named 'flask'" in missing.stderr
    edge, data, home, logs = (tmp_path / name for name in ["edge", "data", "home", "logs"])
    for folder in (edge, data, home, logs):
        folder.mkdir()
    shutil.copy(pyz, edge)
    before = hashlib.sha256(pyz.read_bytes()).hexdigest()
    command = [python, "-I", "pods.pyz"]

    assert run([*command, "--version"], cwd=edge).stdout == VERSION_LINE
    assert run([*command, "--help"], cwd=edge).stdout == run_app("--help").stdout.replace("app.py", "pods.pyz")

    # HOME and TMPDIR are where a cache or extraction would go; nothing may land there.
    with Server(data / "pods.db", command=command, cwd=edge, workdir=logs,
                env={"HOME": str(home), "TMPDIR": str(home)}) as server:
        sdk_round_trip(server)
        assert schema_version(server.db) == db.SCHEMA_VERSION
    assert os.listdir(edge) == ["pods.pyz"]
    assert hashlib.sha256((edge / "pods.pyz").read_bytes()).hexdigest() == before
    assert os.listdir(home) == []
    assert set(os.listdir(data)) <= {"pods.db", "pods.db-wal", "pods.db-shm"}


# -- what each install says to get PostgreSQL, followed ----------------------------------


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def offline(wheelhouse: Path) -> dict:
    """pip's own variables (pip reads them for every command): no index, only the
    wheels built for the test, so a hinted command runs as written, without a network."""
    return {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.mark.live
def test_a_pure_sqlite_install_names_a_command_that_adds_postgresql(dist, tmp_path, postgres):
    venv = tmp_path / "sqlite-only"
    run([sys.executable, "-m", "venv", venv])
    run([venv / "bin" / "pip", "install", "--quiet", DIST], env=offline(dist.wheelhouse))
    url = dbtools.new_schema(postgres)
    line = one_error_line(subprocess.run([venv / "bin" / "pods", "init", "--db", url], capture_output=True,
                                         text=True, cwd=tmp_path))
    hinted = re.fullmatch(r"Error: a postgresql:// database needs the postgres extra \(psycopg\), not installed"
                          r" with this pods: (.+) \(or, in a clone of pods: pip install '\.\[postgres\]'\)", line)
    assert hinted, line
    command = shlex.split(hinted.group(1))
    python = Path(command[0])
    assert python.parent == venv / "bin" and python.name.startswith("python")  # into this very pods
    assert command[1:4] == ["-m", "pip", "install"]
    run(command, env=offline(dist.wheelhouse))
    assert run([venv / "bin" / "pods", "init", "--db", url], cwd=tmp_path).stdout.startswith("pods_")
    assert run([venv / "bin" / "pods", "check", "--db", url], cwd=tmp_path).stdout.strip().endswith(": ok")


@pytest.mark.live
def test_the_pyz_says_it_serves_sqlite_only_and_its_install_command_works(pyz, dist, tmp_path, postgres):
    """pods.pyz names the install docs/deployment.md makes: run as written in a clone
    (the sdist, unpacked: the whole project), it gives /opt/pods/bin/pods (here under a
    temporary root), which serves PostgreSQL, and which the systemd unit runs."""
    url = dbtools.new_schema(postgres)
    bare = fresh_python(tmp_path / "bare")
    line = one_error_line(subprocess.run([bare, "-I", pyz, "check", "--db", url], capture_output=True, text=True,
                                         cwd=tmp_path))
    hinted = re.fullmatch(r"Error: pods\.pyz serves SQLite only: a zip cannot carry PostgreSQL's driver \(psycopg,"
                          r" compiled code\)\. For PostgreSQL, install pods as a package from a clone of its"
                          r" repository: (.+) \(in the clone\), then run (\S+)", line)
    assert hinted, line
    command, program = hinted.groups()
    steps = (ROOT / "docs" / "deployment.md").read_text()
    assert "\n".join(command.split(" && ")) in steps  # the documented install, line for line
    unit = (ROOT / "contrib" / "systemd" / "pods.service").read_text()
    assert f"\nExecStart={program}\n" in unit

    with tarfile.open(dist.sdist) as sdist:
        sdist.extractall(tmp_path / "clone", filter="data")
    clone = next((tmp_path / "clone").iterdir())
    prefix = tmp_path / "root"
    env = {**offline(dist.wheelhouse), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # As written, but under a temporary root, and with this test's Python for the system's.
    as_written = command.replace("/opt/pods", f"{prefix}/opt/pods").replace("/usr/bin/python3", sys.executable)
    run(["bash", "-ec", as_written], cwd=clone, env=env)
    installed = prefix / program.lstrip("/")
    assert run([installed, "--version"], cwd=tmp_path).stdout == VERSION_LINE
    assert run([installed, "init", "--db", url], cwd=tmp_path).stdout.startswith("pods_")
    assert run([installed, "check", "--db", url], cwd=tmp_path).stdout.strip().endswith(": ok")
