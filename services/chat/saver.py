"""The periodic snapshot saver of a node that holds everything (see :mod:`chat.snapshot`)."""

import asyncio
import logging
import random
import time

from chat import snapshot
from chat.follower import Follower
from chat.replica import Replica
from chatlog import ChatLog, LogError, SnapshotRejected

log = logging.getLogger("chat.snapshot")


class Saver:
    """Saves a snapshot whenever the stream has moved ``every`` messages past the newest one.

    Any node holding everything may save; whichever saves last wins, and every
    candidate is a valid state of the same log. Jitter keeps nodes from all
    encoding the same seq at once.
    """

    def __init__(self, chatlog: ChatLog, follower: Follower, replica: Replica, every: int) -> None:
        self._chatlog = chatlog
        self._follower = follower
        self._replica = replica
        self._every = every
        self._newest: tuple[str | None, int] = (None, 0)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))
            try:
                await self.maybe_save()
            except LogError as exc:
                log.warning("snapshot not saved: %s", exc)
            except Exception:
                # Saving is an optimisation: an error here must not end the saver, nor
                # anything else; the next round tries again.
                log.exception("snapshot not saved: unexpected error")

    async def maybe_save(self) -> bool:
        replica = self._replica
        chatlog = self._chatlog
        if replica.epoch is None or replica.keep is not None:
            return False
        if not self._follower.ready:
            return False  # catching up: saving now would only slow that down
        if self._newest[0] != replica.epoch:
            self._newest = (replica.epoch, 0)
        # Snapshots are taken at the newest digest block boundary, at most a block back.
        position = replica.checkpoint.seq
        if position - self._newest[1] < self._every:
            return False
        try:
            meta = await chatlog.snapshot_meta()
        except SnapshotRejected as exc:
            # Not one of ours (forged, or altered): ours replaces it as the newest, now.
            log.error("the newest snapshot is not trusted (%s): saving a new one", exc.detail)
            meta = None
            self._newest = (replica.epoch, 0)
        if meta is not None and meta.epoch == replica.epoch and meta.format == snapshot.FORMAT:
            self._newest = (meta.epoch, max(self._newest[1], meta.seq))
            if position - meta.seq < self._every:
                return False  # another node saved one recently
        started = time.monotonic()
        captured = await snapshot.capture_live(replica)
        if captured is None:
            return False  # the log was replaced meanwhile
        meta, body = captured
        encoded = time.monotonic()
        if not await chatlog.save_snapshot(meta, body):
            return False  # no key to sign with
        size = len(body)
        del body
        snapshot.give_back_memory()
        self._newest = (meta.epoch, meta.seq)
        log.info(
            "saved snapshot of seq %d (%d bytes; encode %.2fs, compress and upload %.2fs)",
            meta.seq, size, encoded - started, time.monotonic() - encoded,
        )  # fmt: skip
        return True
