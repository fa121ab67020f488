"""``python tests/serving/faultserver.py ARGS``: ``python app.py ARGS`` with two faults a
test can ask for, so that a real server shows its 500 and its 503: a pod list
whose query says ``fault=internal`` fails with an unexpected exception (a bug),
``fault=unavailable`` with the database driver's "not answering" (what a lost
PostgreSQL or a SQLite locked past its busy timeout raise). Without the parameter,
nothing differs. Used by test_errors_live.py only."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flask import request  # noqa: E402

from pods.cli import cli  # noqa: E402
from pods.storage.postgres import PostgresStorage  # noqa: E402
from pods.storage.sqlite import SQLiteStorage  # noqa: E402


def with_faults(storage_class):
    page_pods = storage_class.page_pods

    def faulty(self, *args, **kwargs):
        fault = request.args.get("fault")
        if fault == "internal":
            raise RuntimeError("an injected bug")
        if fault == "unavailable":
            raise self.unavailable[0]("an injected outage")
        return page_pods(self, *args, **kwargs)

    storage_class.page_pods = faulty


if __name__ == "__main__":
    for storage_class in (SQLiteStorage, PostgresStorage):
        with_faults(storage_class)
    cli(prog_name="faultserver.py")
