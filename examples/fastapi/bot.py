"""The AI bot, as a herald webhook receiver.

Herald POSTs an event for every publish; this app verifies the
Herald-Signature header and plays the bot:

- a visitor's message (``data.role == "user"``) in a ``chat_*`` channel gets
  a reply, published to the same channel as ``{"role": "bot", "content": ...}``;
- an operator's message (``from`` starting with ``op:``) with
  ``data.type == "handoff"`` hands the conversation to that human: the bot
  announces it with a ``handoff`` event and stays silent there from then on.

Every publish carries an idempotency key derived from the message it
answers, so a webhook delivered twice never produces two replies.

Run: uvicorn bot:app --port 8002   (see README.md for the environment)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from herald_client import (
    SIGNATURE_HEADER,
    AsyncHerald,
    WebhookEvent,
    WebhookSignatureError,
    verify_webhook,
)

log = logging.getLogger("bot")

BOT_SUB = "bot:ai"


def answer(text: str) -> str:
    """The "AI": a few canned answers. Put your model call here."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    if words & {"hello", "hi", "hey"}:
        return "Hello! I'm the assistant. How can I help you today?"
    if words & {"price", "prices", "cost", "plan", "plans"}:
        return "Our plans start at $10 a month. Want me to send you the details?"
    if words & {"human", "operator", "agent", "person"}:
        return "I'm asking an operator to join this conversation."
    return "Thanks for your message! Let me look into that for you."


@dataclass
class Bot:
    herald: AsyncHerald
    # Conversations an operator took over. In production keep this in your
    # database: several bot workers must agree on it.
    handed_off: set[str] = field(default_factory=set)

    async def handle(self, ev: WebhookEvent) -> str:
        """Acts on one event; returns what it did (for logs and tests)."""
        m = ev.message
        if ev.type != "publish" or m is None or not m.channel.startswith("chat_"):
            return "ignored"
        data = m.data if isinstance(m.data, dict) else {}
        sender = m.from_ or ""
        if data.get("type") == "handoff" and sender.startswith("op:"):
            self.handed_off.add(m.channel)
            await self.herald.publish(
                m.channel,
                {"type": "handoff", "role": "bot", "operator": sender,
                 "content": "An operator has joined the conversation."},
                from_=BOT_SUB,
                idempotency_key=f"bot-handoff:{m.id}",
            )
            return "handoff"
        if data.get("role") != "user":
            return "ignored"  # the bot's own replies, operators' messages...
        if m.channel in self.handed_off:
            return "handed-off"
        content = data.get("content")
        await self.herald.publish(
            m.channel,
            {"role": "bot", "content": answer(content if isinstance(content, str) else ""),
             "reply_to": m.id},
            from_=BOT_SUB,
            idempotency_key=f"bot-reply:{m.id}",
        )
        return "replied"


def _secrets() -> list[str]:
    # Comma-separated: during a rotation, give the new and the old secret.
    raw = os.environ.get("APP_WEBHOOK_SECRET", "whsec_dev")
    return [s for s in (p.strip() for p in raw.split(",")) if s]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = os.environ.get("APP_HERALD_URL", "http://127.0.0.1:8080")
    key = os.environ.get("APP_HERALD_API_KEY", "devkey")
    async with AsyncHerald(url, key, timeout=5, retries=3) as herald:
        app.state.bot = Bot(herald)
        app.state.secrets = _secrets()
        yield


app = FastAPI(title="herald bot example", lifespan=lifespan)


@app.post("/webhooks/herald")
async def webhook(request: Request) -> JSONResponse:
    raw = await request.body()  # the exact bytes: the signature covers them
    try:
        ev = verify_webhook(raw, request.headers.get(SIGNATURE_HEADER), request.app.state.secrets)
    except WebhookSignatureError as e:
        log.warning("refused a webhook: %s", e)
        return JSONResponse({"error": "bad signature"}, status_code=400)
    except ValueError as e:
        return JSONResponse({"error": f"bad event: {e}"}, status_code=400)
    # A failed publish raises; the 500 makes herald deliver the event again,
    # and the idempotency keys make that retry safe.
    action = await request.app.state.bot.handle(ev)
    log.info("event %s (%s): %s", ev.id, ev.type, action)
    return JSONResponse({"ok": True, "action": action})
