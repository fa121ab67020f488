"""Fair scheduling: requests waiting for a worker thread are served round-robin
across organizations, and within an organization round-robin across its keys.
Requests with no key, or a key this process does not know, are one more
"organization" of their own, split by client address.

waitress hands each request that is ready to a FIFO queue in front of its worker
threads (``ThreadedTaskDispatcher``): one client with 64 connections then has 64
requests queued ahead of everyone else's one. ``FairDispatcher`` replaces that
queue with ``FairQueue``, which gives each tenant a turn in rotation, so that a
request waits for at most about one request of each other busy tenant, and a
tenant alone has every thread (nothing waits for an idle share).

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
from typing import NamedTuple

from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger("pods.server")

TENANT_MAP_SIZE = 16384  # tokens remembered per process (about 4 MiB when full)
ANONYMOUS = None  # the group of requests with no key or an unknown one: one "organization"


class Tenant(NamedTuple):
    """Whose a request is: ``group`` (an organization's id, or ANONYMOUS) and
    ``member`` (the key's id, or the client's address)."""

    group: object
    member: str
    org_name: str | None = None  # for the access line of a refused request


class TenantMap:
    """Token hash -> the Tenant of the key it authenticated last; bounded, the
    oldest entry going first. Read by the event loop without a lock; written
    by worker threads under one."""

    def __init__(self, size: int = TENANT_MAP_SIZE):
        self.size = size
        self._known: dict[str, Tenant] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Tenant | None:
        return self._known.get(key_hash)

    def learn(self, key_hash: str, tenant: Tenant) -> None:
        if self._known.get(key_hash) == tenant:
            return
        with self._lock:
            self._known[key_hash] = tenant
            while len(self._known) > self.size:
                del self._known[next(iter(self._known))]

    def forget(self, key_hash: str) -> None:
        if key_hash in self._known:
            with self._lock:
                self._known.pop(key_hash, None)

    def __len__(self) -> int:
        return len(self._known)


class FairQueue:
    """Two-level round robin: groups take turns, and within a group its members do;
    each member's items are served in the order they came. Not thread-safe: the
    dispatcher holds its lock around every call."""

    def __init__(self):
        # group -> {member -> deque of items}; both in turn order (next first).
        self._groups: collections.OrderedDict = collections.OrderedDict()
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def push(self, group, member, item) -> None:
        members = self._groups.get(group)
        if members is None:
            members = self._groups[group] = collections.OrderedDict()
        items = members.get(member)
        if items is None:
            items = members[member] = collections.deque()
        items.append(item)
        self._length += 1

    def pop(self):
        """The next item in turn. :raise IndexError: empty."""
        for group, members in self._groups.items():
            break
        else:
            raise IndexError("pop from an empty FairQueue")
        for member, items in members.items():
            break
        item = items.popleft()
        if items:
            members.move_to_end(member)
        else:
            del members[member]
        if members:
            self._groups.move_to_end(group)
        else:
            del self._groups[group]
        self._length -= 1
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
        self._length -= len(taken)
        return taken

    def depths(self) -> dict:
        """Items queued per group (for tests and metrics)."""
        return {group: sum(map(len, members.values())) for group, members in self._groups.items()}


class Queued(NamedTuple):
    since: float  # time.monotonic() when queued
    task: object  # a channel with a request to serve, or a job (``service()``)
    sheddable: bool


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

    def add_task(self, task, sheddable: bool = True):
        tenant = self.tenant_of(task)
        with self.lock:
            self.queue.push(tenant.group, tenant.member, Queued(time.monotonic(), task, sheddable))
            self.queued_total += 1
            self.queue_cv.notify()
            waiting = len(self.queue) - (len(self.threads) - self.stop_count - self.active_count)
        if waiting > 0:
            self.queue_logger.warning("Task queue depth is %d", waiting)

    def handler_thread(self, thread_no):
        while True:
            with self.lock:
                while not self.queue and self.stop_count == 0:
                    self.active_count -= 1
                    self.queue_cv.wait()
                    self.active_count += 1
                if self.stop_count > 0:
                    self.active_count -= 1
                    self.stop_count -= 1
                    self.threads.discard(thread_no)
                    self.thread_exit_cv.notify()
                    break
                item = self.queue.pop()
                waited = time.monotonic() - item.since
                self.wait_seconds_total += waited
                if item.sheddable and waited > self.queue_timeout:
                    self.shed_total += 1
                    shed = True
                else:
                    shed = False
            try:
                if shed:
                    self.shed(item.task, waited)
                item.task.service()
            except BaseException:
                self.logger.exception("Exception when servicing %r", item.task)

    def take_expired(self, now: float) -> list:
        """Remove the sheddable items that have waited past the queue timeout (the
        event loop answers them when every thread is busy for that long);
        returns (task, waited) pairs."""
        limit = now - self.queue_timeout
        with self.lock:
            items = self.queue.take_where(lambda item: item.sheddable and item.since < limit)
            self.shed_total += len(items)
            self.wait_seconds_total += sum(now - item.since for item in items)
        return [(item.task, now - item.since) for item in items]

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
                    cancel = getattr(item.task, "cancel", None)
                    if cancel is not None:
                        cancel()
                self.queue_cv.notify_all()
                return True
        return False
