"""herald-client: the Python SDK of herald's ingest API.

Layout:

- ``client``: :class:`Herald` (blocking) and :class:`AsyncHerald` (asyncio):
  publish, signal, history, positions, presence; retries with backoff and
  idempotency keys.
- ``errors``: :class:`HeraldError` and one subclass per ingest error code.
- ``models``: the typed answers (:class:`PublishResult`,
  :class:`HistoryPage`, :class:`Message`, :class:`Client`).
- ``tokens``: :func:`mint_token` and :func:`subscription_token` (PyJWT),
  with the claims of ``herald token``.
- ``webhooks``: :func:`verify_webhook` / :func:`sign_webhook` for the
  ``Herald-Signature`` header, and :class:`WebhookEvent`.
- ``names``: channel name and pattern rules (PROTOCOL.md section 1).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .client import AsyncHerald, Herald
from .errors import (
    BadChannel,
    BadRequest,
    Conflict,
    HeraldError,
    Internal,
    NotFound,
    RateLimited,
    TooLarge,
    TransportError,
    Unauthorized,
    Unavailable,
)
from .models import Client, HistoryPage, Message, PublishResult
from .names import is_valid_channel, is_valid_pattern, pattern_matches, validate_channel, validate_pattern
from .tokens import mint_token, subscription_token
from .webhooks import (
    SIGNATURE_HEADER,
    WebhookEvent,
    WebhookSignatureError,
    sign_webhook,
    verify_webhook,
)

__all__ = [
    "SIGNATURE_HEADER",
    "AsyncHerald",
    "BadChannel",
    "BadRequest",
    "Client",
    "Conflict",
    "Herald",
    "HeraldError",
    "HistoryPage",
    "Internal",
    "Message",
    "NotFound",
    "PublishResult",
    "RateLimited",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "WebhookEvent",
    "WebhookSignatureError",
    "__version__",
    "is_valid_channel",
    "is_valid_pattern",
    "mint_token",
    "pattern_matches",
    "sign_webhook",
    "subscription_token",
    "validate_channel",
    "validate_pattern",
    "verify_webhook",
]
