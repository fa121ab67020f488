"""Handing the interpreter lock to the event loop.

Python runs one thread at a time. A worker thread serving a backlog gives up the
interpreter lock for every database call and every send, and takes it back
before the event loop, woken meanwhile, has been scheduled to take it; and a
thread that waits for the lock asks the holder to let go only once a whole
switch interval (5 ms) passes with no other thread having taken it. So while a
worker has requests queued, the event loop can wait for the lock until the
queue is empty: measured under a flood of 64 connections on one thread, a quiet
tenant's next request waited 10-20 ms to be read (its p99), every one of the
flood's 64 queued requests being served first, although it would then have gone
ahead of them all. ``sys.setswitchinterval`` changes nothing here.

``LoopHandoff`` lets a worker that has been busy while the loop did not come
round wake the loop and wait for it to finish a turn, which is when the loop
reads what arrived meanwhile. A turn costs the loop at least asking each of its
connections what it waits for (thousands of idle keep-alive connections make
that milliseconds), so workers hand over no more often than every
``SPACING`` such costs: at most a tenth or so of their time goes to waiting.
"""

import threading
import time

# A worker about to take another request waits for the event loop when the loop
# has not finished a turn for this long: about ten requests on one thread.
LOOP_OVERDUE_SECONDS = 0.002
# It waits at most this long (a loop slowed by something else does not hold the workers).
WAIT_LIMIT_SECONDS = 0.005
# A client that sends one request at a time sends its next this soon after its answer,
# if it is on the same host or network: then the loop is woken to read it.
NEXT_REQUEST_SECONDS = 0.0001
# And never sooner after the loop's last turn than this many times what a turn costs
# it before its poll (a waiting worker pays for two turns: the one the loop is in, the
# one after): 25 us with 64 connections, 1-2 ms with thousands of idle ones.
SPACING = 20
# How much each turn moves the cost kept (a moving average: one slow turn does not
# stop the handoffs, a loop that stays slow does).
COST_WEIGHT = 0.125


class LoopHandoff:
    """The event loop calls ``poll_timeout()`` before each poll and ``turned()``
    after handling what it returned; a worker calls ``between_tasks()`` before it
    takes another request from a non-empty queue. ``wake_loop`` makes the loop's
    poll return (waitress's trigger)."""

    def __init__(self, wake_loop, overdue: float = LOOP_OVERDUE_SECONDS, limit: float = WAIT_LIMIT_SECONDS):
        self.wake_loop = wake_loop
        self.overdue = overdue
        self.limit = limit
        self.turned_at = time.monotonic()
        self.handoffs_total = 0
        self._started = 0  # turns begun (polls)
        self._finished = 0  # the number of the latest turn finished while a worker wanted one
        self._wanted = 0  # the turn a waiting worker waits for (its poll does not block)
        self.ask_cost = 0.0  # seconds a turn takes before its poll, averaged
        self.answered_at = 0.0  # a tenant with nothing more queued was answered then
        self._turned = threading.Condition(threading.Lock())

    def poll_timeout(self, idle: float) -> float:
        """In the event loop, before its poll: how long the poll may block
        (``idle``, or not at all while a worker waits for this turn)."""
        self._started += 1
        return 0.0 if self._wanted > self._finished else idle

    def turned(self, asked: float) -> None:
        """In the event loop, after each turn, whose asking its connections what
        they wait for took ``asked`` seconds (cheap: a clock read and two sums)."""
        self.turned_at = time.monotonic()
        self.ask_cost += (asked - self.ask_cost) * COST_WEIGHT
        if self._wanted > self._finished:  # even if the worker gave up waiting: its poll blocks again
            with self._turned:
                self._finished = self._started
                self._turned.notify_all()

    def between_tasks(self, answered_last: bool) -> None:
        """In a worker, before it takes the next request (``answered_last``: the
        one it just served was its tenant's last queued). If the loop is overdue,
        or such a tenant was answered a moment ago and the loop has not turned
        since, wake the loop and wait (without the interpreter lock) until it has
        polled and handled what it found. Not the turn it may be in: that one
        polled before, and its poll may have returned long ago, the loop waiting
        for the lock since, without what arrived meanwhile."""
        now = time.monotonic()
        turned_at = self.turned_at
        if answered_last and self.answered_at <= turned_at:
            self.answered_at = now
        since = now - turned_at
        if since < SPACING * self.ask_cost:
            return
        if since < self.overdue and not (turned_at < self.answered_at <= now - NEXT_REQUEST_SECONDS):
            return
        with self._turned:
            target = self._wanted = self._started + 1
            try:
                self.wake_loop()
            except OSError:  # the loop is gone (shutdown closed its trigger): nothing to wait for
                return
            self.handoffs_total += 1
            self._turned.wait_for(lambda: self._finished >= target, self.limit)
