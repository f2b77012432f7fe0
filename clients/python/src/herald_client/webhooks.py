"""Verifying herald's webhooks.

Herald POSTs each event as JSON with the header::

    Herald-Signature: t=1767225600,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd

where ``v1`` is the lowercase hex HMAC-SHA256, keyed with the webhook
secret, of ``f"{t}."`` followed by the raw request body. While a secret is
being rotated herald sends one ``v1=`` per secret; any match passes.
:func:`verify_webhook` checks the signature over the exact bytes received
(never a re-serialized body), in constant time, and refuses a timestamp
more than ``tolerance`` seconds away from now, so a captured request cannot
be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .models import Client, Message, _Shape

__all__ = [
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "WebhookEvent",
    "WebhookSignatureError",
    "sign_webhook",
    "verify_webhook",
]

#: The request header carrying the signature.
SIGNATURE_HEADER: Final = "Herald-Signature"

#: The event types herald sends today (others may come; they parse too).
EVENT_TYPES: Final = ("publish", "join", "leave", "connect", "disconnect")

Secret = str | bytes
Secrets = Secret | Sequence[Secret]


class WebhookSignatureError(ValueError):
    """The signature header is missing or malformed, matches none of the
    secrets, or its timestamp is outside the tolerance. Answer the request
    with 400 (or 401) and do not act on it."""


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One webhook event::

        {"id": "ev_...", "type": "publish", "ts": 1767225600123,
         "channel": "chat_42",
         "message": {"channel", "seq", "id", "ts", "from", "data"},
         "client": {"sub", "conn", "info"}}
    """

    id: str
    """Event id (``ev_...``): the same on every delivery attempt of this
    event, so use it to drop duplicates."""
    type: str
    """``publish``, ``join``, ``leave``, ``connect`` or ``disconnect``."""
    ts: int
    """When it happened, in milliseconds since the Unix epoch."""
    channel: str | None = None
    """The channel, for publish, join and leave."""
    message: Message | None = None
    """The published message, for publish."""
    client: Client | None = None
    """The client, for join, leave, connect and disconnect."""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The whole decoded body, fields this SDK does not know included."""

    @classmethod
    def from_json(cls, v: object) -> WebhookEvent:
        """Parses a decoded event body; ``ValueError`` when it lacks the
        fields every event has or one has the wrong type."""
        if not isinstance(v, dict):
            raise ValueError("webhook event is not a JSON object")
        ev_id, ev_type, ts = v.get("id"), v.get("type"), v.get("ts")
        if not isinstance(ev_id, str) or not isinstance(ev_type, str):
            raise ValueError("webhook event lacks a string id or type")
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise ValueError("webhook event lacks an integer ts")
        channel = v.get("channel")
        if channel is not None and not isinstance(channel, str):
            raise ValueError("webhook event channel is not a string")
        try:
            message = Message.from_json(v["message"]) if v.get("message") is not None else None
            client = Client.from_json(v["client"]) if v.get("client") is not None else None
        except _Shape as e:
            raise ValueError(f"webhook event: {e}") from None
        if channel is None and message is not None:
            channel = message.channel
        return cls(
            id=ev_id, type=ev_type, ts=ts, channel=channel, message=message, client=client, raw=v
        )


def _secrets(secret: Secrets) -> list[bytes]:
    items: Sequence[Secret] = [secret] if isinstance(secret, (str, bytes)) else secret
    out = [s.encode() if isinstance(s, str) else bytes(s) for s in items]
    if not out or not all(out):
        raise ValueError("webhook secret is empty")
    return out


def _mac(secret: bytes, t: int, body: bytes) -> str:
    return hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def sign_webhook(body: bytes, secret: Secrets, t: int | None = None) -> str:
    """The ``Herald-Signature`` value herald would send for ``body`` at unix
    time ``t`` (default now): one ``v1=`` per secret. For tests and for
    replaying events to your own endpoint."""
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError("body must be bytes")
    t = int(time.time()) if t is None else int(t)
    sigs = ",".join(f"v1={_mac(s, t, bytes(body))}" for s in _secrets(secret))
    return f"t={t},{sigs}"


def _parse_header(header: str) -> tuple[int, list[str]]:
    t: int | None = None
    v1: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if t is not None or not value.isascii() or not value.isdigit():
                raise WebhookSignatureError("signature header has a bad or repeated t=")
            t = int(value)
        elif key == "v1":
            v1.append(value.strip().lower())
        # Other schemes (a future v2=) are skipped, so adding one on the
        # server does not break this verifier.
    if t is None:
        raise WebhookSignatureError("signature header has no t=")
    if not v1:
        raise WebhookSignatureError("signature header has no v1= signature")
    return t, v1


def verify_webhook(
    raw_body: bytes,
    signature_header: str | None,
    secret: Secrets,
    *,
    tolerance: int | float = 300,
    now: int | float | None = None,
) -> WebhookEvent:
    """Checks a webhook request and returns its event.

    Args:
        raw_body: the request body exactly as received (bytes).
        signature_header: the ``Herald-Signature`` header (``None`` when
            absent, which fails).
        secret: the webhook secret, or several during a rotation; a
            signature made with any of them passes.
        tolerance: largest accepted distance, in seconds, between ``t`` and
            now, either way.
        now: the current unix time (default: the clock).

    Raises:
        WebhookSignatureError: a missing or malformed header, no matching
            signature, or ``t`` outside ``now ± tolerance``.
        ValueError: a correctly signed body that is not a herald event.
    """
    if not isinstance(raw_body, (bytes, bytearray)):
        raise TypeError("raw_body must be the raw request body as bytes")
    if not signature_header:
        raise WebhookSignatureError(f"missing {SIGNATURE_HEADER} header")
    keys = _secrets(secret)
    t, given = _parse_header(signature_header)
    current = time.time() if now is None else now
    if abs(current - t) > tolerance:
        raise WebhookSignatureError(
            f"signature timestamp {t} is more than {tolerance} s away from now"
        )
    body = bytes(raw_body)
    # Compare every candidate with every secret, without stopping at the
    # first match, so the time taken does not tell which one matched.
    ok = False
    for k in keys:
        want = _mac(k, t, body)
        for sig in given:
            ok |= hmac.compare_digest(want, sig)
    if not ok:
        raise WebhookSignatureError("no signature matches the secret")
    try:
        decoded = json.loads(body)
    except ValueError as e:
        raise ValueError(f"webhook body is not JSON: {e}") from None
    return WebhookEvent.from_json(decoded)
