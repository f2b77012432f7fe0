"""Exceptions raised by :class:`~herald_client.Herald` and
:class:`~herald_client.AsyncHerald`.

Every failure of an ingest API call is a :class:`HeraldError` carrying the
error ``code`` of PROTOCOL.md section 8, the HTTP ``status`` and herald's
``message``; each code has its own subclass so callers can ``except`` the
one they handle. A call that never got an answer (connection refused, reset,
timed out) on any attempt raises :class:`TransportError`.
"""

from __future__ import annotations

__all__ = [
    "BadChannel",
    "BadRequest",
    "Conflict",
    "HeraldError",
    "Internal",
    "NotFound",
    "RateLimited",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "error_for",
]


class HeraldError(Exception):
    """An ingest API call failed.

    Attributes:
        code: herald's error code (``"bad_channel"``, ``"conflict"``, ...;
            ``"transport"`` for :class:`TransportError`).
        status: the HTTP status, or ``None`` when no answer arrived.
        message: herald's human-readable message.
    """

    #: The code this class stands for (the base class stands for any).
    CODE: str = ""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.code = code
        self.status = status
        self.message = message


class BadRequest(HeraldError):
    """400 ``bad_request``: malformed body, both ``channel`` and
    ``channels``, an empty or duplicated channel list, ``limit`` out of
    range, a key longer than 256 bytes."""

    CODE = "bad_request"


class BadChannel(HeraldError):
    """400 ``bad_channel``: a channel name outside PROTOCOL.md section 1."""

    CODE = "bad_channel"


class Unauthorized(HeraldError):
    """401 ``unauthorized``: missing or wrong API key."""

    CODE = "unauthorized"


class NotFound(HeraldError):
    """404 ``not_found``: no such path (a wrong base URL, usually)."""

    CODE = "not_found"


class Conflict(HeraldError):
    """409 ``conflict``: an idempotency key reused with another channel set
    or other data."""

    CODE = "conflict"


class TooLarge(HeraldError):
    """413 ``too_large``: ``data`` over the limit (16 KiB of JSON by
    default), or the whole body over it."""

    CODE = "too_large"


class RateLimited(HeraldError):
    """429 ``rate_limited``. Never retried by the SDK."""

    CODE = "rate_limited"


class Unavailable(HeraldError):
    """503 ``unavailable``: the store or the bus is unreachable. Retried by
    the SDK; raised once the retries are used up."""

    CODE = "unavailable"


class Internal(HeraldError):
    """500 ``internal``: a bug or an unexpected failure in herald."""

    CODE = "internal"


class TransportError(HeraldError):
    """No answer from herald on any attempt (connection refused or reset,
    timeout, broken HTTP). ``__cause__`` is the last httpx exception."""

    CODE = "transport"

    def __init__(self, message: str) -> None:
        super().__init__(self.CODE, message, None)


_BY_CODE: dict[str, type[HeraldError]] = {
    cls.CODE: cls
    for cls in (
        BadRequest,
        BadChannel,
        Unauthorized,
        NotFound,
        Conflict,
        TooLarge,
        RateLimited,
        Unavailable,
        Internal,
    )
}

_BY_STATUS: dict[int, type[HeraldError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    429: RateLimited,
    500: Internal,
    503: Unavailable,
}


def error_for(status: int, code: str | None, message: str) -> HeraldError:
    """The exception for an error answer: by ``code`` when herald sent a
    known one, else by HTTP ``status`` (e.g. a proxy's bare 502), else the
    base :class:`HeraldError`."""
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status) or HeraldError
    return cls(code or (cls.CODE or f"http_{status}"), message, status)
