"""Single Decide and Feedback calls that reach the event loop together go to the engine
together.

Each call waits for the WAL's group commit that covers its record. Submitted one by one
from the event loop, every call would be a lone writer: the WAL would sync for each,
and each sync costs a hand-off between the flusher thread and the loop. Instead a call
joins its capsule's queue, and once per loop iteration the queues are drained, one
``decide_many_async`` (or ``feedback_many_async``) per capsule: one lock hold, one
commit, one wake-up for everything that arrived meanwhile. No timer is involved, so a
lone call is not delayed; under load the batches grow by themselves (as calls keep
arriving while a commit is in flight).
"""

from __future__ import annotations

import asyncio
from typing import Any


class Coalescer:
    """Queues calls of one kind (``method``: the capsule's batch coroutine's name, e.g.
    ``"decide_many_async"``) and runs each capsule's queue as one batch."""

    def __init__(self, method: str):
        self._method = method
        self._queues: dict[str, tuple[Any, list[dict], list[asyncio.Future]]] = {}
        self._scheduled = False
        self._running: set[asyncio.Task] = set()

    def submit(self, capsule, arguments: dict) -> asyncio.Future:
        """A future for the outcome of one call (its result, or the engine's error)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        queue = self._queues.get(capsule.name)
        if queue is None or queue[0] is not capsule:   # reinstalled meanwhile: a queue of its own
            if queue is not None:
                self._start(loop, queue)
            queue = self._queues[capsule.name] = (capsule, [], [])
        queue[1].append(arguments)
        queue[2].append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain, loop)
        return future

    def _drain(self, loop) -> None:
        self._scheduled = False
        queues, self._queues = self._queues, {}
        for queue in queues.values():
            self._start(loop, queue)

    def _start(self, loop, queue) -> None:
        task = loop.create_task(self._run(*queue))
        self._running.add(task)   # a task nobody references may be collected mid-flight
        task.add_done_callback(self._running.discard)

    async def _run(self, capsule, arguments: list[dict], futures: list[asyncio.Future]) -> None:
        try:
            outcomes = await getattr(capsule, self._method)(arguments)
        except BaseException as exc:   # the store failed: every call in the batch fails with it
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for future, outcome in zip(futures, outcomes):
            if future.done():          # its caller went away (cancelled)
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
