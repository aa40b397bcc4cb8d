"""The Python client against real node processes: failover with resume (no gap, no
duplicate), sends kept across a node's death, a new epoch, token refresh, and a token
that cannot be renewed."""

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest

from auth import keys
from chat_cluster.local import Service
from chatclient import (
    AuthFailed,
    ChatClient,
    ClientClosed,
    Connected,
    Disconnected,
    EpochChanged,
    Joined,
    Member,
    Message,
    Presence,
    PresenceJoin,
    PresenceLeave,
    Refused,
    SendFailed,
)
from chatclient.frames import Event
from chatlog import ChatLog, StreamSpec
from tests.support import ADMIN_TOKEN, SIGNING_KEY, NodeProcs, all_messages, http, token, until


async def next_of(events: AsyncIterator[Event], kind: type, timeout: float = 15) -> Event:
    """The next event of ``kind`` (others are passed over)."""
    async with asyncio.timeout(timeout):
        async for event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError("events ended")


async def messages(events: AsyncIterator[Event], n: int, timeout: float = 15) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(timeout):
        async for event in events:
            if isinstance(event, Message):
                got.append(event)
                if len(got) == n:
                    return got
    raise AssertionError("events ended")


async def test_resumes_on_another_node_without_gap_or_duplicate(procs: NodeProcs) -> None:
    a, b, c = procs.node("a"), procs.node("b"), procs.node("c")
    async with ChatClient([a.url, b.url], ADMIN_TOKEN, first=0, backoff=(0.05, 0.5)) as client:
        events = client.events()
        assert await next_of(events, Connected) == Connected(a.url)
        await client.join("room", after=0)
        await next_of(events, Joined)
        acks = [await client.send("room", f"before {i}") for i in range(5)]
        seen = await messages(events, 5)
        assert [m.seq for m in seen] == [ack.seq for ack in acks]
        assert a.proc is not None and b.proc is not None
        # The client's other node is frozen and its node dies: it can be nowhere while
        # 150 messages are written through a node it does not know (more than the 100 a
        # join without ``after`` would show, so only a resume has them all).
        b.proc.send_signal(signal.SIGSTOP)
        a.proc.send_signal(signal.SIGKILL)
        try:
            assert isinstance(await next_of(events, Disconnected), Disconnected)
            missed = []
            for i in range(150):
                status, sent = await asyncio.to_thread(
                    http, "POST", c.url + "/messages", {"channel": "room", "text": f"away {i}"}
                )
                assert status == 201
                missed.append(sent["seq"])
        finally:
            b.proc.send_signal(signal.SIGCONT)
        assert await next_of(events, Connected, 30) == Connected(b.url)
        after = await messages(events, 150, 30)
        assert [m.seq for m in after] == missed  # every one, once, in order
        assert client.cursor("room") == missed[-1]


async def test_a_send_made_while_the_node_is_dying_is_acked_once(procs: NodeProcs) -> None:
    """The send is kept (same id) until a node acknowledges it: at most once in the log,
    whether or not the dead node had stored it."""
    a, b = procs.node("a"), procs.node("b")
    async with ChatClient([a.url, b.url], ADMIN_TOKEN, first=0, backoff=(0.05, 0.5)) as client:
        events = client.events()
        await next_of(events, Connected)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        ack = await asyncio.wait_for(client.send("kept", "sent into a dying node", "m-1"), 30)
        assert client.node == b.url
    stored = await asyncio.to_thread(all_messages, b.url, "kept")
    assert [(m["id"], m["seq"]) for m in stored] == [("m-1", ack.seq)]


async def test_a_new_epoch_drops_the_cursors_and_joins_again(
    procs: NodeProcs, admin: ChatLog, chatlog: ChatLog
) -> None:
    a = procs.node("a")
    async with ChatClient([a.url], ADMIN_TOKEN, backoff=(0.05, 0.5)) as client:
        events = client.events()
        await client.join("room", after=0)
        for i in range(3):
            await client.send("room", f"old {i}")
        assert [m.text for m in await messages(events, 3)] == ["old 0", "old 1", "old 2"]
        await admin.delete_stream()
        await admin.ensure_stream(StreamSpec())
        await asyncio.to_thread(
            lambda: http("POST", a.url + "/messages", {"channel": "room", "text": "new"})
        )
        changed = await next_of(events, EpochChanged, 30)
        assert changed.epoch == (await chatlog.info()).epoch
        # seq 1 of the new log, although the cursor of the old one was 3
        (first,) = await messages(events, 1, 30)
        assert (first.seq, first.text) == (1, "new")


