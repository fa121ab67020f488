"""What happens to a request as soon as its head is in, before a worker thread or
the database sees it: whose it is (its tenant, for fair scheduling), whether its
rate limits let it through (else 429), and whether its body is worth reading.

Runs in the event loop, once per request, from the head alone: a bearer token is
hashed and looked up in the process's ``TenantMap``, never in the database. So a
request refused here costs a fraction of one served, and a body is never read for
a request that will be refused without it:

- no usable bearer token, on an endpoint that needs one: the request goes to the
  app at once, its body withheld (the app answers 401, or the 404/405/400 that
  comes before authentication, without reading a body), and what the client
  still sends is read and dropped, as for a body over the limit;
- a token this process does not know yet: reading stops while a worker looks
  the key up (``KeyCheck``, queued fairly like any request); a live key's body is
  then read as usual and its tenant remembered, anything else is answered as
  above.
"""

import io
import json
import logging
import math
import threading
import time
from typing import NamedTuple

from werkzeug.exceptions import ClientDisconnected

from ..api import accesslog
from ..api.auth import bearer_token, hash_key, key_owner, live_key_owners, live_key_owners_since
from ..api.errors import error_body
from ..api.meta import PUBLIC_PATHS
from . import ratelimit
from .scheduler import ANONYMOUS, Tenant, TenantMap

# What the head decides about reading the body (PodsRequestParser.received).
PROCEED = "proceed"  # read it (or there is none)
WITHHOLD = "withhold"  # answer without it, and drop it as it comes
CHECK_KEY = "check key"  # hold it until a worker has looked the key up
# How often each process looks for keys created since its last look (by another
# worker, instance or the CLI): a new key is its organization's within this long.
NEW_KEYS_POLL_SECONDS = 1.0
# While the database does not answer, looks are spaced out, doubling up to this: each
# attempt would have the PostgreSQL pool try (and log) a connection.
NEW_KEYS_MAX_WAIT_SECONDS = 60.0

log = logging.getLogger("pods.server")


class Refusal(NamedTuple):
    """An answer given instead of running the app: 429 or a shed 503."""

    status: str
    headers: tuple
    body: bytes


class LoggedCaller(NamedTuple):
    """The organization and key of a refused request, for its access line."""

    org_name: str
    key_id: str


