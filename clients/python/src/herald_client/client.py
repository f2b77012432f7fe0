"""The ingest API clients: :class:`Herald` (blocking, ``httpx.Client``) and
:class:`AsyncHerald` (asyncio, ``httpx.AsyncClient``).

Both build the same requests (:class:`_Request`) and read the same answers;
only the I/O and the sleeping between attempts differ.

Retries: a call is attempted at most ``1 + retries`` times. A transport
error (connection refused or reset, timeout, broken HTTP) or a 503
``unavailable`` is retried after an exponential backoff with jitter; every
other answer, 4xx included, is final. A publish carries an idempotency key
(the caller's, or a fresh UUID4) that is the same on every attempt, so a
retried publish whose first attempt was committed returns that first
result and stores nothing new (PROTOCOL.md section 8).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from . import __version__
from .errors import HeraldError, TransportError, error_for
from .models import Client, HistoryPage, Message, PublishResult, _Shape

__all__ = ["AsyncHerald", "Herald"]

#: Most channels one ``POST /v1/positions`` may name; longer lists are split.
MAX_POSITIONS = 1000


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    params: Mapping[str, str | int] | None = None
    # The JSON body, serialized once so every attempt sends the same bytes
    # (and the same idempotency key).
    body: bytes | None = None


def _json_body(v: Mapping[str, Any]) -> bytes:
    # allow_nan=False: NaN and Infinity are not JSON; herald would answer
    # bad_request, better to fail here with the Python value at hand.
    return json.dumps(v, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()


def _channel_path(channel: str, what: str) -> str:
    if not isinstance(channel, str):
        raise TypeError(f"channel must be a str, not {type(channel).__name__}")
    # Every byte outside the unreserved set is escaped (a '/' or '?' must not
    # change the route); herald percent-decodes and checks the name itself.
    return f"/v1/channels/{quote(channel, safe='')}/{what}"


def _channel_list(channels: str | Sequence[str]) -> list[str]:
    if isinstance(channels, str):
        return [channels]
    out = list(channels)
    for c in out:
        if not isinstance(c, str):
            raise TypeError(f"channel names must be str, not {type(c).__name__}")
    return out


def _publish_request(
    channels: str | Sequence[str],
    data: Any,
    from_: str | None,
    idempotency_key: str | None,
) -> _Request:
    names = _channel_list(channels)
    body: dict[str, Any] = {}
    if len(names) == 1:
        body["channel"] = names[0]
    else:
        # An empty list goes to herald as is: it answers bad_request.
        body["channels"] = names
    body["data"] = data
    body["key"] = idempotency_key if idempotency_key is not None else str(uuid.uuid4())
    if from_ is not None:
        body["from"] = from_
    return _Request("POST", "/v1/publish", body=_json_body(body))


def _signal_request(channel: str, data: Any, from_: str | None) -> _Request:
    body: dict[str, Any] = {"channel": channel, "data": data}
    if from_ is not None:
        body["from"] = from_
    return _Request("POST", "/v1/signal", body=_json_body(body))


def _history_request(channel: str, after: int, limit: int) -> _Request:
    return _Request(
        "GET", _channel_path(channel, "messages"), params={"after": after, "limit": limit}
    )


def _positions_requests(channels: str | Sequence[str]) -> list[_Request]:
    names = _channel_list(channels)
    return [
        _Request("POST", "/v1/positions", body=_json_body({"channels": names[i : i + MAX_POSITIONS]}))
        for i in range(0, len(names), MAX_POSITIONS)
    ]


def _positions_of(v: object) -> dict[str, int]:
    if not isinstance(v, dict) or not isinstance(v.get("positions"), dict):
        raise _Shape("positions answer has no positions object")
    out: dict[str, int] = {}
    for ch, seq in v["positions"].items():
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise _Shape(f"positions answer: seq of {ch!r} is not an integer")
        out[str(ch)] = seq
    return out


def _presence_of(v: object) -> list[Client]:
    if not isinstance(v, dict) or not isinstance(v.get("clients"), list):
        raise _Shape("presence answer has no clients list")
    return [Client.from_json(c) for c in v["clients"]]


def _history_done(page: HistoryPage) -> bool:
    return not page.messages or page.messages[-1].seq >= page.last_seq


class _Base:
    """Settings and answer handling shared by both clients."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key is empty")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if backoff < 0 or max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": f"herald-client-python/{__version__}",
            "Accept": "application/json",
        }

    def __repr__(self) -> str:
        # Never the API key: reprs end up in logs.
        return f"{type(self).__name__}(url={self.url!r}, retries={self.retries})"

    def _delay(self, attempt: int) -> float:
        """Backoff before attempt ``attempt + 1``: exponential, capped, with
        jitter in [d/2, d] so a fleet of clients does not retry in step."""
        d = min(self.max_backoff, self.backoff * (2**attempt))
        return random.uniform(d / 2, d)

    @staticmethod
    def _retryable(resp: httpx.Response) -> bool:
        return resp.status_code == 503

    @staticmethod
    def _answer(resp: httpx.Response) -> Any:
        """The decoded JSON of a 2xx answer; raises the matching
        :class:`HeraldError` for anything else."""
        if 200 <= resp.status_code < 300:
            try:
                return resp.json() if resp.content else None
            except ValueError as e:
                raise HeraldError(
                    "bad_response", f"answer is not JSON: {e}", resp.status_code
                ) from None
        code: str | None = None
        message = resp.text[:500] or resp.reason_phrase
        try:
            err = resp.json().get("error")
            if isinstance(err, dict):
                code = err.get("code") if isinstance(err.get("code"), str) else None
                if isinstance(err.get("message"), str):
                    message = err["message"]
        except (ValueError, AttributeError):
            pass
        raise error_for(resp.status_code, code, message)

    @staticmethod
    def _shape(call: str, e: _Shape, status: int) -> HeraldError:
        return HeraldError("bad_response", f"{call}: {e}", status)


