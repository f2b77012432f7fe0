"""AsyncHerald: the same calls, awaited, against real herald."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

import pytest

from conftest import chan
from harness import HeraldDev, Topology, free_port
from herald_client import (
    AsyncHerald,
    BadChannel,
    Client,
    Conflict,
    HistoryPage,
    TooLarge,
    TransportError,
    Unauthorized,
    mint_token,
)
from relay import DroppingRelay
from wsclient import WS

pytestmark = pytest.mark.anyio


async def test_publish_history_positions_presence_signal(topology: Topology) -> None:
    chat, dash = chan("chat"), chan("dashboard_website")
    token = mint_token(topology.secret, sub="op:7", allow_subscribe=["chat_*", "dashboard_*"],
                       info={"name": "Op"})
    async with AsyncHerald(topology.api_url, topology.api_key, retries=1, backoff=0.05) as h:
        with WS(topology.ws_url, token) as ws:
            ws.welcome()
            ws.subscribe(chat)
            ws.subscribe(dash)
            r = await h.publish([chat, dash], {"content": "hi"}, from_="visitor:1")
            assert r.seqs == {chat: 1, dash: 1}
            assert ws.message(chat)["id"] == ws.message(dash)["id"] == r.id
            await h.signal(chat, {"typing": True})
            assert ws.next(lambda f: f.get("type") == "signal")["data"] == {"typing": True}
            clients = await presence_until(h, chat, lambda cs: bool(cs))
            assert [(c.sub, c.info) for c in clients] == [("op:7", {"name": "Op"})]
        for i in range(4):
            await h.publish(chat, i)
        page = await h.history(chat, after=1, limit=2)
        assert [m.data for m in page.messages] == [0, 1] and page.last_seq == 5
        assert [m.seq async for m in h.iter_history(chat, page_size=2)] == [1, 2, 3, 4, 5]
        fresh = chan()
        assert await h.positions([chat, dash, fresh]) == {chat: 5, dash: 1, fresh: 0}
        assert await h.history(chan()) == HistoryPage(messages=[], last_seq=0)


async def test_errors(dev: HeraldDev) -> None:
    async with AsyncHerald(dev.api_url, dev.api_key, retries=0) as h:
        with pytest.raises(BadChannel):
            await h.publish("no good", 1)
        with pytest.raises(TooLarge):
            await h.publish(chan(), "x" * 20000)
        key = str(uuid.uuid4())
        c = chan()
        first = await h.publish(c, 1, idempotency_key=key)
        assert await h.publish(c, 1, idempotency_key=key) == first
        with pytest.raises(Conflict):
            await h.publish(c, 2, idempotency_key=key)
    async with AsyncHerald(dev.api_url, "nope") as h:
        with pytest.raises(Unauthorized):
            await h.positions(["a"])
    async with AsyncHerald(f"http://127.0.0.1:{free_port()}", "k", retries=1, backoff=0.01) as h:
        with pytest.raises(TransportError):
            await h.presence("a")


async def test_retry_reuses_the_key(dev: HeraldDev) -> None:
    relay = DroppingRelay(int(dev.api_url.rsplit(":", 1)[1]))
    try:
        relay.drop = 1
        c = chan()
        async with AsyncHerald(relay.url, dev.api_key, retries=2, backoff=0.01) as h:
            r = await h.publish(c, {"once": True})
            assert len({json.loads(b)["key"] for b in relay.bodies}) == 1 and len(relay.bodies) == 2
            assert [m.id for m in (await h.history(c)).messages] == [r.id]
    finally:
        relay.close()


async def presence_until(h: AsyncHerald, channel: str, ok: Callable[[list[Client]], bool],
                         timeout: float = 10.0) -> list[Client]:
    """Polls presence until ``ok`` holds (join/leave propagate asynchronously
    on the Redis topology)."""
    deadline = time.monotonic() + timeout
    while True:
        got = await h.presence(channel)
        if ok(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"presence of {channel} never satisfied the check: {got}")
        await asyncio.sleep(0.05)


async def test_presence_join_and_leave(topology: Topology) -> None:
    c = chan("chat")
    async with AsyncHerald(topology.api_url, topology.api_key) as h:
        with WS(topology.ws_url, mint_token(topology.secret, sub="u9", channels=[c])) as ws:
            ws.welcome()
            got = await presence_until(h, c, lambda cs: bool(cs))
            assert [(x.sub, x.info) for x in got] == [("u9", None)]
        await presence_until(h, c, lambda cs: cs == [])
