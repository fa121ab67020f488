"""The storage interface is the contract (pods/storage/interface.py): each backend
implements every method it declares, with the same parameters, and nothing public
beyond it; every method says what it does; nothing outside pods/storage/ reaches a
backend module; and a storage's clock decides its times. (mypy, in .ci/run, checks
the types; this checks what a type checker does not.)"""

import ast
import inspect
from pathlib import Path

import pytest

from pods.api.auth import hash_key, new_token, token_prefix
from pods.storage import interface, open_storage
from pods.storage.postgres import PostgresStorage
from pods.storage.sqlite import SQLiteStorage

PODS = Path(__file__).resolve().parent.parent / "pods"
# Public methods a backend has beyond the interface: none of pods' code outside the
# backend calls them (tests and benchmarks reach the driver's connection through them).
BACKEND_ONLY = {
    SQLiteStorage: {"connection", "probe_write"},
    PostgresStorage: {"connection", "pool"},
}
BACKENDS = list(BACKEND_ONLY)


def declared(protocol) -> dict[str, object]:
    """The members ``protocol`` declares (methods and attributes), with its bases'."""
    members = {}
    for cls in reversed([c for c in protocol.__mro__ if c in (interface.Storage, interface.OperatorStorage)]):
        members.update({name: None for name in getattr(cls, "__annotations__", {})})
        members.update({name: value for name, value in vars(cls).items() if not name.startswith("_")})
    return members


def public_methods(cls) -> set[str]:
    return {name for name, value in inspect.getmembers(cls) if not name.startswith("_") and callable(value)
            and not inspect.isclass(value)}


def parameters(function) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def new(backend, tmp_path):
    if backend is SQLiteStorage:
        return SQLiteStorage(str(tmp_path / "pods.db"))
    return PostgresStorage("postgresql://nobody@127.0.0.1:9/none")  # connects on first use only


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.__name__)
def test_a_backend_implements_every_member_of_the_interface_with_its_parameters(backend, tmp_path):
    storage = new(backend, tmp_path)
    for name, member in declared(interface.OperatorStorage).items():
        assert hasattr(storage, name), f"{backend.__name__} has no {name}, which the interface declares"
        if member is None:  # an attribute
            continue
        implementation = getattr(backend, name)
        assert implementation.__module__ != interface.__name__, (
            f"{backend.__name__}.{name} is the interface's declaration, not an implementation"
        )
        assert parameters(implementation) == parameters(member), (  # their types: mypy's business
            f"{backend.__name__}.{name}{inspect.signature(implementation)}: the interface says"
            f" {name}{inspect.signature(member)}"
        )
    storage.close()


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.__name__)
def test_a_backend_has_nothing_public_beyond_the_interface(backend):
    extra = public_methods(backend) - set(declared(interface.OperatorStorage)) - BACKEND_ONLY[backend]
    assert not extra, f"{backend.__name__} has public {sorted(extra)}: declare them in interface.py, or make them private"


def test_requests_see_only_what_a_request_may_do():
    request_side, operator_side = set(declared(interface.Storage)), set(vars(interface.OperatorStorage))
    for name in ("prepare", "migrate", "create", "backup", "snapshot", "import_all", "count_pods", "problems"):
        assert name in operator_side and name not in request_side, name
    for name in ("caller_for_key_hash", "insert_pod", "page_pods", "page_keys", "ping"):
        assert name in request_side, name


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.__name__)
def test_every_public_method_of_a_backend_says_what_it_does(backend):
    undocumented = [name for name in public_methods(backend) if not inspect.getdoc(getattr(backend, name))]
    assert not undocumented, f"{backend.__name__}: no docstring (own or the interface's) for {undocumented}"


def test_nothing_outside_storage_imports_a_backend_module():
    """The app and the CLI see a Storage; which driver is behind it is storage's business."""
    private = {"sqlite", "postgres", "common", "watchdog"}
    offenders = []
    for path in PODS.rglob("*.py"):
        if (PODS / "storage") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module or ''}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.strip(".").split(".")
                if "storage" in parts and parts.index("storage") + 1 < len(parts) \
                        and parts[parts.index("storage") + 1] in private:
                    offenders.append(f"{path.relative_to(PODS.parent)}:{node.lineno} imports {name}")
    assert not offenders, offenders


def test_the_clock_of_a_storage_decides_its_times(database):
    """Set, every time a storage writes or checks expiry against is the clock's (on
    PostgreSQL too, in place of the database server's); unset, its own."""
    storage = open_storage(database)
    storage.prepare()
    try:
        token = new_token()
        storage.clock = lambda: "2026-03-01T00:00:00.000000Z"
        key = storage.insert_api_key("acme", hash_key(token), token_prefix(token),
                                     expires_at="2026-06-01T00:00:00.000000Z")
        assert key["created_at"] == key["updated_at"] == "2026-03-01T00:00:00.000000Z"
        org_id = storage.caller_for_key_hash(hash_key(token))["org_id"]
        assert storage.insert_pod(org_id, "early", None)["created_at"] == "2026-03-01T00:00:00.000000Z"
        storage.clock = lambda: "2026-07-01T00:00:00.000000Z"  # past the key's expiry
        assert storage.caller_for_key_hash(hash_key(token)) is None
        assert storage.revoke_api_key(key["key_id"]) == "2026-07-01T00:00:00.000000Z"
        storage.clock = None
        assert storage.insert_pod(org_id, "now", None)["created_at"] > "2026-07"
    finally:
        storage.close()
