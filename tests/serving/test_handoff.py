"""Handing the interpreter lock to the event loop (serving/handoff.py): when a
worker waits for the loop, and for which of its turns."""

import threading
import time

from pods.serving.handoff import NEXT_REQUEST_SECONDS, SPACING, LoopHandoff
from pods.serving.scheduler import Tenant

from test_scheduler import Task, dispatcher


class Loop:
    """A stand-in for the event loop: ``turn()`` polls (recording how long it may
    block) and finishes, as PodsServer.run does around each poll."""

    def __init__(self):
        self.woken = 0
        self.timeouts = []
        self.handoff = LoopHandoff(self.wake, overdue=0.05, limit=2.0)

    def wake(self):
        self.woken += 1

    def turn(self, asked=0.0):
        self.timeouts.append(self.handoff.poll_timeout(1.0))
        self.handoff.turned(asked)


def in_thread(fn, *args) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


def waiting(loop: Loop) -> bool:
    deadline = time.monotonic() + 2
    while not loop.woken and time.monotonic() < deadline:
        time.sleep(0.001)
    return bool(loop.woken)


def test_a_worker_goes_on_at_once_while_the_loop_comes_round():
    loop = Loop()
    loop.turn()
    started = time.monotonic()
    loop.handoff.between_tasks(answered_last=False)
    assert time.monotonic() - started < 0.04
    assert loop.woken == 0 and loop.handoff.handoffs_total == 0
    assert loop.timeouts == [1.0]


def test_an_overdue_loop_is_woken_and_the_worker_waits_for_a_turn_that_polled_after():
    loop = Loop()
    loop.turn()
    time.sleep(0.06)  # the worker has been serving; the loop has not come round
    worker = in_thread(loop.handoff.between_tasks, False)
    assert waiting(loop)
    # The turn the loop was in when woken polled before: not enough.
    loop.handoff.turned(0.0)
    worker.join(0.1)
    assert worker.is_alive()
    # The next one polls without blocking, since a worker waits for it; then the worker goes on.
    loop.turn()
    worker.join(1)
    assert not worker.is_alive()
    assert loop.timeouts == [1.0, 0.0]
    assert loop.handoff.handoffs_total == 1
    # Once served, the loop blocks in its poll again as usual.
    loop.turn()
    assert loop.timeouts[-1] == 1.0


def test_after_a_tenant_answered_its_last_the_loop_is_woken_to_read_its_next_request():
    loop = Loop()
    loop.turn()
    # Just answered: its next request cannot be in yet; nothing to wake the loop for.
    loop.handoff.between_tasks(answered_last=True)
    assert loop.woken == 0
    time.sleep(NEXT_REQUEST_SECONDS * 5)  # one more request of the backlog served meanwhile
    worker = in_thread(loop.handoff.between_tasks, False)
    assert waiting(loop)
    loop.turn()
    worker.join(1)
    assert not worker.is_alive() and loop.handoff.handoffs_total == 1
    # The loop has come round since: no more waking for that answer.
    loop.handoff.between_tasks(answered_last=False)
    assert loop.handoff.handoffs_total == 1


def test_a_worker_waits_no_longer_than_the_limit_for_a_loop_that_does_not_turn():
    woken = []
    handoff = LoopHandoff(lambda: woken.append(1), overdue=0.0, limit=0.05)
    started = time.monotonic()
    handoff.between_tasks(answered_last=False)
    assert 0.04 <= time.monotonic() - started < 1.0
    assert woken == [1]
    # The loop's next turn does not block, for the worker that gave up; the ones after do,
    # as ever: an idle loop does not spin.
    timeouts = []
    for _ in range(3):
        timeouts.append(handoff.poll_timeout(1.0))
        handoff.turned(0.0)
    assert timeouts == [0.0, 1.0, 1.0]


def test_a_loop_whose_turns_cost_more_is_woken_less_often():
    loop = Loop()
    # Asking its connections what they wait for takes the loop 10 ms a turn (thousands
    # of idle connections): a worker lets it be for SPACING times that, overdue or not.
    for _ in range(50):
        loop.turn(asked=0.01)
    time.sleep(0.06)  # overdue (0.05 s) already
    loop.handoff.between_tasks(answered_last=False)
    assert loop.woken == 0
    time.sleep(SPACING * loop.handoff.ask_cost - 0.06)
    worker = in_thread(loop.handoff.between_tasks, False)
    assert waiting(loop)
    loop.turn(asked=0.01)
    worker.join(1)
    assert not worker.is_alive() and loop.handoff.handoffs_total == 1


def test_a_worker_does_not_wait_for_a_loop_that_is_gone():
    def closed_trigger():
        raise OSError(9, "Bad file descriptor")

    handoff = LoopHandoff(closed_trigger, overdue=0.0, limit=5.0)
    started = time.monotonic()
    handoff.between_tasks(answered_last=False)
    assert time.monotonic() - started < 1.0 and handoff.handoffs_total == 0


def test_the_dispatcher_says_whether_the_request_served_was_its_tenants_last_queued():
    log, calls, release = [], [], threading.Event()
    d = dispatcher()
    d.between_tasks = lambda answered_last: calls.append((list(log), answered_last))
    try:
        d.add_task(Task("blocker", Tenant("x", "x"), log, hold=release))
        time.sleep(0.1)
        for i in range(2):
            d.add_task(Task(f"flood-{i}", Tenant("noisy", "k"), log))
        d.add_task(Task("quiet", Tenant("quiet", "q"), log))  # new in turn: first
        release.set()
        deadline = time.monotonic() + 5
        while len(log) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log == ["blocker", "quiet", "flood-0", "flood-1"]
        # Asked only while something is queued: before each of the three queued ones.
        assert calls == [
            (["blocker"], True),  # x had nothing more queued
            (["blocker", "quiet"], True),  # neither had quiet
            (["blocker", "quiet", "flood-0"], False),  # the flood had flood-1 queued
        ]
    finally:
        d.shutdown(timeout=2)