class Admission:
    """The per-process state behind these decisions: the tenant map, the shared
    rate-limit buckets (None when no limit is set), and counters for metrics
    (``rate_limited_total``, ``withheld_total``, ``key_checks_total``)."""

    def __init__(self, app, limits: ratelimit.Limits = ratelimit.Limits(), buckets=None,
                 trusted_proxies: tuple = (), queue_timeout: float = 5.0):
        self.app = app
        self.limits = limits
        self.buckets = buckets if limits else None
        self.trusted_proxies = trusted_proxies
        self.queue_timeout = queue_timeout
        self.tenants = TenantMap()
        self.rate_limited_total = 0
        self.withheld_total = 0
        self.key_checks_total = 0
        self._new_keys_mark = None  # where the last look for new keys ended (storage's)

    def know_live_keys(self) -> None:
        """Learn whose the newest live keys are (at start: so that a key's first
        request after a restart is scheduled and limited as its organization's)."""
        self._new_keys_mark = live_key_owners_since(self.app, None)[1]  # first: nothing made meanwhile missed
        self.learn_owners(reversed(live_key_owners(self.app, self.tenants.size)))

    def know_new_keys(self) -> None:
        """Learn whose the keys created since the last look are. A key made by another
        process is otherwise unknown here until its first request has been served,
        and that request is its client address's: behind an address flooding with
        bad keys past its rate limit, it would be refused forever."""
        owners, self._new_keys_mark = live_key_owners_since(self.app, self._new_keys_mark)
        self.learn_owners(owners)

    def learn_owners(self, owners) -> None:
        """Learn whose each token is, (key_hash, org_id, org_name, key_id) each, unless
        known already (``TenantMap.add``)."""
        for key_hash, org_id, org_name, key_id in owners:
            self.tenants.add(key_hash, Tenant(org_id, key_id, org_name))

    def watch_new_keys(self, interval: float = NEW_KEYS_POLL_SECONDS):
        """``know_new_keys`` every ``interval`` seconds, from a thread of its own,
        until the function returned is called."""
        stop = threading.Event()

        def watch():
            failures = 0
            while not stop.wait(min(interval * 2 ** max(failures - 1, 0), NEW_KEYS_MAX_WAIT_SECONDS)):
                try:
                    self.know_new_keys()
                except Exception as e:
                    # The database is not answering: said once; tried again as usual (one
                    # failure may be a moment's: no connection free in time under load),
                    # then less and less often.
                    if not failures:
                        log.warning("could not look for new keys to schedule by: %s", e)
                    failures += 1
                else:
                    failures = 0

        thread = threading.Thread(target=watch, name="pods-new-keys", daemon=True)
        thread.start()

        def stop_watching() -> None:
            stop.set()
            thread.join(timeout=1)  # a look stuck on a database that does not answer is left

        return stop_watching

    # -- at the head ---------------------------------------------------------------

    def at_head(self, request, peer: str) -> str:
        """Decide for ``request`` (a PodsRequestParser whose head is in) from ``peer``
        (the connection's address); sets its ``tenant``, ``key_hash``,
        ``rate_headers`` and ``refusal``. Returns PROCEED, WITHHOLD or CHECK_KEY."""
        token = bearer_token(request.headers.get("AUTHORIZATION", ""))
        tenant = None
        if token:
            request.key_hash = hash_key(token)
            tenant = self.tenants.get(request.key_hash)
        if tenant is None:
            tenant = Tenant(ANONYMOUS, accesslog.client_address(
                peer, request.headers.get("X_FORWARDED_FOR"), self.trusted_proxies))
        request.tenant = tenant
        public = request.path in PUBLIC_PATHS
        if self.buckets is not None and not public:
            decision = self.buckets.take(self._buckets_of(tenant))
            if not decision.allowed:
                self.rate_limited_total += 1
                request.refusal = too_many_requests(decision)
                return WITHHOLD
            request.rate_headers = decision.headers
        if request.completed or public:
            return PROCEED  # no body to wait for (or none that matters)
        if not token:
            self.withheld_total += 1
            return WITHHOLD
        if tenant.group is ANONYMOUS:
            self.key_checks_total += 1
            return CHECK_KEY
        return PROCEED

    def _buckets_of(self, tenant: Tenant) -> list:
        limits = self.limits
        if tenant.group is ANONYMOUS:
            return [(ratelimit.ident_of("addr", tenant.member), limits.anonymous)]
        buckets = []
        if limits.org is not None:
            buckets.append((ratelimit.ident_of("org", tenant.group), limits.org))
        if limits.key is not None:
            buckets.append((ratelimit.ident_of("key", tenant.member), limits.key))
        return buckets

    # -- after the app -------------------------------------------------------------

    def learn(self, request, caller, status: str) -> None:
        """After the app answered ``request``: remember whose its token is (``caller``,
        the key that authenticated it, or None), or forget a token it refused."""
        key_hash = request.key_hash
        if key_hash is None:
            return
        if caller is not None:
            self.tenants.learn(key_hash, Tenant(caller.org_id, caller.key_id, caller.org_name))
        elif status[:3] == "401":
            self.tenants.forget(key_hash)

    def lookup(self, key_hash: str) -> Tenant | None:
        """The tenant of a live key, from the database (a worker thread's KeyCheck)."""
        owner = key_owner(self.app, key_hash)
        if owner is None:
            return None
        org_id, org_name, key_id = owner
        return Tenant(org_id, key_id, org_name)

    # -- shedding --------------------------------------------------------------------

    def shed(self, request, waited: float) -> None:
        """Mark ``request`` to be answered 503 without being executed: it waited
        ``waited`` seconds for a worker, past the queue timeout."""
        if request.refusal is None:
            request.refusal = overloaded(waited, self.queue_timeout)


def logged_caller(tenant: Tenant | None):
    if tenant is None or tenant.group is ANONYMOUS:
        return None
    return LoggedCaller(tenant.org_name or "-", tenant.member)


def _json(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def too_many_requests(decision: ratelimit.Decision) -> Refusal:
    return Refusal("429 Too Many Requests", decision.headers, _json(error_body("rate_limit_exceeded")))


def overloaded(waited: float, queue_timeout: float) -> Refusal:
    retry = max(1, math.ceil(queue_timeout))
    message = (f"The server is overloaded: the request waited {waited:.1f} s for a worker and was not executed;"
               f" try again shortly.")
    body = error_body("service_unavailable", message)
    return Refusal("503 Service Unavailable", (("Retry-After", str(retry)),), _json(body))


class WithheldBody(io.RawIOBase):
    """The ``wsgi.input`` of a request whose body was not read: reading it is a
    400, never an empty body (a view that got this far must not act on ``{}``)."""

    def readable(self):
        return True

    def readinto(self, buffer):
        raise ClientDisconnected("The request's body was not read.")


class KeyCheck:
    """A worker thread's look-up of a bearer token that this process does not know
    yet, for a request whose body waits unread (Admission.at_head: CHECK_KEY).
    Queued fairly (as the tenant of an unknown key: its client address), never
    shed; the verdict goes back to the event loop (``PodsChannel.key_checked``)."""

    def __init__(self, channel, request):
        self.channel = channel
        self.request = request
        self.tenant = request.tenant
        self.since = time.monotonic()

    def service(self):
        admission = self.channel.server.admission
        try:
            tenant = admission.lookup(self.request.key_hash)
        except Exception:  # the database is not answering: the app says so, without the body
            tenant = None
        self.channel.server.trigger.pull_trigger(lambda: self.channel.key_checked(self.request, tenant))

    def cancel(self):
        pass