class Herald(_Base):
    """Blocking client of herald's ingest API (``httpx.Client``).

    ``url`` is where ingest listens (``herald dev``'s address, or an ingest
    node / its load balancer), ``api_key`` its bearer key. ``timeout`` (in
    seconds) bounds each attempt; ``retries`` is how many times a call is
    re-sent after a transport error or a 503; ``backoff`` is the first
    delay, doubling up to ``max_backoff``. Use it as a context manager, or
    call :meth:`close`. Thread-safe: share one per process.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        super().__init__(
            url, api_key, timeout=timeout, retries=retries, backoff=backoff, max_backoff=max_backoff
        )
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=httpx.Timeout(timeout)
        )

    def __enter__(self) -> Herald:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def _call(self, req: _Request) -> tuple[Any, int]:
        headers = {"Content-Type": "application/json"} if req.body is not None else None
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.request(
                    req.method, req.path, params=req.params, content=req.body, headers=headers
                )
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise TransportError(
                        f"{req.method} {req.path}: {type(e).__name__}: {e} "
                        f"(after {attempt + 1} attempt(s))"
                    ) from e
            else:
                if not (self._retryable(resp) and attempt < self.retries):
                    return self._answer(resp), resp.status_code
            time.sleep(self._delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def publish(
        self,
        channels: str | Sequence[str],
        data: Any,
        *,
        from_: str | None = None,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """Persists ``data`` (any JSON value) in one channel or several (one
        message id, one seq per channel) and fans it out to subscribers.

        ``from_`` is shown to subscribers as ``from``. ``idempotency_key``
        (1 to 256 bytes) makes the publish safe to repeat: the same key
        returns the first result; derive it from your own record's id. When
        absent a UUID4 is generated, so at least this call's own retries
        never publish twice. Returns once the store committed.
        """
        v, status = self._call(_publish_request(channels, data, from_, idempotency_key))
        try:
            return PublishResult.from_json(v)
        except _Shape as e:
            raise self._shape("publish", e, status) from None

    def signal(self, channel: str, data: Any, *, from_: str | None = None) -> None:
        """Sends an ephemeral ``signal`` (typing indicators...): fanned out
        to the channel's current subscribers, never stored, no seq. Best
        effort: a retried signal may be delivered twice."""
        self._call(_signal_request(channel, data, from_))

    def history(self, channel: str, *, after: int = 0, limit: int = 100) -> HistoryPage:
        """The channel's messages with seq greater than ``after``, at most
        ``limit`` (1 to 1000), in seq order."""
        v, status = self._call(_history_request(channel, after, limit))
        try:
            return HistoryPage.from_json(v)
        except _Shape as e:
            raise self._shape("history", e, status) from None

    def iter_history(self, channel: str, *, after: int = 0, page_size: int = 100) -> Iterator[Message]:
        """Every message of the channel after ``after``, page by page, until
        the channel's last seq as of the last page read."""
        while True:
            page = self.history(channel, after=after, limit=page_size)
            yield from page.messages
            if _history_done(page):
                return
            after = page.messages[-1].seq

    def positions(self, channels: str | Sequence[str]) -> dict[str, int]:
        """Each channel's last seq (0 for a channel without messages)."""
        out: dict[str, int] = {}
        for req in _positions_requests(channels):
            v, status = self._call(req)
            try:
                out.update(_positions_of(v))
            except _Shape as e:
                raise self._shape("positions", e, status) from None
        return out

    def presence(self, channel: str) -> list[Client]:
        """The clients subscribed to the channel now."""
        v, status = self._call(_Request("GET", _channel_path(channel, "presence")))
        try:
            return _presence_of(v)
        except _Shape as e:
            raise self._shape("presence", e, status) from None


