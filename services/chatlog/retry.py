"""The one retry helper: exponential backoff with a cap, an optional deadline, and the
errors that are final. Every loop that waits for NATS uses it, so they cannot drift."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from chatlog.errors import Forbidden, LogError, StreamConflict

T = TypeVar("T")

log = logging.getLogger("chatlog.retry")


@dataclass(frozen=True)
class RetryPolicy:
    first: float = 0.1
    """The first wait, doubled after every failure..."""
    cap: float = 2.0
    """...up to this."""
    deadline: float | None = None
    """Seconds after which the last error is raised; None retries for ever."""
    final: tuple[type[BaseException], ...] = ()
    """Errors that no wait can fix: raised at once."""


SERVICE = RetryPolicy(first=0.1, cap=2.0)
"""A running service waiting for NATS or the stream: for ever, at most 2 s apart. A
conflicting stream is retried too: the service stays not ready and says why until an
operator fixes the stream."""

FOLLOW = RetryPolicy(first=0.1, cap=1.0)
"""The follower's consumer resets: quick, since every second behind is lag."""


def command(deadline: float) -> RetryPolicy:
    """A one-shot command (``ensure-stream``, ``up``): gives up after ``deadline`` seconds,
    and at once on a stream it would have to change or on credentials NATS refuses."""
    return RetryPolicy(first=0.25, cap=1.0, deadline=deadline, final=(StreamConflict, Forbidden))


class Backoff:
    """The waits of one retry loop. ``reset()`` after progress starts again from ``first``."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._delay = policy.first
        loop = asyncio.get_running_loop()
        self._deadline = None if policy.deadline is None else loop.time() + policy.deadline

    def reset(self) -> None:
        self._delay = self.policy.first

    def expired(self) -> bool:
        return self._deadline is not None and asyncio.get_running_loop().time() >= self._deadline

    async def wait(self) -> None:
        delay = self._delay
        if self._deadline is not None:
            delay = min(delay, max(0.0, self._deadline - asyncio.get_running_loop().time()))
        await asyncio.sleep(delay)
        self._delay = min(self._delay * 2, self.policy.cap)


async def retry(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    what: str,
    retry_on: tuple[type[BaseException], ...] = (LogError,),
) -> T:
    """``attempt()`` until it returns. Errors in ``retry_on`` are logged and retried after
    the next wait, except ``policy.final`` ones and any once the deadline has passed."""
    backoff = Backoff(policy)
    while True:
        try:
            return await attempt()
        except retry_on as exc:
            if isinstance(exc, policy.final) or backoff.expired():
                raise
            log.warning("%s: %s; retrying", what, exc)
        await backoff.wait()
