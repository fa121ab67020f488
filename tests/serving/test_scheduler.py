"""Fair scheduling, deterministically: the order in which queued requests reach a
worker (``FairQueue``, ``FairDispatcher``) and whose each request is
(``Admission.at_head``), without a server or a clock to race."""

import collections
import threading
import time

import pytest

from pods.serving import ratelimit
from pods.serving.admission import CHECK_KEY, PROCEED, WITHHOLD, Admission
from pods.serving.scheduler import ANONYMOUS, FairDispatcher, FairQueue, Tenant, TenantMap


def drain(queue: FairQueue) -> list:
    out = []
    while len(queue):
        out.append(queue.pop())
    return out


def test_organizations_take_turns():
    q = FairQueue()
    for i in range(5):
        q.push("acme", "k1", ("acme", i))
    for i in range(5):
        q.push("globex", "g1", ("globex", i))
    order = drain(q)
    # globex had nothing queued when it came: its turn is next, then they alternate.
    assert [org for org, _ in order] == ["globex", "acme"] * 5
    # Each tenant's own requests keep their order.
    assert [i for org, i in order if org == "acme"] == list(range(5))


def test_within_an_organization_its_keys_take_turns():
    q = FairQueue()
    for i in range(4):
        q.push("acme", "agent-1", ("agent-1", i))
    for i in range(4):
        q.push("acme", "agent-2", ("agent-2", i))
    assert [key for key, _ in drain(q)] == ["agent-2", "agent-1"] * 4


@pytest.mark.parametrize("other_org", ["acme", "globex"])
def test_fifty_queued_by_one_key_delay_another_keys_request_by_about_one(other_org):
    q = FairQueue()
    for i in range(50):
        q.push("acme", "busy", ("busy", i))
    q.push(other_org, "quiet", ("quiet", 0))
    order = drain(q)
    assert order.index(("quiet", 0)) == 0  # it had nothing queued: next, after what is in service


def test_a_newcomer_waits_for_one_request_per_busy_tenant_at_most():
    q = FairQueue()
    busy = [("acme", "a"), ("acme", "b"), ("globex", "g"), (ANONYMOUS, "10.0.0.9")]
    for group, member in busy:
        for i in range(30):
            q.push(group, member, (member, i))
    for _ in range(7):  # some of the rotation already served
        q.pop()
    q.push("initech", "i", ("i", 0))
    q.push("acme", "c", ("c", 0))  # a key of a busy organization, with nothing queued
    order = drain(q)
    # Each had nothing queued: served next, before any backlog.
    assert order.index(("i", 0)) == 0
    assert order.index(("c", 0)) <= 2  # acme's turn comes after initech's, and its new key goes first in it
    # Those with a backlog still take turns: each of globex, acme and the anonymous group once a round.
    assert [member for member, _ in order[1:7]] == ["g", "c", "10.0.0.9", "g", "b", "10.0.0.9"]


def test_eight_keys_of_one_organization_get_together_what_one_key_of_another_gets():
    q = FairQueue()
    for i in range(40):
        q.push("acme", f"key-{i % 8}", "acme")
    for _ in range(40):
        q.push("globex", "only", "globex")
    first = [q.pop() for _ in range(40)]
    assert first.count("acme") == first.count("globex") == 20


def test_one_tenant_alone_is_served_in_order_with_nothing_in_between():
    q = FairQueue()
    for i in range(10):
        q.push("acme", "k", i)
    assert drain(q) == list(range(10))
    with pytest.raises(IndexError):
        q.pop()


def test_take_where_removes_the_matching_heads_and_keeps_the_rest_in_turn():
    q = FairQueue()
    for i in range(3):
        q.push("acme", "k", i)
    q.push("globex", "g", 10)
    assert q.take_where(lambda item: item < 2) == [0, 1]
    assert len(q) == 2 and drain(q) == [10, 2]


# -- whose a request is ----------------------------------------------------------------


class FakeRequest:
    """What Admission.at_head reads of a PodsRequestParser whose head is in."""

    key_hash = tenant = refusal = None
    rate_headers = ()

    def __init__(self, token=None, path="/agent/v0/pods", body=False, forwarded_for=None):
        self.path = path
        self.completed = not body
        self.headers = {}
        if token is not None:
            self.headers["AUTHORIZATION"] = f"Bearer {token}"
        if forwarded_for is not None:
            self.headers["X_FORWARDED_FOR"] = forwarded_for


@pytest.fixture
def admission():
    return Admission(app=None)


def known(admission, token, org_id, key_id, org_name="acme"):
    from pods.api.auth import hash_key

    admission.tenants.learn(hash_key(token), Tenant(org_id, key_id, org_name))


