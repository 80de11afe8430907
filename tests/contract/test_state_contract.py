"""Job middleware state (SPEC 9) on every store: `conn.state`, run against SQLite, MySQL and Redis
(see conftest.py), and imported by tests/test_queue_state_local.py (the sync connection's
in-process state) and tests/test_redis_cluster.py.

`more_states()` opens another connection to the same store (its own pool or client), as another
worker process has: concurrency is checked across connections, not only across tasks.
"""
from __future__ import annotations

import asyncio
import contextlib

import pytest

from bootstrap.app import create_app

N = 20          # tasks racing for one limiter or lock
CONNECTIONS = 4


@pytest.fixture
def state(backend):
    return backend.conn.state


@pytest.fixture
async def more_states(backend):
    async with contextlib.AsyncExitStack() as stack:
        async def open_more(n: int) -> list:
            states = []
            for _ in range(n):
                app = await stack.enter_async_context(create_app())
                states.append((await app.queue.connection()).state)
            return states

        yield open_more


async def racing(states: list, n: int, call) -> list:
    """`call(state, i)` for i in range(n), all at once, spread over `states`."""
    return await asyncio.gather(*(call(states[i % len(states)], i) for i in range(n)))


# -- RateLimited: limit_hit ---------------------------------------------------------------------------------------


async def test_a_limiter_admits_allow_starts_then_says_how_long_to_wait(state):
    assert await state.limit_hit("api", 2, 1) == 0.0
    assert await state.limit_hit("api", 2, 1) == 0.0
    wait = await state.limit_hit("api", 2, 1)
    assert 0 < wait <= 1
    assert await state.limit_hit("other-api", 2, 1) == 0.0      # keys are independent
    await asyncio.sleep(wait + 0.05)
    assert await state.limit_hit("api", 2, 1) == 0.0             # the oldest start left the window


async def test_a_refused_start_is_not_counted(state):
    assert await state.limit_hit("solo", 1, 0.6) == 0.0
    first = await state.limit_hit("solo", 1, 0.6)
    second = await state.limit_hit("solo", 1, 0.6)
    assert 0 < second <= first <= 0.6                            # the same start holds the window
    await asyncio.sleep(second + 0.05)
    assert await state.limit_hit("solo", 1, 0.6) == 0.0
    assert await state.limit_hit("solo", 1, 0.6) > 0


async def test_the_window_slides(state):
    """At most `allow` starts in ANY window: a start late in one window still counts in the next."""
    assert await state.limit_hit("slide", 2, 1.5) == 0.0
    await asyncio.sleep(0.8)
    assert await state.limit_hit("slide", 2, 1.5) == 0.0
    wait = await state.limit_hit("slide", 2, 1.5)               # the first start is 0.8 s old
    assert 0 < wait <= 0.7 + 0.05
    await asyncio.sleep(wait + 0.05)
    assert await state.limit_hit("slide", 2, 1.5) == 0.0         # the first one left
    assert await state.limit_hit("slide", 2, 1.5) > 0            # the second one (0.8 s later) has not


async def test_racing_starts_never_pass_the_limit(state, more_states):
    states = [state, *await more_states(CONNECTIONS - 1)]
    waits = await racing(states, N, lambda s, i: s.limit_hit("race", 5, 60))
    assert sum(1 for w in waits if w == 0.0) == 5
    assert all(0 < w <= 60 for w in waits if w != 0.0)


# -- WithoutOverlapping: lock_acquire, lock_renew, lock_free ------------------------------------------------------


