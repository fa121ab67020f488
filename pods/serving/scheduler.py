"""Fair scheduling: requests waiting for a worker thread are served round-robin
across organizations, and within an organization round-robin across its keys.
Requests with no key, or a key this process does not know, are one more
"organization" of their own, split by client address.

waitress hands each request that is ready to a FIFO queue in front of its worker
threads (``ThreadedTaskDispatcher``): one client with 64 connections then has 64
requests queued ahead of everyone else's one. ``FairDispatcher`` replaces that
queue with ``FairQueue``, which gives each tenant a turn in rotation, so that a
request waits for at most about one request of each other busy tenant (one from
a tenant that had nothing queued goes first, and waits for what is in service),
and a tenant alone has every thread (nothing waits for an idle share).

A request's tenant is known from its headers without a database read: a bounded
map (``TenantMap``) from the hash of a bearer token to the key and organization
that token authenticated last (filled by successful authentications, emptied of
a token the app refused). It decides where a request queues and which rate
limits count it, never what the request may do: the app authenticates every
request as before.
"""

import collections
import logging
import threading
import time
from typing import Callable, NamedTuple

from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger("pods.server")

TENANT_MAP_SIZE = 16384  # tokens remembered per process (about 4 MiB when full)
ANONYMOUS = None  # the group of requests with no key or an unknown one: one "organization"


# While two tenants or more are active, the threads they share out: one each for two
# (a quiet tenant's request runs beside one of a flood's, not three), at least one
# each for more. A tenant alone has every thread.
CONTENDED_THREADS = 2
# How long a tenant counts as active after its last request was answered: longer
# than a client takes to send its next one, so that a flood stays held to its share
# between a neighbour's requests.
LINGER_SECONDS = 0.02