def test_a_known_key_is_its_organizations_and_its_own(admission):
    known(admission, "t-a1", 1, "a1")
    request = FakeRequest("t-a1")
    assert admission.at_head(request, "10.0.0.1") == PROCEED
    assert request.tenant[:2] == (1, "a1")


def test_unknown_keys_and_no_key_share_their_addresss_turn(admission):
    tenants = set()
    for token in ("guess-1", "guess-2", None, "guess-3"):
        request = FakeRequest(token)
        admission.at_head(request, "10.0.0.7")
        tenants.add(request.tenant)
    assert tenants == {Tenant(ANONYMOUS, "10.0.0.7")}
    other = FakeRequest("guess-1")
    admission.at_head(other, "10.0.0.8")
    assert other.tenant == Tenant(ANONYMOUS, "10.0.0.8")
    # In the queue: one turn per address, all of them inside one "organization".
    q = FairQueue()
    for i in range(10):
        q.push(ANONYMOUS, "10.0.0.7", "seven")
    q.push(ANONYMOUS, "10.0.0.8", "eight")
    q.push(1, "a1", "acme")
    assert drain(q)[:5] == ["acme", "eight", "seven", "seven", "seven"]


def test_the_address_is_the_one_the_access_log_shows(admission):
    import ipaddress

    admission.trusted_proxies = (ipaddress.ip_network("10.0.0.2/32"),)
    request = FakeRequest("guess", forwarded_for="203.0.113.5, 198.51.100.7")
    admission.at_head(request, "10.0.0.2")
    assert request.tenant == Tenant(ANONYMOUS, "198.51.100.7")
    spoofed = FakeRequest("guess", forwarded_for="198.51.100.7")
    admission.at_head(spoofed, "10.0.0.99")  # not the trusted proxy: its header is ignored
    assert spoofed.tenant == Tenant(ANONYMOUS, "10.0.0.99")


def test_a_body_is_read_only_for_a_key_that_may_need_it(admission):
    known(admission, "t-a1", 1, "a1")
    assert admission.at_head(FakeRequest("t-a1", body=True), "10.0.0.1") == PROCEED
    assert admission.at_head(FakeRequest(None, body=True), "10.0.0.1") == WITHHOLD
    assert admission.at_head(FakeRequest("who?", body=True), "10.0.0.1") == CHECK_KEY
    assert admission.at_head(FakeRequest(None, path="/healthz", body=True), "10.0.0.1") == PROCEED
    assert admission.at_head(FakeRequest(None), "10.0.0.1") == PROCEED  # no body: nothing to withhold


def test_the_tenant_map_learns_forgets_and_stays_bounded():
    tenants = TenantMap(size=8)
    for i in range(20):
        tenants.learn(f"h{i}", Tenant(1, f"k{i}"))
    assert len(tenants) <= 9 and tenants.get("h0") is None and tenants.get("h19") == Tenant(1, "k19")
    tenants.forget("h19")
    assert tenants.get("h19") is None


def test_a_token_in_use_stays_in_the_tenant_map_however_many_others_are_learned():
    """A client minting and deleting keys (each one learned) used to push every
    other key out, oldest first; one used meanwhile now stays."""
    tenants = TenantMap(size=16)
    tenants.learn("victim", Tenant(1, "v"))
    for i in range(1000):
        tenants.learn(f"churn-{i}", Tenant(2, f"c{i}"))
        if i % 8 == 0:  # used at least once a generation (8 tokens here)
            assert tenants.get("victim") == Tenant(1, "v")
    assert tenants.get("victim") == Tenant(1, "v") and len(tenants) <= 17
    for _ in range(3):  # a look for new keys reading the same keys again, many of them
        for i in range(990, 1000):
            tenants.add(f"churn-{i}", Tenant(2, f"c{i}"))
    assert tenants.get("victim") == Tenant(1, "v")
    for i in range(1000, 1020):  # not used for two generations: gone
        tenants.learn(f"churn-{i}", Tenant(2, f"c{i}"))
    assert tenants.get("victim") is None


def test_a_token_the_app_refused_is_forgotten_and_one_it_accepted_is_learned(admission):
    from pods.api.auth import hash_key
    from pods.api.permissions import Caller

    request = FakeRequest("t-new")
    admission.at_head(request, "10.0.0.1")
    assert request.tenant.group is ANONYMOUS
    caller = Caller(7, "globex", "g1", None, frozenset(), None, None)
    admission.learn(request, caller, "200 OK")
    assert admission.tenants.get(hash_key("t-new")) == Tenant(7, "g1", "globex")
    admission.learn(request, None, "401 UNAUTHORIZED")  # deleted meanwhile
    assert admission.tenants.get(hash_key("t-new")) is None


