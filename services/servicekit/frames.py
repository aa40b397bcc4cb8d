"""WebSocket frames built once and written as they are: the seam under the ASGI path.

A server's frames are not masked (RFC 6455, 5.1), so one message's frame is the same
bytes for every socket that gets it: built once, handed to each socket's transport.
Through ASGI, every delivery is framed again for its socket (websockets'
``send_text``) and awaited in the app's per-socket sender task: at 10,000
deliveries a second that hop, its wake-ups and the framing were about a third of a
node's time (docs/performance.md).

Our uvicorn WebSocket protocol (:mod:`servicekit.connections`) puts itself in the
ASGI scope's extensions as a :class:`FrameWriter`. An app that finds one may write
pre-built frames through it while :meth:`FrameWriter.can_write_frames` says so (the
handshake done, no close sent, the transport taking data, no compression), and
uses the ASGI send otherwise, which waits for a paused transport. The two paths
must not interleave within one message; whole frames never do.
"""

from collections.abc import Mapping
from typing import Any, Protocol

EXTENSION = "servicekit.frames"


class FrameWriter(Protocol):
    def can_write_frames(self) -> bool:
        """Open, not closing, not paused (the transport's buffer is under its high-water
        mark), and without permessage-deflate (a deflated socket's frames are its own)."""
        ...

    def write_frames(self, data: bytes) -> None:
        """Whole frames, in order, written to the transport as they are."""
        ...


def frame_writer(scope: Mapping[str, Any]) -> FrameWriter | None:
    """The connection's writer, if its server protocol offers one (ours does; Litestar's
    test client does not)."""
    writer: FrameWriter | None = scope.get("extensions", {}).get(EXTENSION)
    return writer


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame carrying ``payload`` (UTF-8)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload
