"""The frames the node builds once for many sockets are the frames websockets itself
would send, for each length encoding (7-bit, 16-bit and 64-bit)."""

import pytest
from websockets.frames import Frame, Opcode

from servicekit.frames import text_frame


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_frames_match_websockets_own(size: int) -> None:
    payload = b"x" * size
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False)
    assert text_frame(payload) == expected