# -- the dispatcher: worker threads taking turns, and shedding ------------------------


class Task:
    def __init__(self, name, tenant, log, hold=None):
        self.name, self.tenant, self.log, self.hold = name, tenant, log, hold

    def service(self):
        if self.hold is not None:
            self.hold.wait(5)
        self.log.append(self.name)


def dispatcher(queue_timeout=60.0, shed=None, threads=1):
    d = FairDispatcher(lambda task: task.tenant, queue_timeout, shed or (lambda task, waited: None))
    d.set_thread_count(threads)
    return d


def test_worker_threads_serve_the_queue_in_turn():
    log, release = [], threading.Event()
    d = dispatcher()
    try:
        d.add_task(Task("blocker", Tenant("x", "x"), log, hold=release))
        time.sleep(0.1)  # the one thread is busy with it: the rest queue
        for i in range(4):
            d.add_task(Task(f"flood-{i}", Tenant("noisy", "k"), log))
        d.add_task(Task("quiet", Tenant("quiet", "q"), log))
        assert d.queue.depths() == {"noisy": 4, "quiet": 1}
        release.set()
        deadline = time.monotonic() + 5
        while len(log) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log == ["blocker", "quiet", "flood-0", "flood-1", "flood-2", "flood-3"]
        assert d.queued_total == 6
    finally:
        d.shutdown(timeout=2)


def test_a_task_that_waited_past_the_queue_timeout_is_shed_before_it_is_served():
    log, shed, release = [], [], threading.Event()
    d = dispatcher(queue_timeout=0.2, shed=lambda task, waited: shed.append((task.name, waited)))
    try:
        d.add_task(Task("blocker", Tenant("x", "x"), log, hold=release))
        time.sleep(0.05)
        d.add_task(Task("late", Tenant("a", "a"), log))
        d.add_task(Task("key check", Tenant("a", "a"), log), sheddable=False)
        time.sleep(0.4)
        release.set()
        deadline = time.monotonic() + 5
        while len(log) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        # The shed one is still serviced (it answers 503 without running the app).
        assert log == ["blocker", "late", "key check"]
        assert [name for name, _ in shed] == ["late"] and shed[0][1] > 0.2
        assert d.shed_total == 1
    finally:
        d.shutdown(timeout=2)


def test_the_event_loop_takes_what_waited_too_long_while_every_thread_is_busy():
    log, release = [], threading.Event()
    d = dispatcher(queue_timeout=0.1)
    try:
        d.add_task(Task("blocker", Tenant("x", "x"), log, hold=release))
        time.sleep(0.05)
        d.add_task(Task("old", Tenant("a", "a"), log))
        d.add_task(Task("check", Tenant("a", "a"), log), sheddable=False)
        time.sleep(0.2)
        d.add_task(Task("new", Tenant("b", "b"), log))
        taken = d.take_expired(time.monotonic())
        assert [task.name for task, _ in taken] == ["old"]
        assert d.queue.depths() == {"a": 1, "b": 1}
    finally:
        release.set()
        d.shutdown(timeout=2)



class Held:
    """Tasks that, once a thread takes them, stay in service until released."""

    def __init__(self):
        self.release, self.serving, self.lock = threading.Event(), collections.Counter(), threading.Lock()

    def task(self, name, tenant, log):
        held = self

        class Started(Task):
            def service(self):
                with held.lock:
                    held.serving[self.tenant] += 1
                super().service()

        return Started(name, tenant, log, hold=self.release)

    def settled(self, expected) -> bool:
        """Wait until the tasks in service per tenant are ``expected`` (a dict, or a
        test of one), and stay so: no thread takes another."""
        matches = expected if callable(expected) else expected.__eq__
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self.lock:
                serving = dict(self.serving)
            if matches(serving):
                time.sleep(0.1)
                with self.lock:
                    return dict(self.serving) == serving
            time.sleep(0.01)
        return False


QUIET, NOISY = Tenant("quiet", "q"), Tenant("noisy", "k")


def test_a_tenant_alone_holds_every_thread():
    log, held = [], Held()
    d = dispatcher(threads=4)
    try:
        for i in range(8):
            d.add_task(held.task(f"flood-{i}", NOISY, log))
        assert held.settled({NOISY: 4})
        assert len(d.queue) == 4
    finally:
        held.release.set()
        d.shutdown(timeout=2)


