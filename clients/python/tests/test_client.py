"""The blocking client against real herald processes, on both topologies."""

from __future__ import annotations

import uuid

import pytest

from conftest import chan
from harness import Topology, eventually
from herald_client import Herald, HistoryPage, Message, PublishResult, mint_token
from wsclient import WS


def watcher(t: Topology, *channels: str, sub: str = "watcher", **grants: object) -> WS:
    """A WebSocket client subscribed to ``channels``."""
    token = mint_token(t.secret, sub=sub, allow_subscribe=list(channels) or ["x"], **grants)  # type: ignore[arg-type]
    ws = WS(t.ws_url, token)
    ws.welcome()
    for c in channels:
        ws.subscribe(c)
    return ws


def test_publish_one_channel_reaches_a_subscriber(topology: Topology, herald: Herald) -> None:
    c = chan("chat")
    with watcher(topology, c) as ws:
        r = herald.publish(c, {"role": "user", "content": "Hello from customer"}, from_="visitor:abc")
        assert isinstance(r, PublishResult)
        assert r.id.startswith("m_") and r.ts > 0 and r.seqs == {c: 1}
        f = ws.message(c)
    assert f == {"type": "message", "channel": c, "seq": 1, "id": r.id, "ts": r.ts,
                 "from": "visitor:abc", "data": {"role": "user", "content": "Hello from customer"}}


def test_publish_two_channels_is_one_message(topology: Topology, herald: Herald) -> None:
    chat, dash = chan("chat"), chan("dashboard_website")
    herald.publish(dash, "earlier")  # the dashboard already has a message
    with watcher(topology, chat, dash) as ws:
        r = herald.publish([chat, dash], {"content": "hi"})
        assert r.seqs == {chat: 1, dash: 2}
        a, b = ws.message(chat), ws.message(dash)
    assert a["id"] == b["id"] == r.id and a["ts"] == b["ts"] == r.ts
    assert (a["seq"], b["seq"]) == (1, 2)
    assert "from" not in a


def test_a_one_element_list_publishes_to_that_channel(herald: Herald) -> None:
    c = chan()
    assert herald.publish([c], 1).seqs == {c: 1}
    assert herald.publish((c,), 2).seqs == {c: 2}


def test_same_idempotency_key_returns_the_first_result(herald: Herald) -> None:
    c = chan()
    key = f"msg-{uuid.uuid4()}"
    first = herald.publish(c, {"n": 1}, idempotency_key=key)
    again = herald.publish(c, {"n": 1}, idempotency_key=key)
    assert again == first
    assert herald.positions([c]) == {c: 1}
    # Without a key every call is a new message.
    herald.publish(c, {"n": 1})
    herald.publish(c, {"n": 1})
    assert herald.positions(c) == {c: 3}


def test_history_pages_and_iterator(herald: Herald) -> None:
    c = chan()
    empty = herald.history(c)
    assert empty == HistoryPage(messages=[], last_seq=0)
    ids = [herald.publish(c, {"i": i}, from_="app").id for i in range(7)]
    page = herald.history(c, after=2, limit=3)
    assert page.last_seq == 7
    assert [m.seq for m in page.messages] == [3, 4, 5]
    m = page.messages[0]
    assert isinstance(m, Message)
    assert (m.channel, m.id, m.data, m.from_) == (c, ids[2], {"i": 2}, "app")
    assert [m.id for m in herald.iter_history(c, page_size=2)] == ids
    assert [m.seq for m in herald.iter_history(c, after=5, page_size=1)] == [6, 7]
    assert list(herald.iter_history(c, after=7)) == []


def test_positions(herald: Herald) -> None:
    a, b, never = chan(), chan(), chan()
    herald.publish([a, b], 1)
    herald.publish(a, 2)
    assert herald.positions([a, b, never]) == {a: 2, b: 1, never: 0}


def test_positions_splits_long_lists(herald: Herald) -> None:
    names = [chan("p") for _ in range(1001)]
    herald.publish(names[1000], "last")
    pos = herald.positions(names)
    assert len(pos) == 1001 and pos[names[1000]] == 1 and pos[names[0]] == 0


def test_presence_lists_a_connected_client(topology: Topology, herald: Herald) -> None:
    c = chan("chat")
    assert herald.presence(c) == []
    token = mint_token(topology.secret, sub="op:42", channels=[c], info={"name": "Purna"})
    with WS(topology.ws_url, token) as ws:
        ws.welcome()
        clients = eventually(lambda: herald.presence(c), what="presence of op:42")
        assert [(x.sub, x.info) for x in clients] == [("op:42", {"name": "Purna"})]
        assert clients[0].conn.startswith("c_")
    eventually(lambda: herald.presence(c) == [], what="op:42 to leave")


def test_signal_reaches_a_subscriber(topology: Topology, herald: Herald) -> None:
    c = chan("chat")
    with watcher(topology, c) as ws:
        herald.signal(c, {"typing": True}, from_="op:42")
        f = ws.next(lambda f: f.get("type") == "signal", what="signal")
    assert f == {"type": "signal", "channel": c, "from": "op:42", "data": {"typing": True}}
    # Signals are never stored.
    assert herald.positions(c) == {c: 0}


def test_channel_names_with_every_allowed_character(herald: Herald) -> None:
    c = f"a-b.c:d@e=f_{uuid.uuid4().hex[:6]}"
    r = herald.publish(c, None)
    assert r.seqs == {c: 1}
    assert [m.data for m in herald.history(c).messages] == [None]
    assert herald.presence(c) == []


def test_data_round_trips_any_json(herald: Herald) -> None:
    c = chan()
    values = [{"nested": {"list": [1, 2.5, "é", None, True]}}, [1, 2], "text", 42, 1.5, False, None]
    for v in values:
        herald.publish(c, v)
    assert [m.data for m in herald.history(c).messages] == values


def test_context_manager_and_repr_hide_the_key(topology: Topology) -> None:
    h = Herald(topology.api_url + "/", topology.api_key)
    with h:
        assert h.positions([]) == {}
        assert topology.api_key not in repr(h)
    with pytest.raises(RuntimeError):
        h.positions(["x"])  # closed
