"""Channel names and grant patterns (PROTOCOL.md section 1).

A channel name is 1 to 200 bytes of ``A-Z a-z 0-9 _ - . : @ =``; a pattern
is the same with ``*`` also allowed, where ``*`` matches any run of allowed
characters, the empty run included. These checks run client-side where a
mistake would otherwise only show up later and far away (a token herald
refuses at connect time with close 4001); the ingest API checks names itself
and answers :class:`~herald_client.BadChannel`.
"""

from __future__ import annotations

import re

__all__ = [
    "MAX_CHANNEL_LEN",
    "is_valid_channel",
    "is_valid_pattern",
    "pattern_matches",
    "validate_channel",
    "validate_pattern",
]

#: Longest channel name (and pattern), in bytes.
MAX_CHANNEL_LEN = 200

_CHANNEL = re.compile(r"[A-Za-z0-9_.:@=-]+")
_PATTERN = re.compile(r"[A-Za-z0-9_.:@=*-]+")
_RUN = "[A-Za-z0-9_.:@=-]*"


def _check(name: object, rx: re.Pattern[str], what: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} is empty")
    # All allowed characters are ASCII, so characters = bytes once matched;
    # the length is checked on the UTF-8 form for an honest message.
    if len(name.encode("utf-8")) > MAX_CHANNEL_LEN:
        raise ValueError(f"{what} {name[:40]!r}... is longer than {MAX_CHANNEL_LEN} bytes")
    if rx.fullmatch(name) is None:
        allowed = "A-Z a-z 0-9 _ - . : @ =" + (" *" if rx is _PATTERN else "")
        raise ValueError(f"{what} {name!r} contains a character outside {allowed}")
    return name


def validate_channel(name: str) -> str:
    """Returns ``name`` if it is a valid channel name, else raises ``ValueError``."""
    return _check(name, _CHANNEL, "channel name")


def validate_pattern(pattern: str) -> str:
    """Returns ``pattern`` if it is a valid grant pattern, else raises ``ValueError``."""
    return _check(pattern, _PATTERN, "pattern")


def is_valid_channel(name: str) -> bool:
    """Whether ``name`` is a valid channel name."""
    try:
        validate_channel(name)
    except ValueError:
        return False
    return True


def is_valid_pattern(pattern: str) -> bool:
    """Whether ``pattern`` is a valid grant pattern."""
    try:
        validate_pattern(pattern)
    except ValueError:
        return False
    return True


def pattern_matches(pattern: str, channel: str) -> bool:
    """Whether grant ``pattern`` matches ``channel``, with herald's reference
    semantics: the pattern as an anchored regular expression, each ``*``
    turned into ``[A-Za-z0-9_.:@=-]*``. Raises ``ValueError`` for an invalid
    pattern; an invalid channel name matches nothing."""
    validate_pattern(pattern)
    if not is_valid_channel(channel):
        return False
    rx = _RUN.join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(rx, channel) is not None
