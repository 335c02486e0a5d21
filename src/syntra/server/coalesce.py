"""Single Decide and Feedback calls that reach the event loop together go to the engine
together.

Each call waits for the WAL's group commit that covers its record. Were each submitted
alone by the event loop, every call would be a lone writer with a commit, a task and a
cross-thread wake-up of its own. Instead a call joins its capsule's queue. A capsule has
at most one batch in the engine at a time: the queue is drained (one
``decide_many_async`` or ``feedback_many_async``: one lock hold, one commit wait) as soon
as the loop gets to it when nothing is in flight, else as soon as the batch in flight is
durable. Calls that arrive while a commit is being synced therefore share the next one.
No timer is involved, so a lone call is not delayed.
"""

from __future__ import annotations

import asyncio


class _Queue:
    __slots__ = ("arguments", "busy", "capsule", "futures", "scheduled")

    def __init__(self, capsule):
        self.capsule = capsule
        self.arguments: list[dict] = []
        self.futures: list[asyncio.Future] = []
        self.busy = False        # a batch of this capsule is in the engine
        self.scheduled = False   # a drain is due on the loop


class Coalescer:
    """Queues calls of one kind (``method``: the capsule's batch coroutine's name, e.g.
    ``"decide_many_async"``) and runs each capsule's queue as one batch."""

    def __init__(self, method: str):
        self._method = method
        self._queues: dict[int, _Queue] = {}   # by id(capsule): a reinstall is another queue
        self._running: set[asyncio.Task] = set()

    def submit(self, capsule, arguments: dict) -> asyncio.Future:
        """A future for the outcome of one call (its result, or the engine's error)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        queue = self._queues.get(id(capsule))
        if queue is None or queue.capsule is not capsule:
            queue = self._queues[id(capsule)] = _Queue(capsule)
        queue.arguments.append(arguments)
        queue.futures.append(future)
        if not queue.busy and not queue.scheduled:
            queue.scheduled = True
            loop.call_soon(self._drain, loop, queue)
        return future

    def _drain(self, loop, queue: _Queue) -> None:
        queue.scheduled = False
        if queue.busy or not queue.futures:
            return
        arguments, futures = queue.arguments, queue.futures
        queue.arguments, queue.futures = [], []
        queue.busy = True
        task = loop.create_task(self._run(loop, queue, arguments, futures))
        self._running.add(task)   # a task nobody references may be collected mid-flight
        task.add_done_callback(self._running.discard)

    async def _run(self, loop, queue: _Queue, arguments: list[dict], futures: list[asyncio.Future]) -> None:
        try:
            outcomes = await getattr(queue.capsule, self._method)(arguments)
        except BaseException as exc:   # the store failed: every call in the batch fails with it
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            queue.busy = False
            if queue.futures:   # what arrived while this batch was being made durable
                self._drain(loop, queue)
            elif self._queues.get(id(queue.capsule)) is queue:
                del self._queues[id(queue.capsule)]
        for future, outcome in zip(futures, outcomes):
            if future.done():          # its caller went away (cancelled)
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
