"""The chat endpoint of the Django example, in FastAPI with the async client.

POST /conversations/{conversation_id}/messages stores a chat message and
publishes it to chat_<conversation_id> and dashboard_website_<site> in ONE
herald publish, with an idempotency key derived from the message's id.

Run: uvicorn app:app --port 8001   (see README.md for the environment)
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from herald_client import AsyncHerald, HeraldError, PublishResult

log = logging.getLogger("chat")


class NewMessage(BaseModel):
    site: int = Field(ge=0)
    content: str = Field(min_length=1, max_length=4000)
    sender: str = Field(default="visitor:anonymous", min_length=1, max_length=200)
    role: Literal["user", "operator", "bot"] = "user"


class StoredMessage(NewMessage):
    id: uuid.UUID
    conversation_id: str


# Stand-in for your database. UUIDs, not a counter that restarts at 1 with
# the process: the idempotency key is derived from the id, and herald
# remembers keys for 24 h.
MESSAGES: dict[uuid.UUID, StoredMessage] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Not HERALD_*: herald refuses unknown HERALD_* variables in its shell.
    url = os.environ.get("APP_HERALD_URL", "http://127.0.0.1:8080")
    key = os.environ.get("APP_HERALD_API_KEY", "devkey")
    async with AsyncHerald(url, key, timeout=5, retries=3) as herald:
        app.state.herald = herald
        yield


app = FastAPI(title="herald chat example", lifespan=lifespan)


async def publish_message(herald: AsyncHerald, m: StoredMessage) -> PublishResult:
    """Publishes a stored message; safe to call again for the same message."""
    return await herald.publish(
        [f"chat_{m.conversation_id}", f"dashboard_website_{m.site}"],
        {"id": str(m.id), "conversation": m.conversation_id, "role": m.role, "content": m.content},
        from_=m.sender,
        idempotency_key=f"chat-message-{m.id}",
    )


@app.post("/conversations/{conversation_id}/messages", status_code=201)
async def post_message(
    request: Request,
    # Part of the channel name chat_<id>: channel characters only.
    conversation_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:@=-]{1,195}$")],
    body: NewMessage,
) -> JSONResponse:
    m = StoredMessage(id=uuid.uuid4(), conversation_id=conversation_id, **body.model_dump())
    MESSAGES[m.id] = m
    try:
        r = await publish_message(request.app.state.herald, m)
    except HeraldError as e:
        # Stored, not delivered live; publish_message(m) may be retried later.
        log.warning("publish of message %s failed: %s", m.id, e)
        return JSONResponse({"id": str(m.id), "published": False, "error": e.code}, status_code=502)
    return JSONResponse(
        {"id": str(m.id), "published": True, "herald_id": r.id, "seqs": r.seqs}, status_code=201
    )
