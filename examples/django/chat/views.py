"""POST /conversations/<id>/messages: store a chat message, then publish it
to the conversation (chat_<id>) and to the site's operator dashboard
(dashboard_website_<site>) in ONE herald publish: one message id, one seq
per channel, both screens updated at once."""

import json
import logging
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from herald_client import HeraldError, PublishResult

from .herald import get_client
from .models import Message

log = logging.getLogger("chat")

ROLES = {"user", "operator", "bot"}


def publish_message(m: Message) -> PublishResult:
    """Publishes a stored message. The idempotency key comes from the
    message's own id, so calling this again for the same message (a retry
    after a timeout, a background re-send) never shows it twice: herald
    returns the first result."""
    return get_client().publish(
        [f"chat_{m.conversation_id}", f"dashboard_website_{m.site_id}"],
        {
            "id": str(m.id),
            "conversation": m.conversation_id,
            "role": m.role,
            "content": m.content,
        },
        from_=m.sender,
        idempotency_key=f"chat-message-{m.id}",
    )


def _bad(why: str) -> JsonResponse:
    return JsonResponse({"error": why}, status=400)


@csrf_exempt  # an API endpoint: authenticate it your usual way (session, token)
@require_POST
def post_message(request: HttpRequest, conversation_id: str) -> JsonResponse:
    try:
        body: Any = json.loads(request.body)
    except ValueError:
        return _bad("body is not JSON")
    if not isinstance(body, dict):
        return _bad("body must be a JSON object")
    site, content = body.get("site"), body.get("content")
    sender, role = body.get("sender", "visitor:anonymous"), body.get("role", "user")
    if not isinstance(site, int) or isinstance(site, bool) or site < 0:
        return _bad("site must be a non-negative integer")
    if not isinstance(content, str) or not content.strip() or len(content) > 4000:
        return _bad("content must be 1 to 4000 characters")
    if not isinstance(sender, str) or not sender or role not in ROLES:
        return _bad(f"sender must be a string and role one of {sorted(ROLES)}")

    m = Message.objects.create(
        conversation_id=conversation_id, site_id=site, sender=sender, role=role, content=content
    )
    try:
        r = publish_message(m)
    except HeraldError as e:
        # The message is stored; only the live update failed (after the
        # client's own retries). Re-sending later with publish_message(m)
        # is safe, thanks to the idempotency key.
        log.warning("publish of message %s failed: %s", m.id, e)
        return JsonResponse({"id": str(m.id), "published": False, "error": e.code}, status=502)
    return JsonResponse({"id": str(m.id), "published": True, "herald_id": r.id, "seqs": r.seqs}, status=201)
