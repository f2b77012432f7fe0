"""The values the ingest API answers with, as typed, immutable dataclasses.

Field names follow PROTOCOL.md except ``from``, a Python keyword, which is
``from_``. Unknown fields in herald's answers are ignored, so a newer herald
does not break an older SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Client", "HistoryPage", "Message", "PublishResult"]


class _Shape(ValueError):
    """An answer that does not have the documented shape."""


def _obj(v: object, what: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _Shape(f"{what} is not a JSON object")
    return v


def _str(m: Mapping[str, Any], k: str, what: str) -> str:
    v = m.get(k)
    if not isinstance(v, str):
        raise _Shape(f"{what}.{k} is not a string")
    return v


def _int(m: Mapping[str, Any], k: str, what: str) -> int:
    v = m.get(k)
    if not isinstance(v, int) or isinstance(v, bool):
        raise _Shape(f"{what}.{k} is not an integer")
    return v


def _opt_str(m: Mapping[str, Any], k: str, what: str) -> str | None:
    v = m.get(k)
    if v is not None and not isinstance(v, str):
        raise _Shape(f"{what}.{k} is not a string")
    return v


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Answer of a publish: one message id and ``ts`` for all channels, one
    ``seq`` per channel. Publishing again with the same idempotency key
    returns the same result."""

    id: str
    """Message id, unique across the deployment (``m_...``)."""
    ts: int
    """Milliseconds since the Unix epoch, set by ingest."""
    seqs: dict[str, int]
    """The message's seq in each channel it was published to."""

    @classmethod
    def from_json(cls, v: object) -> PublishResult:
        m = _obj(v, "publish answer")
        seqs = _obj(m.get("seqs"), "publish answer seqs")
        out: dict[str, int] = {}
        for ch in seqs:
            out[str(ch)] = _int(seqs, ch, "publish answer seqs")
        return cls(id=_str(m, "id", "publish answer"), ts=_int(m, "ts", "publish answer"), seqs=out)


@dataclass(frozen=True, slots=True)
class Message:
    """A persisted message: a history item, the ``message`` of a webhook
    event, or a WebSocket ``message`` frame without ``type``."""

    channel: str
    seq: int
    id: str
    ts: int
    data: Any
    """The JSON value that was published (dict, list, str, number, bool or None)."""
    from_: str | None = None
    """The publisher: a WebSocket client's ``sub`` or the ``from`` given to
    the API; ``None`` when none was given."""

    @classmethod
    def from_json(cls, v: object) -> Message:
        m = _obj(v, "message")
        if "data" not in m:
            raise _Shape("message has no data")
        return cls(
            channel=_str(m, "channel", "message"),
            seq=_int(m, "seq", "message"),
            id=_str(m, "id", "message"),
            ts=_int(m, "ts", "message"),
            data=m["data"],
            from_=_opt_str(m, "from", "message"),
        )


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of a channel's history."""

    messages: list[Message]
    """Messages with seq greater than ``after``, in seq order, at most ``limit``."""
    last_seq: int
    """The channel's last seq (0 when it never had a message)."""

    @classmethod
    def from_json(cls, v: object) -> HistoryPage:
        m = _obj(v, "history answer")
        items = m.get("messages")
        if not isinstance(items, list):
            raise _Shape("history answer.messages is not a list")
        return cls(
            messages=[Message.from_json(i) for i in items],
            last_seq=_int(m, "last_seq", "history answer"),
        )


@dataclass(frozen=True, slots=True)
class Client:
    """A connected client, as listed by presence and named in webhook events."""

    sub: str
    """The token's ``sub``."""
    conn: str
    """The connection id (``c_...``); one ``sub`` may have several."""
    info: dict[str, Any] | None = field(default=None)
    """The token's ``info`` object, if it had one."""

    @classmethod
    def from_json(cls, v: object) -> Client:
        m = _obj(v, "client")
        info = m.get("info")
        if info is not None and not isinstance(info, dict):
            raise _Shape("client.info is not an object")
        return cls(sub=_str(m, "sub", "client"), conn=_str(m, "conn", "client"), info=info)
