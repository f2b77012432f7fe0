import uuid

from django.db import models


class Message(models.Model):
    """A chat message as the app stores it; herald only delivers it.

    The primary key is a UUID, not an auto-increment: the herald idempotency
    key is derived from it, and a counter restarting at 1 (a reset dev
    database) would reuse keys herald still remembers (24 h by default).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation_id = models.CharField(max_length=195, db_index=True)
    site_id = models.PositiveIntegerField()
    sender = models.CharField(max_length=200)
    role = models.CharField(max_length=20)
    content = models.TextField()
    created = models.DateTimeField(auto_now_add=True)
