"""The sync connection's middleware state (in this process): the store contract's cases, unchanged."""
from __future__ import annotations

import pytest

from core.queue.state import LocalState
from core.queue.sync import SyncQueue
from tests.contract.test_state_contract import (  # noqa: F401  (collected here, run on LocalState)
    test_a_circuit_closes_after_decay_and_the_next_failure_reopens_it,
    test_a_circuit_opens_at_max_exceptions_and_a_success_closes_it,
    test_a_lapsed_lock_can_be_taken_and_its_old_owner_cannot_touch_it,
    test_a_limiter_admits_allow_starts_then_says_how_long_to_wait, test_a_refused_start_is_not_counted,
    test_a_renewed_lock_outlives_its_first_ttl, test_failures_are_forgotten_decay_after_the_last,
    test_only_the_owner_holds_renews_and_frees_a_lock, test_racing_failures_are_each_counted,
    test_racing_starts_never_pass_the_limit, test_the_window_slides, test_two_owners_never_both_hold_a_lock)


@pytest.fixture
def state():
    return LocalState()


@pytest.fixture
def more_states(state):
    async def open_more(n: int) -> list:
        return [state] * n

    return open_more


def test_the_sync_connection_keeps_one_state_in_process():
    conn = SyncQueue(app=None)
    assert isinstance(conn.state, LocalState) and conn.state is conn.state
