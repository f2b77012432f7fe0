from django.urls import re_path

from chat import views

urlpatterns = [
    # The id becomes part of the channel name chat_<id>, so it may only use
    # channel characters (PROTOCOL.md section 1), at most 195 of them.
    re_path(
        r"^conversations/(?P<conversation_id>[A-Za-z0-9_.:@=-]{1,195})/messages$",
        views.post_message,
        name="post-message",
    ),
]
