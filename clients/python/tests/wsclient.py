"""A minimal WebSocket test client: frames are read as plain JSON dicts
(never through SDK types), so a bug in the SDK cannot hide itself."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.version import version as websockets_version

Frame = dict[str, Any]

_LEGACY_FLAG = int(websockets_version.split(".")[0]) >= 17


class WS:
    def __init__(self, ws_url: str, token: str, *, path: str = "/ws", timeout: float = 10.0) -> None:
        self.timeout = timeout
        url = f"{ws_url}{path}?token={quote(token, safe='')}"
        # websockets 17 wants legacy=True to return the connection directly
        # (16, the last release for Python 3.10, has no such flag).
        extra: dict[str, Any] = {"legacy": True} if _LEGACY_FLAG else {}
        self.conn: ClientConnection = connect(url, open_timeout=timeout, close_timeout=2, **extra)
        self.buffer: list[Frame] = []
        self._id = 0

    def __enter__(self) -> WS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def recv(self, timeout: float | None = None) -> Frame:
        """The next frame, from the buffer first."""
        if self.buffer:
            return self.buffer.pop(0)
        raw = self.conn.recv(timeout=self.timeout if timeout is None else timeout)
        assert isinstance(raw, str), f"binary frame on herald.json: {raw!r}"
        v = json.loads(raw)
        assert isinstance(v, dict), v
        return v

    def next(self, pred: Callable[[Frame], bool], timeout: float | None = None,
             what: str = "frame") -> Frame:
        """The first frame matching ``pred`` (buffered or new) within the
        deadline; the others stay buffered, in order."""
        for i, f in enumerate(self.buffer):
            if pred(f):
                return self.buffer.pop(i)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within the deadline; buffered: {self.buffer}")
            try:
                raw = self.conn.recv(timeout=left)
            except TimeoutError:
                raise AssertionError(f"no {what} within the deadline; buffered: {self.buffer}") from None
            v: Frame = json.loads(raw)
            if pred(v):
                return v
            self.buffer.append(v)

    def welcome(self) -> Frame:
        return self.next(lambda f: f.get("type") == "welcome", what="welcome")

    def request(self, op: str, **fields: Any) -> Frame:
        """Sends ``op`` and returns its reply frame."""
        self._id += 1
        rid = self._id
        self.conn.send(json.dumps({"op": op, "id": rid, **fields}))
        return self.next(lambda f: f.get("type") == "reply" and f.get("id") == rid,
                         what=f"reply to {op} #{rid}")

    def subscribe(self, channel: str, **fields: Any) -> Frame:
        r = self.request("subscribe", channel=channel, **fields)
        assert "result" in r, f"subscribe {channel} failed: {r}"
        return r

    def message(self, channel: str, timeout: float | None = None) -> Frame:
        return self.next(lambda f: f.get("type") == "message" and f.get("channel") == channel,
                         timeout, what=f"message on {channel}")

    def closed_with(self, timeout: float | None = None) -> tuple[int | None, list[Frame]]:
        """Reads until the server closes; returns the close code and the
        frames that came before it."""
        frames = list(self.buffer)
        self.buffer.clear()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection not closed in time; frames: {frames}")
            try:
                frames.append(json.loads(self.conn.recv(timeout=left)))
            except ConnectionClosed as e:
                return (e.rcvd.code if e.rcvd else None), frames
            except TimeoutError:
                raise AssertionError(f"connection not closed in time; frames: {frames}") from None