def _share(threads: int, tenants: int) -> int:
    """Each of ``tenants`` active tenants' share of ``threads``: all of them alone,
    else ceil(min(threads, CONTENDED_THREADS) / tenants)."""
    if tenants <= 1:
        return threads
    return -(-min(threads, CONTENDED_THREADS) // tenants)


class Tenant(NamedTuple):
    """Whose a request is: ``group`` (an organization's id, or ANONYMOUS) and
    ``member`` (the key's id, or the client's address)."""

    group: object
    member: str
    org_name: str | None = None  # for the access line of a refused request


class TenantMap:
    """Token hash -> the Tenant of the key it authenticated last; bounded to about
    ``size`` tokens in two generations: tokens are learned into the newer, and one
    found in the older moves to the newer; once the newer holds half of ``size``,
    it becomes the older and the older is dropped. So a token in use (once per
    generation) stays however many others are learned: a client minting and
    deleting keys cannot push out the keys of everyone else, as it could when the
    oldest entry went first. Read by the event loop without a lock; written under
    one."""

    def __init__(self, size: int = TENANT_MAP_SIZE):
        self.size = size
        self._newer: dict[str, Tenant] = {}
        self._older: dict[str, Tenant] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Tenant | None:
        tenant = self._newer.get(key_hash)
        if tenant is None:
            tenant = self._older.get(key_hash)
            if tenant is not None:  # in use: kept (once a generation, so rarely)
                self.learn(key_hash, tenant)
        return tenant

    def learn(self, key_hash: str, tenant: Tenant) -> None:
        if self._newer.get(key_hash) == tenant:
            return
        with self._lock:
            self._newer[key_hash] = tenant
            self._older.pop(key_hash, None)
            if len(self._newer) > self.size // 2:
                self._older, self._newer = self._newer, {}

    def add(self, key_hash: str, tenant: Tenant) -> None:
        """Learn ``key_hash`` unless it is known already (in either generation): what
        a look for new keys reads again (a look held back by a key's writer reads the
        same keys again) neither moves nor pushes out anything."""
        if key_hash not in self._newer and key_hash not in self._older:
            self.learn(key_hash, tenant)

    def forget(self, key_hash: str) -> None:
        if key_hash in self._newer or key_hash in self._older:
            with self._lock:
                self._newer.pop(key_hash, None)
                self._older.pop(key_hash, None)

    def __len__(self) -> int:
        return len(self._newer) + len(self._older)


class FairQueue:
    """Two-level round robin: groups take turns, and within a group its members do;
    each member's items are served in the order they came. A group (or member) that
    had nothing queued joins at the head of the turn, not its tail, as a new flow
    does in FQ-CoDel: a tenant that sends one request at a time is served next,
    waiting only for what is in service, while one that keeps a backlog gets its
    turn after every other; a tenant's share is unchanged, since it is new only
    when it had nothing waiting. Not thread-safe: the dispatcher holds its lock
    around every call."""

    def __init__(self):
        # group -> {member -> deque of items}; both in turn order (next first).
        self._groups: collections.OrderedDict = collections.OrderedDict()
        # Items queued, as len() says; read as an attribute where every request passes
        # (len() of a Python class is a call).
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def push(self, group, member, item) -> None:
        groups = self._groups
        members = groups.get(group)
        if members is None:
            members = groups[group] = collections.OrderedDict()
            groups.move_to_end(group, last=False)  # had nothing waiting: next in turn
        items = members.get(member)
        if items is None:
            items = members[member] = collections.deque()
            members.move_to_end(member, last=False)
        items.append(item)
        self.length += 1

    def pop(self):
        """The next item in turn. :raise IndexError: empty."""
        if not self.length:
            raise IndexError("pop from an empty FairQueue")
        group = next(iter(self._groups))
        return self.pop_from(group, next(iter(self._groups[group])))

    def queued(self, tenant) -> bool:
        """Whether ``tenant`` (a group, member pair) has items queued. Safe to call
        without the lock, as a hint: one dict lookup, then one membership test."""
        members = self._groups.get(tenant[0])
        return members is not None and tenant[1] in members

    def next_allowed(self, allowed):
        """(group, member) of the next item in turn for which ``allowed(group,
        member)`` holds, or None."""
        for group, members in self._groups.items():
            for member in members:
                if allowed(group, member):
                    return group, member
        return None

    def groups(self):
        """The groups with items queued."""
        return self._groups.keys()

    def members(self, group):
        """The members of ``group`` with items queued."""
        members = self._groups.get(group)
        return members.keys() if members is not None else ()

    def pop_from(self, group, member):
        """The next item of ``member`` of ``group``, which has one; both then go to
        the back of their turn (or leave it, when that was their last)."""
        groups = self._groups
        members = groups[group]
        items = members[member]
        item = items.popleft()
        if items:
            members.move_to_end(member)
        else:
            del members[member]
        if members:
            groups.move_to_end(group)
        else:
            del groups[group]
        self.length -= 1
        return item

    def take_where(self, predicate) -> list:
        """Remove and return, oldest first per member, the items at the head of each
        member's queue for which ``predicate(item)`` holds (and those behind them
        while it keeps holding)."""
        taken = []
        for group in list(self._groups):
            members = self._groups[group]
            for member in list(members):
                items = members[member]
                while items and predicate(items[0]):
                    taken.append(items.popleft())
                if not items:
                    del members[member]
            if not members:
                del self._groups[group]
        self.length -= len(taken)
        return taken

    def depths(self) -> dict:
        """Items queued per group (for tests and metrics)."""
        return {group: sum(map(len, members.values())) for group, members in self._groups.items()}


# What the queue holds: (time.monotonic() when queued, the task: a channel with a
# request to serve or a job with ``service()``, whether it may be shed).
SINCE, TASK, SHEDDABLE = range(3)
# waitress logs "Task queue depth is N" for every request queued; a record per
# request costs more than scheduling it. Here at most one a second, with the peak
# depth since the last, and only once that is this deep (QueueDepthSummary, which
# the serving log filters these through, says at most one line a minute).
QUEUE_LOG_MIN_DEPTH = 10
QUEUE_LOG_SECONDS = 1.0


class FairDispatcher(ThreadedTaskDispatcher):
    """waitress's task dispatcher (its worker threads) with ``FairQueue`` in place
    of its FIFO queue, and shedding: an item that waited longer than
    ``queue_timeout`` is marked shed (``shed(task, waited)``) before it is served,
    so that it is answered 503 without being executed.

    ``tenant_of(task)`` names the tenant of each task added. Counters for
    metrics: ``queued_total``, ``wait_seconds_total`` (summed over every item a
    worker took), ``shed_total``; ``len(queue)`` is the current depth.
    """

    def __init__(self, tenant_of, queue_timeout: float, shed):
        super().__init__()
        self.queue = FairQueue()
        self.tenant_of = tenant_of
        self.queue_timeout = queue_timeout
        self.shed = shed
        self.queued_total = 0
        self.wait_seconds_total = 0.0
        self.shed_total = 0
        self._peak_waiting = 0
        self._next_queue_log = 0.0
        # group -> {member -> threads serving its requests now}
        self._held: dict = {}
        self._held_back = False  # a thread waits while requests are queued: shares hold them
        # group -> {member -> time.monotonic() until which it counts as active}: tenants
        # with nothing in service or queued that had a request answered a moment ago.
        self._recent: dict = {}
        self._forget_at = 0.0  # when _release next drops those whose linger ran out
        self.linger = LINGER_SECONDS
        self.clock = time.monotonic  # for the linger (tests move it)
        # Called by a thread about to take the next request while others are queued
        # (the server's handoff.LoopHandoff.between_tasks), or None.
        self.between_tasks: Callable[[bool], None] | None = None

    def add_task(self, task, sheddable: bool = True):
        tenant = self.tenant_of(task)
        now = time.monotonic()
        with self.lock:
            queue = self.queue
            queue.push(tenant.group, tenant.member, (now, task, sheddable))
            self.queued_total += 1
            idle = len(self.threads) - self.stop_count - self.active_count
            if idle > 0:  # a thread waits: wake one (a busy one takes the next item itself)
                if not self._held_back:
                    self.queue_cv.notify()
                elif self._next() is not None:
                    # Threads wait while shares hold back what is queued, and a share is
                    # free again (a linger ran out): wake them all, as _release does.
                    # While none is, waking them would only have them wait again.
                    self._held_back = False
                    self.queue_cv.notify(min(idle, queue.length))
            waiting = queue.length - idle
        if waiting > self._peak_waiting:
            self._peak_waiting = waiting
        if self._peak_waiting >= QUEUE_LOG_MIN_DEPTH and now >= self._next_queue_log:
            self.queue_logger.warning("Task queue depth is %d", self._peak_waiting)
            self._next_queue_log, self._peak_waiting = now + QUEUE_LOG_SECONDS, 0

    def _next(self):
        """(group, member) of the next item a free thread may take, or None.

        A tenant alone has every thread. While another is active (has a request
        waiting or in service, or had one answered less than ``linger`` seconds
        ago), the tenants share ``CONTENDED_THREADS`` threads (or every thread, if
        fewer): each holds at most ceil(those / active tenants), at least one, at
        each level (organizations, then keys within one). Python runs one thread at
        a time, so each request running beside another's stretches it: a quiet
        tenant's request runs beside one of a flood's, not three. Lingering keeps
        the flood held to its share between a neighbour's requests, which it would
        otherwise fill every thread in. A share never leaves a thread idle while
        nothing is in service."""
        queue, held = self.queue, self._held
        if not queue.length:
            return None
        if not held:  # every share free: the next in turn (one thread, always)
            group = next(iter(queue.groups()))
            return group, next(iter(queue.members(group)))
        recent = self._recent
        if recent:
            self._forget_idle(self.clock())
        threads = len(self.threads) - self.stop_count
        queued = queue.groups()
        groups = len(queued) + sum(1 for g in held if g not in queued)
        groups += sum(1 for g in recent if g not in queued and g not in held)
        group_share = _share(threads, groups)

        def allowed(group, member):
            members = held.get(group)
            if members is None:
                return True
            if sum(members.values()) >= group_share:
                return False
            waiting = queue.members(group)
            tenants = len(waiting) + sum(1 for m in members if m not in waiting)
            lingering = recent.get(group)
            if lingering:
                tenants += sum(1 for m in lingering if m not in waiting and m not in members)
            return members.get(member, 0) < _share(group_share, tenants)

        return queue.next_allowed(allowed)

    def _linger_left(self) -> float | None:
        """Seconds until the first linger ends (None: none is running; lock held)."""
        ends = [until for members in self._recent.values() for until in members.values()]
        return max(0.0, min(ends) - self.clock()) + 0.001 if ends else None

    def _forget_idle(self, now: float) -> None:
        """Drop the tenants whose linger has run out (lock held)."""
        recent = self._recent
        for group in list(recent):
            members = recent[group]
            for member in [m for m, until in members.items() if until <= now]:
                del members[member]
            if not members:
                del recent[group]

    def _release(self, group, member) -> None:
        """A thread is done with a request of ``member`` of ``group`` (lock held)."""
        members = self._held[group]
        members[member] -= 1
        if not members[member]:
            del members[member]
            if not members:
                del self._held[group]
            if self.linger > 0 and len(self.threads) > 1:  # it stays active a little longer: see _next
                now = self.clock()
                self._recent.setdefault(group, {})[member] = now + self.linger
                if now >= self._forget_at:  # bounded while nothing else calls _forget_idle
                    self._forget_idle(now)
                    self._forget_at = now + self.linger
        if self._held_back:
            # Requests a share held back may now be taken: wake the threads that
            # waited while they were.
            self._held_back = False
            idle = len(self.threads) - self.stop_count - self.active_count
            if self.queue.length and idle > 0:
                self.queue_cv.notify(min(idle, self.queue.length))

    def handler_thread(self, thread_no):
        lock, queue, timeout, held = self.lock, self.queue, self.queue_timeout, self._held
        done = None  # (group, member) of the request this thread served last
        while True:
            if queue.length and self.between_tasks is not None:  # unlocked: hints
                self.between_tasks(done is not None and not queue.queued(done))
            with lock:
                if done is not None:  # under the lock taken for the next one anyway
                    self._release(*done)
                    done = None
                while (turn := self._next()) is None and self.stop_count == 0:
                    wait = None
                    if queue.length:
                        self._held_back = True
                        # Held back by a share that a linger keeps: it ends without any
                        # request ending or arriving, so wake then, not at the next one.
                        wait = self._linger_left()
                    self.active_count -= 1
                    self.queue_cv.wait(wait)
                    self.active_count += 1
                if self.stop_count > 0:
                    self.active_count -= 1
                    self.stop_count -= 1
                    self.threads.discard(thread_no)
                    self.thread_exit_cv.notify()
                    break
                group, member = done = turn
                since, task, sheddable = queue.pop_from(group, member)
                members = held.setdefault(group, {})
                members[member] = members.get(member, 0) + 1
                waited = time.monotonic() - since
                self.wait_seconds_total += waited
                shed = sheddable and waited > timeout
                if shed:
                    self.shed_total += 1
            try:
                if shed:
                    self.shed(task, waited)
                task.service()
            except BaseException:
                self.logger.exception("Exception when servicing %r", task)

    def take_expired(self, now: float) -> list:
        """Remove the sheddable items that have waited past the queue timeout (the
        event loop answers them when every thread is busy for that long);
        returns (task, waited) pairs."""
        limit = now - self.queue_timeout
        with self.lock:
            if not self.queue:
                return []
            items = self.queue.take_where(lambda item: item[SHEDDABLE] and item[SINCE] < limit)
            self.shed_total += len(items)
            self.wait_seconds_total += sum(now - item[SINCE] for item in items)
        return [(item[TASK], now - item[SINCE]) for item in items]

    def shutdown(self, cancel_pending=True, timeout=5):
        self.set_thread_count(0)
        expiration = time.time() + timeout
        with self.lock:
            while self.threads:
                if time.time() >= expiration:
                    self.logger.warning("%d thread(s) still running", len(self.threads))
                    break
                self.thread_exit_cv.wait(0.1)
            if cancel_pending:
                pending = self.queue.take_where(lambda item: True)
                if pending:
                    self.logger.warning("Canceling %d pending task(s)", len(pending))
                for item in pending:
                    cancel = getattr(item[TASK], "cancel", None)
                    if cancel is not None:
                        cancel()
                self.queue_cv.notify_all()
                return True
        return False