async def test_only_the_owner_holds_renews_and_frees_a_lock(state):
    assert await state.lock_acquire("device:1", "job-a:1", 30) is True
    assert await state.lock_acquire("device:1", "job-b:1", 30) is False
    assert await state.lock_acquire("device:1", "job-a:1", 30) is True      # its owner again: still its own
    assert await state.lock_acquire("device:2", "job-b:1", 30) is True      # another key
    assert await state.lock_renew([("device:1", "job-b:1")], 30) == [False]
    assert await state.lock_free("device:1", "job-b:1") is False
    assert await state.lock_acquire("device:1", "job-b:1", 30) is False     # nothing changed
    assert await state.lock_renew([("device:1", "job-a:1"), ("device:2", "job-b:1")], 30) == [True, True]
    assert await state.lock_free("device:1", "job-a:1") is True
    assert await state.lock_free("device:1", "job-a:1") is False
    assert await state.lock_acquire("device:1", "job-b:1", 30) is True


async def test_a_lapsed_lock_can_be_taken_and_its_old_owner_cannot_touch_it(state):
    assert await state.lock_acquire("lapse", "old", 0.5) is True
    assert await state.lock_acquire("lapse", "new", 30) is False
    await asyncio.sleep(0.8)
    assert await state.lock_renew([("lapse", "old")], 30) == [False]        # too late: it lapsed
    assert await state.lock_acquire("lapse", "new", 30) is True
    assert await state.lock_free("lapse", "old") is False
    assert await state.lock_acquire("lapse", "old", 30) is False            # still the new owner's


async def test_a_renewed_lock_outlives_its_first_ttl(state):
    assert await state.lock_acquire("long", "a", 2) is True
    await asyncio.sleep(1.2)
    assert await state.lock_renew([("long", "a")], 2) == [True]
    await asyncio.sleep(1.2)                                                # 2.4 s after it was taken
    assert await state.lock_acquire("long", "b", 30) is False


async def test_two_owners_never_both_hold_a_lock(state, more_states):
    states = [state, *await more_states(CONNECTIONS - 1)]
    taken = await racing(states, N, lambda s, i: s.lock_acquire("contested", f"owner-{i}", 30))
    assert taken.count(True) == 1
    winner = f"owner-{taken.index(True)}"
    freed = await racing(states, N, lambda s, i: s.lock_free("contested", f"owner-{i}"))
    assert [f"owner-{i}" for i, ok in enumerate(freed) if ok] == [winner]


# -- ThrottlesExceptions: throttle_open_for, throttle_failure, throttle_success ------------------------------------


async def test_a_circuit_opens_at_max_exceptions_and_a_success_closes_it(state):
    assert await state.throttle_open_for("vendor") == 0.0
    assert await state.throttle_failure("vendor", 3, 60) == 0.0
    assert await state.throttle_failure("vendor", 3, 60) == 0.0
    assert await state.throttle_open_for("vendor") == 0.0
    assert 59 < await state.throttle_failure("vendor", 3, 60) <= 60
    assert 58 < await state.throttle_open_for("vendor") <= 60
    assert await state.throttle_open_for("other-vendor") == 0.0
    await state.throttle_success("vendor")
    assert await state.throttle_open_for("vendor") == 0.0
    assert await state.throttle_failure("vendor", 3, 60) == 0.0               # counting starts again


async def test_a_circuit_closes_after_decay_and_the_next_failure_reopens_it(state):
    await state.throttle_failure("flaky", 2, 1)
    assert await state.throttle_failure("flaky", 2, 1) > 0
    await asyncio.sleep(1.2)
    assert await state.throttle_open_for("flaky") == 0.0                     # closed: jobs may run
    assert 0 < await state.throttle_failure("flaky", 2, 1) <= 1               # half-open: one failure reopens


async def test_failures_are_forgotten_decay_after_the_last(state):
    assert await state.throttle_failure("rare", 2, 0.3) == 0.0
    await asyncio.sleep(0.5)
    assert await state.throttle_failure("rare", 2, 0.3) == 0.0                # the first was forgotten


async def test_racing_failures_are_each_counted(state, more_states):
    states = [state, *await more_states(CONNECTIONS - 1)]
    open_for = await racing(states, 10, lambda s, i: s.throttle_failure("burst", 10, 60))
    assert sum(1 for f in open_for if f > 0) == 1                              # the tenth, whichever it was
    assert await state.throttle_open_for("burst") > 0