def test_while_another_tenant_is_in_service_a_flood_holds_one_thread():
    """Two active tenants share two threads, one each (ceil(min(4, 2) / 2)): the
    flood holds one thread while the quiet tenant's request runs, two waiting,
    and all four once the quiet tenant is answered and its linger is over."""
    log, held, quiet_release = [], Held(), threading.Event()
    d = dispatcher(threads=4)
    d.linger = 0
    try:
        d.add_task(Task("quiet", QUIET, log, hold=quiet_release))
        time.sleep(0.05)
        for i in range(8):
            d.add_task(held.task(f"flood-{i}", NOISY, log))
        assert held.settled({NOISY: 1})
        assert len(d.queue) == 7
        quiet_release.set()
        assert held.settled({NOISY: 4})
        assert log == ["quiet"]
    finally:
        quiet_release.set()
        held.release.set()
        d.shutdown(timeout=2)


def test_keys_of_one_organization_share_its_threads_the_same_way():
    log, held, quiet_release = [], Held(), threading.Event()
    d = dispatcher(threads=4)
    same_org = Tenant("quiet", "noisy key")
    try:
        d.add_task(Task("quiet", QUIET, log, hold=quiet_release))
        time.sleep(0.05)
        for i in range(8):
            d.add_task(held.task(f"flood-{i}", same_org, log))
        assert held.settled({same_org: 1})
    finally:
        quiet_release.set()
        held.release.set()
        d.shutdown(timeout=2)


def served(log, count) -> bool:
    deadline = time.monotonic() + 5
    while len(log) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(log) >= count


def one_request_then_a_flood(d, first: Tenant, flood: Tenant, log, held) -> None:
    """``first``'s request, answered; then eight of ``flood``'s, held in service."""
    d.add_task(Task("first", first, log))
    assert served(log, 1)
    for i in range(8):
        d.add_task(held.task(f"flood-{i}", flood, log))


@pytest.mark.parametrize("level", ["organization", "key"])
def test_a_tenant_answered_a_moment_ago_still_holds_a_flood_to_its_share(level):
    """Between a quiet tenant's requests (its client reading the answer, sending
    the next) a flood is held to its share for ``linger`` seconds, not let back
    into every thread; once the linger is over, it has them all."""
    log, held = [], Held()
    now = [time.monotonic()]
    d = dispatcher(threads=4)
    d.clock = lambda: now[0]
    noisy = NOISY if level == "organization" else Tenant(QUIET.group, "noisy key")
    try:
        one_request_then_a_flood(d, QUIET, noisy, log, held)
        assert held.settled({noisy: 1})
        now[0] += d.linger  # its linger is over: the next request queued finds every share free
        d.add_task(held.task("flood-8", noisy, log))
        assert held.settled({noisy: 4})
    finally:
        held.release.set()
        d.shutdown(timeout=2)


def test_when_a_linger_ends_the_threads_it_held_back_take_the_queue_with_nothing_else_happening():
    """No request ends and none arrives: the flood still has every thread once the
    quiet tenant's linger is over (they waited for the next event before, idle
    while the flood's requests queued, for as long as its one request ran)."""
    log, held = [], Held()
    d = dispatcher(threads=4)
    d.linger = 1.0
    try:
        one_request_then_a_flood(d, QUIET, NOISY, log, held)
        assert held.settled({NOISY: 1})  # within the linger (settled looks 0.1 s on)
        assert held.settled({NOISY: 4})
    finally:
        held.release.set()
        d.shutdown(timeout=2)


def test_a_tenant_alone_is_not_held_back_by_its_own_linger():
    log, held = [], Held()
    d = dispatcher(threads=4)
    d.linger = 60.0
    try:
        one_request_then_a_flood(d, NOISY, NOISY, log, held)
        assert held.settled({NOISY: 4})
    finally:
        held.release.set()
        d.shutdown(timeout=2)


def test_tenants_whose_linger_is_over_are_forgotten():
    log = []
    now = [0.0]
    d = dispatcher(threads=2)  # (with one thread, a share is that thread: nothing lingers)
    d.clock = lambda: now[0]
    try:
        for i in range(50):  # one request at a time: nothing else looks at the lingering tenants
            now[0] += d.linger / 2
            d.add_task(Task(f"org {i}", Tenant(f"org {i}", "k"), log))
            assert served(log, i + 1)
        assert 1 <= sum(map(len, d._recent.values())) <= 4
    finally:
        d.shutdown(timeout=2)


