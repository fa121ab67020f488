"""The SQL scripts are found as package data, in whatever package and folder a backend names."""

from importlib.resources import files

from pods.storage.migrations import version_history


def test_another_backend_points_the_lookup_at_its_own_package_folder(tmp_path, monkeypatch):
    package = tmp_path / "otherbackend"
    (package / "migrations-pg").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "baseline.sql").write_text("-- version 1")
    for name in ["0003-second.sql", "0002-first.sql", "README.md", "0004-draft.sql.orig", "2-short.sql"]:
        (package / "migrations-pg" / name).write_text(f"-- {name}")
    monkeypatch.syspath_prepend(str(tmp_path))

    root = files("otherbackend")
    scripts = version_history(root / "migrations-pg", root / "baseline.sql")

    assert [s.name for s in scripts] == ["baseline.sql", "0002-first.sql", "0003-second.sql"]
    assert [s.read_text() for s in scripts] == ["-- version 1", "-- 0002-first.sql", "-- 0003-second.sql"]
    assert [s.name for s in version_history(root / "migrations-pg")] == ["0002-first.sql", "0003-second.sql"]
