"""The owner of a service's background tasks: starts them, reports an unexpected end,
cancels them at shutdown. No task is fire-and-forget."""

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("servicekit.tasks")


class Background:
    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def start(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._ended)
        self.tasks[name] = task
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        # These tasks run until cancelled at shutdown; any other end leaves the service
        # without a part it needs (its readiness says so, this says why).
        if self._stopping:
            return
        if task.cancelled():
            log.critical("task %r was cancelled", task.get_name())
        elif task.exception() is not None:
            log.critical("task %r stopped: %r", task.get_name(), task.exception())

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            # Cancel again until it ends: on 3.11 asyncio.wait_for (inside nats-py's
            # requests too) swallows a cancellation that races with its result, and a
            # follower that lost its one cancel would follow the log for ever (seen:
            # a test's shutdown hung about one run in three on a loaded machine).
            while not task.done():
                await asyncio.wait({task}, timeout=1.0)
                if not task.done():
                    log.warning("task %r ignored a cancel; cancelling again", task.get_name())
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()