async def test_a_token_source_renews_the_token_on_the_same_socket(procs: NodeProcs) -> None:
    """Tokens living 4 s: the node warns, the client refreshes, and the socket outlives
    several tokens (six are minted about 10 s in; without a refresh the first would have
    closed the socket at 4 s + 5 s of leeway)."""
    a = procs.node("a")
    minted = 0

    def fresh() -> str:
        nonlocal minted
        minted += 1
        return keys.mint(SIGNING_KEY, "ada", ttl=4, read=("*",), send=("*",))

    async with ChatClient([a.url], fresh) as client:
        events = client.events()
        await next_of(events, Connected)
        await client.join("room")
        await next_of(events, Joined)
        await until(lambda: minted >= 6, timeout=30, what="six tokens")
        await client.send("room", "still here")
        assert client.node == a.url and client.user == "ada"
        assert client.connections == 1  # never closed for an expired token


async def test_a_fixed_token_that_is_refused_ends_the_client(procs: NodeProcs) -> None:
    a = procs.node("a")
    expired = keys.mint(SIGNING_KEY, "ada", ttl=-60, read=("*",))
    async with ChatClient([a.url], expired) as client:
        with pytest.raises(AuthFailed):
            async with asyncio.timeout(15):
                async for _ in client.events():
                    pass


async def test_a_send_that_retrying_cannot_fix_fails(procs: NodeProcs) -> None:
    a = procs.node("a")
    reader = token("reader", read=("*",))
    async with ChatClient([a.url], reader) as client:
        with pytest.raises(SendFailed) as failed:
            await asyncio.wait_for(client.send("room", "not allowed"), 15)
    assert failed.value.code == "forbidden"


async def test_history_pages_backwards_to_the_first_message(procs: NodeProcs) -> None:
    a = procs.node("a")
    async with ChatClient([a.url], ADMIN_TOKEN) as client:
        acks = [await client.send("old", f"{i}") for i in range(250)]
        shown: list[int] = []
        before = None
        while page := await client.history("old", before, limit=100):
            shown = [m.seq for m in page] + shown
            before = page[0].seq
        assert shown == [ack.seq for ack in acks]
        with pytest.raises(Refused) as refused:
            await client.history("bad channel!")
        assert refused.value.code == "invalid_channel"


async def test_what_a_first_user_tripped_on_now_answers(procs: NodeProcs) -> None:
    """From the user review: an empty text, a send after close, a send with a refused
    token, and who we are, each answered instead of waiting for ever."""
    a = procs.node("a")
    async with ChatClient([a.url], token("ada", read=("*",), send=("*",))) as client:
        with pytest.raises(SendFailed) as failed:
            await asyncio.wait_for(client.send("room", ""), 15)
        assert failed.value.code == "invalid_frame"
        await client.send("room", "hello")
        assert client.user == "ada"  # the node's `authed`, from the auth frame
    with pytest.raises(ClientClosed):
        await client.send("room", "too late")
    expired = keys.mint(SIGNING_KEY, "ada", ttl=-60, read=("*",), send=("*",))
    async with ChatClient([a.url], expired) as refused:
        with pytest.raises(AuthFailed):
            await asyncio.wait_for(refused.send("room", "never"), 15)
        with pytest.raises(AuthFailed):
            await refused.send("room", "nor this")


async def test_presence_is_kept_across_a_failover(procs: NodeProcs) -> None:
    """A channel joined with presence: the snapshot, others coming and going on another
    node, and after the client's node dies, a fresh snapshot from the next one (its own
    user counted there, no ghost of the dead node's socket)."""
    quick = ("--presence-interval", "0.5", "--presence-ttl", "1.5")
    a, b = procs.node("a", *quick), procs.node("b", *quick)
    ada = token("ada", read=("*",), send=("*",))
    async with ChatClient([a.url, b.url], ada, first=0, backoff=(0.05, 0.5)) as client:
        events = client.events()
        await client.join("room", presence=True)
        snapshot = await next_of(events, Presence)
        assert isinstance(snapshot, Presence) and snapshot.members == [Member("ada", 1)]
        assert client.members("room") == {"ada": 1}
        async with ChatClient([b.url], token("bob", read=("*",))) as bob:
            await bob.join("room")
            came = await next_of(events, PresenceJoin)
            assert isinstance(came, PresenceJoin) and came.users == ["bob"] and came.online == 2
            assert client.members("room") == {"ada": 1, "bob": 1}
        went = await next_of(events, PresenceLeave)
        assert isinstance(went, PresenceLeave) and went.users == ["bob"]
        assert client.members("room") == {"ada": 1}
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        assert await next_of(events, Connected, 30) == Connected(b.url)
        again = await next_of(events, Presence, 30)
        # b may still hold the dead node's socket until its TTL: the new one makes 1 or 2.
        assert isinstance(again, Presence) and [m.user for m in again.members] == ["ada"]
        await until(lambda: presence_of(b) == [{"user": "ada", "count": 1}], 30, "the TTL")


def presence_of(node: Service) -> object:
    return http("GET", node.url + "/presence?channel=room")[1]["members"]
