"""Secret connection parameters masked in a PostgreSQL URL (pods/storage/url.py),
in process: which parameters are secret comes from libpq itself when psycopg is
installed, with pods' own list added (and standing alone without psycopg).
End to end, through the CLI's messages: test_postgres.py."""

import pytest

from pods.storage import url
from pods.storage.url import MASK, redact, scrub

OAUTH = "postgresql://u@127.0.0.1:9/x?oauth_client_id=pods&oauth_client_secret=S3CRET&sslmode=disable"


@pytest.fixture
def libpq(monkeypatch):
    """libpq_parameters() asked again, of a libpq the test describes: libpq(None)
    is none at all (no psycopg), libpq([(keyword, dispchar), ...]) one that knows those."""
    from psycopg import pq

    class Option:
        def __init__(self, keyword, dispchar):
            self.keyword, self.dispchar = keyword.encode(), dispchar.encode()

    def use(options):
        def get_defaults():
            if options is None:
                raise ImportError("no libpq here")
            return [Option(k, d) for k, d in options]

        monkeypatch.setattr(pq.Conninfo, "get_defaults", staticmethod(get_defaults))
        url.libpq_parameters.cache_clear()

    yield use
    url.libpq_parameters.cache_clear()


def test_oauth_client_secret_in_the_query_is_masked():
    shown = redact(OAUTH)
    assert "S3CRET" not in shown
    assert shown == OAUTH.replace("S3CRET", MASK)  # the parameters around it stay readable
    message = f'connection to "{OAUTH}" failed: bad value "S3CRET"'
    assert "S3CRET" not in scrub(message, OAUTH)


def test_every_parameter_the_installed_libpq_calls_secret_is_masked():
    from psycopg import pq

    secret = [o.keyword.decode() for o in pq.Conninfo.get_defaults() if o.dispchar == b"*"]
    assert "password" in secret
    for name in secret:
        shown = redact(f"postgresql://u@h/x?{name}=hunter2&sslmode=disable")
        assert "hunter2" not in shown and shown.endswith(f"{name}={MASK}&sslmode=disable"), name


def test_a_secret_only_libpq_knows_is_masked(libpq):
    libpq([("password", "*"), ("sslmode", ""), ("future_token", "*")])
    assert redact("postgresql://u@h/x?future_token=hunter2&sslmode=disable") == (
        f"postgresql://u@h/x?future_token={MASK}&sslmode=disable"
    )


@pytest.mark.parametrize("options", [None, [("password", "*"), ("sslpassword", "*"), ("sslmode", "")]],
                         ids=["no libpq", "a libpq older than oauth"])
def test_without_libpq_or_with_an_older_one_the_static_list_still_masks(libpq, options):
    libpq(options)
    assert redact(OAUTH) == OAUTH.replace("S3CRET", MASK)
    for name in ("password", "sslpassword", "scram_client_key", "scram_server_key"):
        assert "hunter2" not in redact(f"postgresql://u@h/x?{name}=hunter2&sslmode=disable"), name
