"""The dispatch deadline clock is one per event loop: loops in two threads keep their own deadlines."""
from __future__ import annotations

import asyncio
import threading
import time

from core.dispatch import _Clock, _Cut


def run_loop(results: dict, name: str, start: threading.Barrier) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        start.wait()
        clock = _Clock.of(loop)

        async def cut(seconds: float) -> float:
            began = time.monotonic()
            try:
                async with _Cut(loop.time() + seconds):
                    await asyncio.sleep(10)
            except TimeoutError:
                return time.monotonic() - began
            return -1.0

        waits = []
        for _ in range(5):        # one after the other, while the other thread's loop does the same
            waits += await asyncio.gather(cut(0.1), cut(0.2))
        results[name] = (waits, _Clock.of(loop) is clock)

    asyncio.run(main())


def test_two_loops_in_two_threads_each_keep_their_deadlines():
    results: dict = {}
    start = threading.Barrier(2)
    threads = [threading.Thread(target=run_loop, args=(results, name, start)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for name in ("a", "b"):
        waits, same_clock = results[name]
        assert same_clock, "a loop's clock was replaced by another loop's"
        assert all(0.05 < w < 0.6 for w in waits), waits


def test_a_closed_loop_and_its_clock_are_not_kept():
    import gc
    import weakref

    loop = asyncio.new_event_loop()
    _Clock.of(loop)
    gone = weakref.ref(loop)
    loop.close()
    asyncio.run(asyncio.sleep(0))           # another loop becomes the current one
    other = asyncio.new_event_loop()
    _Clock.of(other)
    other.close()
    del loop
    gc.collect()
    assert gone() is None