class AsyncHerald(_Base):
    """The asyncio twin of :class:`Herald` (``httpx.AsyncClient``): the
    same calls, awaited. Use it as an async context manager, or await
    :meth:`aclose`."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        super().__init__(
            url, api_key, timeout=timeout, retries=retries, backoff=backoff, max_backoff=max_backoff
        )
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=httpx.Timeout(timeout)
        )

    async def __aenter__(self) -> AsyncHerald:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def _call(self, req: _Request) -> tuple[Any, int]:
        headers = {"Content-Type": "application/json"} if req.body is not None else None
        for attempt in range(self.retries + 1):
            try:
                resp = await self._http.request(
                    req.method, req.path, params=req.params, content=req.body, headers=headers
                )
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise TransportError(
                        f"{req.method} {req.path}: {type(e).__name__}: {e} "
                        f"(after {attempt + 1} attempt(s))"
                    ) from e
            else:
                if not (self._retryable(resp) and attempt < self.retries):
                    return self._answer(resp), resp.status_code
            await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def publish(
        self,
        channels: str | Sequence[str],
        data: Any,
        *,
        from_: str | None = None,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """See :meth:`Herald.publish`."""
        v, status = await self._call(_publish_request(channels, data, from_, idempotency_key))
        try:
            return PublishResult.from_json(v)
        except _Shape as e:
            raise self._shape("publish", e, status) from None

    async def signal(self, channel: str, data: Any, *, from_: str | None = None) -> None:
        """See :meth:`Herald.signal`."""
        await self._call(_signal_request(channel, data, from_))

    async def history(self, channel: str, *, after: int = 0, limit: int = 100) -> HistoryPage:
        """See :meth:`Herald.history`."""
        v, status = await self._call(_history_request(channel, after, limit))
        try:
            return HistoryPage.from_json(v)
        except _Shape as e:
            raise self._shape("history", e, status) from None

    async def iter_history(
        self, channel: str, *, after: int = 0, page_size: int = 100
    ) -> AsyncIterator[Message]:
        """See :meth:`Herald.iter_history`; ``async for m in h.iter_history(...)``."""
        while True:
            page = await self.history(channel, after=after, limit=page_size)
            for m in page.messages:
                yield m
            if _history_done(page):
                return
            after = page.messages[-1].seq

    async def positions(self, channels: str | Sequence[str]) -> dict[str, int]:
        """See :meth:`Herald.positions`."""
        out: dict[str, int] = {}
        for req in _positions_requests(channels):
            v, status = await self._call(req)
            try:
                out.update(_positions_of(v))
            except _Shape as e:
                raise self._shape("positions", e, status) from None
        return out

    async def presence(self, channel: str) -> list[Client]:
        """See :meth:`Herald.presence`."""
        v, status = await self._call(_Request("GET", _channel_path(channel, "presence")))
        try:
            return _presence_of(v)
        except _Shape as e:
            raise self._shape("presence", e, status) from None