def test_floods_get_one_thread_each():
    """Two tenants with backlogs run one request each (ceil(min(4, 2) / 2)), and so
    do three (a share is at least one thread): beside each of them, one or two of
    the others', not three."""
    for tenants in ([NOISY, Tenant("other", "o")], [Tenant(f"org {i}", "k") for i in range(3)]):
        log, held = [], Held()
        d = dispatcher(threads=0)
        try:
            for i in range(6):
                for tenant in tenants:
                    d.add_task(held.task(f"{tenant.group}-{i}", tenant, log))
            d.set_thread_count(4)  # the backlogs are all there when the threads start
            assert held.settled({tenant: 1 for tenant in tenants})
        finally:
            held.release.set()
            d.shutdown(timeout=2)


# -- rate limits: the buckets alone --------------------------------------------------


@pytest.mark.parametrize("text, per_second", [("10/s", 10.0), ("600/min", 10.0), ("0.5/s", 0.5), ("1/min", 1 / 60)])
def test_rates_are_n_per_second_or_per_minute(text, per_second):
    assert ratelimit.parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["10", "10/h", "-1/s", "0/s", "ten/s", "1e3/s", "10 /s", ""])
def test_anything_else_is_not_a_rate(text):
    with pytest.raises(ValueError):
        ratelimit.parse_rate(text)


@pytest.mark.parametrize("text, burst", [("5/s", 5), ("2.5/s", 2), ("30/min", 1), ("600/min", 10)])
def test_the_burst_is_one_seconds_worth_at_least_one(text, burst):
    assert ratelimit.Limit.of(text).burst == burst
    assert ratelimit.Limit.of(text, 42).burst == 42


def test_a_bucket_serves_its_burst_then_refuses_until_a_token_is_back():
    buckets = ratelimit.SharedBuckets(slots=64)
    limit = ratelimit.Limit(rate=5.0, burst=5)
    ident = ratelimit.ident_of("org", 1)
    t0 = 1000.0
    answers = [buckets.take([(ident, limit)], t0) for _ in range(6)]
    assert [a.allowed for a in answers] == [True] * 5 + [False]
    assert dict(answers[0].headers) == {"RateLimit-Limit": "5", "RateLimit-Remaining": "4", "RateLimit-Reset": "1"}
    refused = dict(answers[5].headers)
    assert refused["RateLimit-Remaining"] == "0"
    assert refused["Retry-After"] == "1" and refused["Retry-After-Ms"] == "200"
    # Waiting exactly Retry-After-Ms is enough; a moment less is not.
    assert not buckets.take([(ident, limit)], t0 + 0.199).allowed
    assert buckets.take([(ident, limit)], t0 + 0.200).allowed


def test_a_request_must_pass_both_limits_and_a_refusal_takes_nothing():
    buckets = ratelimit.SharedBuckets(slots=64)
    org, key = ratelimit.Limit(10.0, 10), ratelimit.Limit(1.0, 2)
    org_id, k1, k2 = ratelimit.ident_of("org", 1), ratelimit.ident_of("key", "k1"), ratelimit.ident_of("key", "k2")
    t0 = 50.0
    assert [buckets.take([(org_id, org), (k1, key)], t0).allowed for _ in range(3)] == [True, True, False]
    # k1's refusal took nothing from the organization: k2 has the other 8.
    assert [buckets.take([(org_id, org), (k2, key)], t0).allowed for _ in range(3)] == [True, True, False]
    decision = buckets.take([(org_id, org), (k1, key)], t0)
    assert dict(decision.headers)["RateLimit-Limit"] == "2"  # the key's limit is nearer to refusing
    assert dict(decision.headers)["Retry-After"] == "1"


def test_buckets_are_shared_with_forked_processes():
    import os

    buckets = ratelimit.SharedBuckets(slots=64)
    limit = ratelimit.Limit(rate=0.001, burst=10)
    ident = ratelimit.ident_of("org", 9)
    pid = os.fork()
    if pid == 0:
        try:
            for _ in range(7):
                buckets.take([(ident, limit)])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert [buckets.take([(ident, limit)]).allowed for _ in range(4)] == [True, True, True, False]


def test_a_full_table_reuses_the_fullest_bucket():
    buckets = ratelimit.SharedBuckets(slots=8)  # one probe window: eight buckets at most
    limit = ratelimit.Limit(rate=1.0, burst=3)
    t0 = 10.0
    for i in range(8):
        buckets.take([(ratelimit.ident_of("addr", i), limit)], t0)
    drained = ratelimit.ident_of("addr", 0)
    buckets.take([(drained, limit)], t0)
    buckets.take([(drained, limit)], t0)  # address 0: empty now
    assert all(buckets.take([(ratelimit.ident_of("addr", 100 + i), limit)], t0).allowed for i in range(7))
    assert not buckets.take([(drained, limit)], t0).allowed  # still there, still empty
