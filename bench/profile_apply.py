"""Per-message cost of the replica's apply path, without NATS: the payload rule, encoding,
and the append. ``python -m bench.profile_apply``. A measurement, not a test."""

import asyncio
import json
import time

from chat.replica import Replica
from chatlog import LogEntry, take
from chatlog.records import encode_record


def main(n: int = 200_000) -> None:
    payload = json.dumps({"text": "x" * 200, "user": "bench"}).encode()
    entries = [
        LogEntry(
            seq=i + 1,
            subject=f"chat.c{i % 100}.node",
            data=payload,
            stored_ns=1_795_840_002 * 10**9 + i,
        )
        for i in range(n)
    ]
    t0 = time.perf_counter()
    for entry in entries:
        take(entry, 8192)
    rule = time.perf_counter() - t0
    t0 = time.perf_counter()
    for entry in entries:
        record = take(entry, 8192)
        assert not isinstance(record, type(None))
        encode_record(record).decode()  # type: ignore[arg-type]
    encode = time.perf_counter() - t0

    async def apply() -> float:
        replica = Replica(8192)
        t = time.perf_counter()
        for i in range(0, n, 256):
            replica.apply(entries[i : i + 256])
        return time.perf_counter() - t

    whole = asyncio.run(apply())
    print(
        f"per message: payload rule {rule / n * 1e6:.2f} us, rule + encode "
        f"{encode / n * 1e6:.2f} us, whole apply {whole / n * 1e6:.2f} us"
    )


if __name__ == "__main__":
    main()
