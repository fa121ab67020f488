"""Rate limits: token buckets, one per organization, key or client address, kept
in memory that every worker process of one server shares, so that a limit holds
for the server as a whole whatever ``--workers`` says.

A bucket holds up to ``burst`` tokens and gains ``rate`` a second; a request
takes one from each bucket that applies (an organization's and, with a per-key
limit, its key's) or, when one of them has less than one, is refused, taking
nothing. The table is an anonymous shared mapping made before the workers are
forked (``SharedBuckets``), guarded by one process-shared lock; a decision is a
few reads and writes of it, with no system call but the lock's, and no database.

Several servers on one PostgreSQL database each keep their own table: each
enforces the whole limit on its own (see docs/fair-share.md for sizing).
"""

import ctypes
import dataclasses
import hashlib
import logging
import math
import mmap
import multiprocessing
import re
import time

log = logging.getLogger("pods.server")

RATE = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)/(s|min)")
SECONDS = {"s": 1.0, "min": 60.0}
# A request is allowed once its bucket holds this much; the margin absorbs float
# rounding, so that a client that waits exactly Retry-After-Ms is served.
WHOLE_TOKEN = 1.0 - 1e-9
SLOTS = 1 << 16  # buckets the table holds (2.5 MiB); a full one reuses the fullest
PROBE = 8  # slots looked at for one bucket
LOCK_WAIT = 1.0  # seconds; past it (a worker died holding the lock) requests go unlimited


def parse_rate(text: str) -> float:
    """``N/s`` or ``N/min`` (N a positive number) as requests per second.

    :raise ValueError: anything else.
    """
    m = RATE.fullmatch(text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate: write N/s or N/min, N a positive number (e.g. 10/s, 600/min)")
    return float(m.group(1)) / SECONDS[m.group(2)]


@dataclasses.dataclass(frozen=True)
class Limit:
    """One limit: ``rate`` requests a second, in bursts of up to ``burst``."""

    rate: float
    burst: int

    @classmethod
    def of(cls, rate_text: str, burst: int | None = None) -> "Limit":
        """From a flag's RATE text and its burst flag (None: one second's worth, at least 1)."""
        rate = parse_rate(rate_text)
        return cls(rate, burst if burst is not None else max(1, math.floor(rate + 1e-9)))


@dataclasses.dataclass(frozen=True)
class Limits:
    """The limits a server enforces (each None: off)."""

    org: Limit | None = None  # --rate-limit: per organization, all its keys together
    key: Limit | None = None  # --key-rate-limit: per key

    @property
    def anonymous(self) -> Limit | None:
        """Per client address, for requests with no key or an unknown one."""
        return self.org or self.key

    def __bool__(self) -> bool:
        return self.org is not None or self.key is not None


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the buckets said about one request."""

    allowed: bool
    headers: tuple  # RateLimit-* (and, refused, Retry-After, Retry-After-Ms)
    retry_after: float = 0.0  # seconds until it would be allowed (refused only)


class _Slot(ctypes.Structure):
    _fields_ = [
        ("ident", ctypes.c_uint64),  # 0: free
        ("tokens", ctypes.c_double),
        ("stamp", ctypes.c_double),  # time.monotonic() of ``tokens``: one clock for every process
        ("rate", ctypes.c_double),
        ("burst", ctypes.c_double),
    ]


def ident_of(kind: str, name) -> int:
    """A bucket's 64-bit name: ``kind`` ("org", "key", "addr") and its id."""
    digest = hashlib.blake2b(f"{kind}\x00{name}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class SharedBuckets:
    """Token buckets in memory shared with the processes forked after it is made."""

    def __init__(self, slots: int = SLOTS):
        self.size = slots
        self._memory = mmap.mmap(-1, ctypes.sizeof(_Slot) * slots)  # anonymous and MAP_SHARED
        self._slots = (_Slot * slots).from_buffer(self._memory)
        # fork: the semaphore is unlinked at once, so no resource tracker process is started.
        self._lock = multiprocessing.get_context("fork").Lock()
        self._lock_failures = 0

    def _slot(self, ident: int, limit: Limit, now: float) -> _Slot:
        """The slot of bucket ``ident``, refilled to ``now``; a new bucket starts full."""
        slots, size = self._slots, self.size
        start = ident % size
        victim, victim_score = slots[start], -1.0
        for i in range(PROBE):
            slot = slots[(start + i) % size]
            if slot.ident == ident:
                slot.tokens = min(slot.burst, slot.tokens + (now - slot.stamp) * slot.rate)
                slot.stamp = now
                return slot
            if slot.ident == 0:
                score = math.inf
            else:  # how full it would be now: a full bucket is as good as none
                score = (slot.tokens + (now - slot.stamp) * slot.rate) / slot.burst
            if score > victim_score:
                victim, victim_score = slot, score
        victim.ident, victim.tokens, victim.stamp = ident, float(limit.burst), now
        victim.rate, victim.burst = limit.rate, float(limit.burst)
        return victim

    def take(self, buckets: list[tuple[int, Limit]], now: float | None = None) -> Decision:
        """One request through every bucket of ``buckets`` ((ident, limit) pairs):
        allowed, taking a token from each, or refused, taking none."""
        now = time.monotonic() if now is None else now
        if not self._lock.acquire(timeout=LOCK_WAIT):
            self._lock_failures += 1
            if self._lock_failures == 1:
                log.error("rate limits are not enforced: their shared lock was not released (a worker died?)")
            return Decision(True, ())
        try:
            slots = [(self._slot(ident, limit, now), limit) for ident, limit in buckets]
            allowed = all(slot.tokens >= WHOLE_TOKEN for slot, _ in slots)
            if allowed:
                for slot, _ in slots:
                    slot.tokens = max(0.0, slot.tokens - 1.0)
            # The state each bucket is left in: (remaining, seconds to full, seconds to a token, limit).
            states = [(slot.tokens, (limit.burst - slot.tokens) / limit.rate,
                       max(0.0, (1.0 - slot.tokens) / limit.rate), limit) for slot, limit in slots]
        finally:
            self._lock.release()
        return decision(allowed, states)


def decision(allowed: bool, states: list) -> Decision:
    """The answer's headers, from the buckets' states: the bucket nearest to refusing
    (fewest whole tokens left; then the one slowest to refill) speaks for RateLimit-*."""
    remaining, to_full, _, limit = min(states, key=lambda s: (math.floor(s[0] + 1e-9), -s[1]))
    headers = [
        ("RateLimit-Limit", str(limit.burst)),
        ("RateLimit-Remaining", str(max(0, math.floor(remaining + 1e-9)))),
        ("RateLimit-Reset", str(max(0, math.ceil(to_full - 1e-9)))),
    ]
    if allowed:
        return Decision(True, tuple(headers))
    wait = max(s[2] for s in states)  # every bucket must have a token again
    headers += [("Retry-After", str(max(1, math.ceil(wait)))), ("Retry-After-Ms", str(max(1, math.ceil(wait * 1000))))]
    return Decision(False, tuple(headers), wait)
