"""Minting the JWTs browsers and apps connect with (PROTOCOL.md section 3),
with the same claims as ``herald token`` (``crates/herald-auth/src/mint.rs``).

A connection token::

    {"sub": "op:42", "iat": 1767222000, "exp": 1767225600,
     "channels": ["dashboard_website_12"],
     "allow": {"subscribe": ["chat_*"], "publish": ["chat_*"]},
     "info": {"name": "Purna"}}

``channels`` and each ``allow`` list appear only when non-empty, ``allow``
only when one of its lists does, ``info``/``aud``/``iss`` only when given.
Names and patterns are checked here (``ValueError``), since herald would
only refuse the token at connect time, with close code 4001.

HS256 takes the shared secret herald is started with (``--jwt-secret``).
RS256, ES256 and EdDSA take a PEM private key whose public half is in
herald's ``[[auth.keys]]`` under ``kid``; they need the ``cryptography``
package (``pip install 'herald-client[crypto]'``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import jwt

from .names import validate_channel, validate_pattern

__all__ = ["ALGORITHMS", "MAX_INFO_BYTES", "mint_token", "subscription_token"]

#: The algorithms herald verifies (pinned per key on herald's side).
ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")

#: Largest ``info`` object, as compact JSON.
MAX_INFO_BYTES = 1024

Key = str | bytes
Ttl = int | float | timedelta | None


def _names(v: str | Sequence[str], what: str, check: Callable[[str], str]) -> list[str]:
    # A lone string is one name, not a sequence of one-letter names.
    items = [v] if isinstance(v, str) else list(v)
    out = []
    for item in items:
        try:
            out.append(check(item))
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
    return out


def _sub(sub: str) -> str:
    if not isinstance(sub, str) or not sub:
        raise ValueError("sub must be a non-empty string")
    return sub


def _times(ttl: Ttl, now: int | float | None) -> dict[str, int]:
    iat = int(time.time() if now is None else now)
    if ttl is None:
        return {"iat": iat}
    secs = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(secs, bool) or secs <= 0:
        raise ValueError("ttl must be a positive number of seconds (or None for no exp)")
    return {"iat": iat, "exp": iat + int(secs)}


def _sign(
    claims: dict[str, Any],
    key: Key,
    algorithm: str,
    kid: str | None,
    audience: str | None,
    issuer: str | None,
) -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
    if not key:
        raise ValueError("the secret or key is empty")
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    headers = {"kid": kid} if kid is not None else None
    try:
        return jwt.encode(claims, key, algorithm=algorithm, headers=headers)
    except NotImplementedError as e:  # PyJWT without cryptography
        raise RuntimeError(
            f"{algorithm} needs the cryptography package: pip install 'herald-client[crypto]'"
        ) from e


def mint_token(
    secret_or_key: Key,
    *,
    sub: str,
    channels: str | Sequence[str] = (),
    allow_subscribe: str | Sequence[str] = (),
    allow_publish: str | Sequence[str] = (),
    allow_signal: str | Sequence[str] = (),
    allow_presence: str | Sequence[str] = (),
    info: Mapping[str, Any] | None = None,
    ttl: Ttl = 3600,
    algorithm: str = "HS256",
    kid: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    now: int | float | None = None,
) -> str:
    """A connection token for ``sub``.

    Args:
        secret_or_key: the HS256 secret, or a PEM private key for RS256,
            ES256 or EdDSA.
        sub: who this is; shown to others as ``from``.
        channels: channels subscribed automatically on connect (names).
        allow_subscribe, allow_publish, allow_signal, allow_presence:
            patterns (``chat_*``) the client may use that operation on.
        info: a JSON object of at most 1 KiB shown in presence.
        ttl: lifetime in seconds (or a ``timedelta``); ``None`` for no
            ``exp``, which herald refuses unless ``[auth] require_exp`` is off.
        algorithm: ``HS256`` (default), ``RS256``, ``ES256`` or ``EdDSA``.
        kid: key id for the header, selecting herald's ``[[auth.keys]]`` entry.
        audience, issuer: ``aud`` / ``iss``, when herald checks them.
        now: the issue time in unix seconds (default: the clock).

    Raises:
        ValueError: an empty ``sub``, a bad channel name or pattern, an
            ``info`` that is not a JSON object or is over 1 KiB, a bad
            ``ttl`` or ``algorithm``.
    """
    claims: dict[str, Any] = {"sub": _sub(sub), **_times(ttl, now)}
    auto = _names(channels, "channels", validate_channel)
    if auto:
        claims["channels"] = auto
    allow: dict[str, list[str]] = {}
    for op, patterns in (
        ("subscribe", allow_subscribe),
        ("publish", allow_publish),
        ("signal", allow_signal),
        ("presence", allow_presence),
    ):
        checked = _names(patterns, f"allow_{op}", validate_pattern)
        if checked:
            allow[op] = checked
    if allow:
        claims["allow"] = allow
    if info is not None:
        if not isinstance(info, Mapping):
            raise ValueError("info must be a JSON object (a mapping)")
        try:
            size = len(
                json.dumps(info, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"info is not JSON: {e}") from None
        if size > MAX_INFO_BYTES:
            raise ValueError(f"info is {size} bytes of JSON, more than {MAX_INFO_BYTES}")
        claims["info"] = dict(info)
    return _sign(claims, secret_or_key, algorithm, kid, audience, issuer)


def subscription_token(
    secret: Key,
    *,
    sub: str,
    channel: str,
    ttl: Ttl = 3600,
    algorithm: str = "HS256",
    kid: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    now: int | float | None = None,
) -> str:
    """A subscription token granting ``sub`` one ``channel``:
    ``{"sub", "channel", "iat", "exp"}``, passed as ``token`` in a
    ``subscribe`` op. Herald answers ``forbidden`` when it is invalid,
    expired, or for another ``sub`` or channel. Same keys and arguments as
    :func:`mint_token`."""
    claims: dict[str, Any] = {"sub": _sub(sub), "channel": validate_channel(channel), **_times(ttl, now)}
    return _sign(claims, secret, algorithm, kid, audience, issuer)
