"""Error classes, retries and idempotent retries, against real herald."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import chan
from harness import HeraldCluster, HeraldDev, Topology, free_port
from herald_client import (
    BadChannel,
    BadRequest,
    Conflict,
    Herald,
    HeraldError,
    NotFound,
    TooLarge,
    TransportError,
    Unauthorized,
    Unavailable,
)
from relay import DroppingRelay


def test_bad_channel(herald: Herald) -> None:
    for call in (
        lambda: herald.publish("bad channel!", 1),
        lambda: herald.publish([chan(), "no/slash"], 1),
        lambda: herald.history("a?b"),
        lambda: herald.presence("x" * 201),
        lambda: herald.positions(["ok", "é"]),
        lambda: herald.signal("sp ace", 1),
    ):
        with pytest.raises(BadChannel) as e:
            call()
        assert (e.value.code, e.value.status) == ("bad_channel", 400)
        assert isinstance(e.value, HeraldError) and e.value.message


def test_bad_request(herald: Herald) -> None:
    c = chan()
    with pytest.raises(BadRequest) as e:
        herald.publish([], 1)
    assert (e.value.code, e.value.status) == ("bad_request", 400)
    with pytest.raises(BadRequest):
        herald.publish([c, c], 1)
    with pytest.raises(BadRequest):
        herald.history(c, limit=0)
    with pytest.raises(BadRequest):
        herald.history(c, limit=1001)
    with pytest.raises(BadRequest):
        herald.publish(c, 1, idempotency_key="k" * 257)
    # Not JSON at all is refused before anything is sent.
    with pytest.raises(ValueError):
        herald.publish(c, float("nan"))
    with pytest.raises(TypeError):
        herald.publish(c, object())


def test_unauthorized(topology: Topology) -> None:
    with Herald(topology.api_url, "wrong-key", retries=0) as h:
        with pytest.raises(Unauthorized) as e:
            h.publish(chan(), 1)
    assert (e.value.code, e.value.status) == ("unauthorized", 401)


def test_not_found(topology: Topology) -> None:
    with Herald(topology.api_url + "/not-herald", topology.api_key, retries=0) as h:
        with pytest.raises(NotFound) as e:
            h.positions(["a"])
    assert (e.value.code, e.value.status) == ("not_found", 404)


def test_too_large(herald: Herald) -> None:
    c = chan()
    with pytest.raises(TooLarge) as e:
        herald.publish(c, "x" * 17000)
    assert (e.value.code, e.value.status) == ("too_large", 413)
    # Just under the 16 KiB default passes (the JSON text counts: 2 quotes).
    assert herald.publish(c, "x" * (16384 - 2)).seqs == {c: 1}


def test_conflict(herald: Herald) -> None:
    a, b = chan(), chan()
    key = str(uuid.uuid4())
    herald.publish(a, {"v": 1}, idempotency_key=key)
    with pytest.raises(Conflict) as e:
        herald.publish(a, {"v": 2}, idempotency_key=key)
    assert (e.value.code, e.value.status) == ("conflict", 409)
    with pytest.raises(Conflict):
        herald.publish([a, b], {"v": 1}, idempotency_key=key)
    assert herald.positions([a, b]) == {a: 1, b: 0}


def test_transport_error_after_retries() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with Herald(f"http://127.0.0.1:{port}", "k", retries=2, backoff=0.05, timeout=2) as h:
        with pytest.raises(TransportError) as e:
            h.publish("c", 1)
    assert e.value.code == "transport" and e.value.status is None
    assert "3 attempt(s)" in e.value.message
    assert e.value.__cause__ is not None
    assert time.monotonic() - started < 5


@pytest.fixture
def relay(dev: HeraldDev) -> Iterator[DroppingRelay]:
    port = int(dev.api_url.rsplit(":", 1)[1])
    r = DroppingRelay(port)
    yield r
    r.close()


def test_retry_after_a_lost_answer_reuses_the_generated_key(dev: HeraldDev, relay: DroppingRelay) -> None:
    c = chan()
    relay.drop = 2  # herald commits, the client never hears it; twice
    with Herald(relay.url, dev.api_key, retries=3, backoff=0.05) as h:
        r = h.publish([c, chan()], {"content": "once"})
        assert relay.drop == 0
        keys = {json.loads(b)["key"] for b in relay.bodies}
        assert len(relay.bodies) == 3 and len(keys) == 1, relay.bodies
        # One message, and the answer is the first attempt's.
        page = h.history(c)
    assert [m.id for m in page.messages] == [r.id] and page.last_seq == 1


def test_retry_reuses_the_callers_key(dev: HeraldDev, relay: DroppingRelay) -> None:
    c = chan()
    relay.drop = 1
    with Herald(relay.url, dev.api_key, retries=1, backoff=0.01) as h:
        r = h.publish(c, 1, idempotency_key="app-msg-7")
    assert [json.loads(b)["key"] for b in relay.bodies] == ["app-msg-7"] * 2
    assert r.seqs == {c: 1}


def test_no_retry_left_raises_transport_error(dev: HeraldDev, relay: DroppingRelay) -> None:
    c = chan()
    relay.drop = 5
    with Herald(relay.url, dev.api_key, retries=1, backoff=0.01) as h:
        with pytest.raises(TransportError):
            h.publish(c, 1, idempotency_key="k-lost")
        relay.drop = 0
        # The message was committed; asking again with the key tells its id.
        again = h.publish(c, 1, idempotency_key="k-lost")
    assert len(relay.bodies) == 3 and again.seqs == {c: 1}


def test_4xx_is_never_retried(dev: HeraldDev, relay: DroppingRelay) -> None:
    with Herald(relay.url, "wrong", retries=3, backoff=0.01) as h:
        with pytest.raises(Unauthorized):
            h.publish(chan(), 1)
    assert len(relay.bodies) == 1


def server_errors(t: HeraldCluster) -> float:
    """ingest's count of 5xx answers, from its /metrics."""
    text = httpx.get(f"{t.ingest_admin_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("herald_ingest_requests_total{") and 'status="5xx"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_unavailable_is_retried_then_raised(tmp_path: Path) -> None:
    """With Redis down, ingest answers presence with 503 unavailable: retried
    with backoff, then raised as Unavailable."""
    t = HeraldCluster(tmp_path)
    try:
        with Herald(t.api_url, t.api_key, retries=2, backoff=0.05, timeout=10) as h:
            c = chan()
            assert h.presence(c) == []
            t.redis.stop()
            before = server_errors(t)
            started = time.monotonic()
            with pytest.raises(Unavailable) as e:
                h.presence(c)
            assert (e.value.code, e.value.status) == ("unavailable", 503)
            assert time.monotonic() - started < 30
            # Three attempts reached ingest: the first and two retries.
            assert server_errors(t) - before == 3
    finally:
        t.stop()
