"""The examples, run against a real herald: the Django view (Django's test
client), the FastAPI endpoint and the FastAPI bot (FastAPI's TestClient),
observed from a WebSocket subscriber."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import chan
from harness import REPO, HeraldDev, free_port
from herald_client import AsyncHerald, Herald, PublishResult, mint_token, sign_webhook
from wsclient import WS

EXAMPLES = REPO / "examples"


def load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(mod)
    return mod


def watcher(dev: HeraldDev, *channels: str) -> WS:
    ws = WS(dev.ws_url, mint_token(dev.secret, sub="op:watch", allow_subscribe=list(channels)))
    ws.welcome()
    for c in channels:
        ws.subscribe(c)
    return ws


@pytest.fixture
def app_env(dev: HeraldDev, monkeypatch: pytest.MonkeyPatch) -> HeraldDev:
    monkeypatch.setenv("APP_HERALD_URL", dev.api_url)
    monkeypatch.setenv("APP_HERALD_API_KEY", dev.api_key)
    return dev


# ---------------------------------------------------------------- Django


@pytest.fixture(scope="module")
def django_client(dev: HeraldDev) -> Iterator[Any]:
    env = {"APP_HERALD_URL": dev.api_url, "APP_HERALD_API_KEY": dev.api_key, "CHAT_DB": ":memory:",
           "DJANGO_SETTINGS_MODULE": "chatsite.settings"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sys.path.insert(0, str(EXAMPLES / "django"))
    try:
        import django
        from django.core.management import call_command
        from django.test import Client

        django.setup()
        call_command("migrate", verbosity=0)
        yield Client()
    finally:
        sys.path.remove(str(EXAMPLES / "django"))
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_django_view_publishes_to_chat_and_dashboard(dev: HeraldDev, django_client: Any) -> None:
    conv = str(uuid.uuid4())
    site = int(time.time() * 1000) % 10**9
    chat, dash = f"chat_{conv}", f"dashboard_website_{site}"
    with watcher(dev, chat, dash) as ws:
        resp = django_client.post(f"/conversations/{conv}/messages", content_type="application/json",
                                  data={"site": site, "content": "Hello from customer", "sender": "visitor:abc"})
        assert resp.status_code == 201, resp.content
        body = resp.json()
        assert body["published"] and body["seqs"] == {chat: 1, dash: 1}
        a, b = ws.message(chat), ws.message(dash)
    assert a["id"] == b["id"] == body["herald_id"]
    assert a["from"] == "visitor:abc"
    assert a["data"] == {"id": body["id"], "conversation": conv, "role": "user", "content": "Hello from customer"}

    # Publishing the same stored message again is idempotent: same herald
    # message, nothing new in either channel.
    from chat.models import Message
    from chat.views import publish_message

    again = publish_message(Message.objects.get(pk=body["id"]))
    assert again.id == body["herald_id"]
    with Herald(dev.api_url, dev.api_key) as h:
        assert h.positions([chat, dash]) == {chat: 1, dash: 1}


def test_django_view_rejects_bad_input(django_client: Any) -> None:
    def post(path: str, data: dict[str, Any]) -> Any:
        return django_client.post(path, data=data, content_type="application/json")

    assert post("/conversations/c1/messages", {"site": "12", "content": "x"}).status_code == 400
    assert post("/conversations/c1/messages", {"site": 12, "content": ""}).status_code == 400
    assert post("/conversations/c1/messages", {"site": 12, "content": "x", "role": "admin"}).status_code == 400
    assert django_client.post("/conversations/c1/messages", data="nope",
                              content_type="application/json").status_code == 400
    assert post("/conversations/bad%20id/messages", {"site": 12, "content": "x"}).status_code == 404
    assert django_client.get("/conversations/c1/messages").status_code == 405


def test_django_view_reports_herald_down(django_client: Any) -> None:
    from django.test import override_settings

    with override_settings(HERALD_URL=f"http://127.0.0.1:{free_port()}"):
        resp = django_client.post("/conversations/c1/messages", content_type="application/json",
                                  data={"site": 1, "content": "stored anyway"})
    assert resp.status_code == 502 and resp.json()["error"] == "transport"


# ---------------------------------------------------------------- FastAPI app


def test_fastapi_endpoint_publishes_to_chat_and_dashboard(app_env: HeraldDev) -> None:
    mod = load("fastapi/app.py", "herald_example_app")
    conv, site = chan("c"), 7
    chat, dash = f"chat_{conv}", f"dashboard_website_{site}"
    with watcher(app_env, chat, dash) as ws, TestClient(mod.app) as client:
        before = Herald(app_env.api_url, app_env.api_key).positions(dash)[dash]
        resp = client.post(f"/conversations/{conv}/messages",
                           json={"site": site, "content": "Hello", "sender": "visitor:q"})
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["seqs"] == {chat: 1, dash: before + 1}
        a, b = ws.message(chat), ws.message(dash)
        assert a["id"] == b["id"] == body["herald_id"] and a["from"] == "visitor:q"
        assert a["data"]["content"] == "Hello" and a["data"]["id"] == body["id"]
        # Same stored message again: the same herald message.
        stored = mod.MESSAGES[uuid.UUID(body["id"])]
        import anyio

        async def republish() -> str:
            async with AsyncHerald(app_env.api_url, app_env.api_key) as h:
                r: PublishResult = await mod.publish_message(h, stored)
                return r.id

        assert anyio.run(republish) == body["herald_id"]
        assert client.post(f"/conversations/{conv}/messages", json={"site": -1, "content": "x"}).status_code == 422
        assert client.post("/conversations/bad!/messages", json={"site": 1, "content": "x"}).status_code == 422


# ---------------------------------------------------------------- FastAPI bot

WEBHOOK_SECRET = "whsec_" + uuid.uuid4().hex


def post_event(client: TestClient, ev: dict[str, Any], secret: str = WEBHOOK_SECRET) -> Any:
    raw = json.dumps(ev).encode()
    return client.post("/webhooks/herald", content=raw,
                       headers={"Herald-Signature": sign_webhook(raw, secret), "Content-Type": "application/json"})


def publish_event(h: Herald, channel: str, data: Any, from_: str) -> dict[str, Any]:
    """Publishes for real, then builds the webhook event herald sends for it."""
    r = h.publish(channel, data, from_=from_)
    m = h.history(channel, after=r.seqs[channel] - 1, limit=1).messages[0]
    return {"id": f"ev_{uuid.uuid4().hex}", "type": "publish", "ts": r.ts, "channel": channel,
            "message": {"channel": m.channel, "seq": m.seq, "id": m.id, "ts": m.ts, "from": m.from_,
                        "data": m.data}}


def test_bot_replies_until_handoff(app_env: HeraldDev, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_WEBHOOK_SECRET", f"whsec_old,{WEBHOOK_SECRET}")
    mod = load("fastapi/bot.py", "herald_example_bot")
    chat = chan("chat")
    h = Herald(app_env.api_url, app_env.api_key)
    with watcher(app_env, chat) as ws, TestClient(mod.app) as client, h:
        # A visitor writes; the bot answers on the same channel.
        ev = publish_event(h, chat, {"role": "user", "content": "Hi, what are your prices?"}, "visitor:abc")
        assert ws.message(chat)["data"]["role"] == "user"
        resp = post_event(client, ev)
        assert resp.json() == {"ok": True, "action": "replied"}
        reply = ws.message(chat)
        assert reply["from"] == "bot:ai" and reply["data"]["role"] == "bot"
        assert reply["data"]["reply_to"] == ev["message"]["id"] and reply["data"]["content"]
        # The same event delivered again: no second reply.
        assert post_event(client, ev).json()["action"] == "replied"
        assert h.positions(chat) == {chat: 2}
        # The bot's own reply comes back as an event too: ignored.
        bot_ev = publish_event(h, chan("chat"), reply["data"], "bot:ai")
        assert post_event(client, bot_ev).json()["action"] == "ignored"

        # A visitor cannot trigger a handoff; an operator can.
        fake = publish_event(h, chat, {"type": "handoff"}, "visitor:abc")
        assert post_event(client, fake).json()["action"] == "ignored"
        op = publish_event(h, chat, {"type": "handoff", "content": "I'll take it from here"}, "op:42")
        assert post_event(client, op).json()["action"] == "handoff"
        ws.message(chat)  # visitor's fake handoff
        ws.message(chat)  # operator's handoff
        announced = ws.message(chat)
        assert announced["from"] == "bot:ai"
        assert announced["data"]["type"] == "handoff" and announced["data"]["operator"] == "op:42"
        before = h.positions(chat)[chat]

        # After the handoff the bot stays silent in this conversation...
        ev2 = publish_event(h, chat, {"role": "user", "content": "hello?"}, "visitor:abc")
        assert post_event(client, ev2).json()["action"] == "handed-off"
        assert h.positions(chat) == {chat: before + 1}  # the visitor's message only
        # ...but still answers elsewhere.
        other = chan("chat")
        ev3 = publish_event(h, other, {"role": "user", "content": "hello"}, "visitor:zz")
        assert post_event(client, ev3).json()["action"] == "replied"
        assert h.positions(other) == {other: 2}


def test_bot_refuses_bad_signatures(app_env: HeraldDev, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_WEBHOOK_SECRET", WEBHOOK_SECRET)
    mod = load("fastapi/bot.py", "herald_example_bot2")
    chat = chan("chat")
    ev = {"id": "ev_1", "type": "publish", "ts": 1, "channel": chat,
          "message": {"channel": chat, "seq": 1, "id": "m_1", "ts": 1, "from": "visitor:a",
                      "data": {"role": "user", "content": "hi"}}}
    with TestClient(mod.app) as client, Herald(app_env.api_url, app_env.api_key) as h:
        assert post_event(client, ev, secret="wrong").status_code == 400
        raw = json.dumps(ev).encode()
        old = sign_webhook(raw, WEBHOOK_SECRET, int(time.time()) - 3600)
        assert client.post("/webhooks/herald", content=raw, headers={"Herald-Signature": old}).status_code == 400
        assert client.post("/webhooks/herald", content=raw).status_code == 400
        assert h.positions(chat) == {chat: 0}


# ------------------------------------------- the bot driven by real webhooks


class _Forward(http.server.BaseHTTPRequestHandler):
    """Hands each request herald makes to the bot app, byte for byte (the
    test venv has no ASGI server; FastAPI's TestClient plays one)."""

    client: TestClient
    lock = threading.Lock()
    actions: list[tuple[str, str]] = []  # (event type, what the bot did)
    # Set (under `lock`) before the app shuts down: a webhook herald sends
    # late must not enter the app while its TestClient closes (a request
    # on the closing portal deadlocks its thread's join). Herald gets a 503
    # and would retry.
    closed = False

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.lock:
            if self.closed:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            resp = self.client.post(self.path, content=raw, headers=dict(self.headers.items()))
        body = resp.content
        if resp.status_code == 200:
            self.actions.append((json.loads(raw)["type"], resp.json()["action"]))
        self.send_response(resp.status_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_bot_driven_by_herald_webhooks(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """README "Connect your backend": ``herald dev --no-bot`` with the
    example's ``herald-webhooks.toml`` (pointed at this test's port) sends
    each visitor message to bot.py as a real signed webhook; the bot's
    answer reaches the visitor over the WebSocket; after an operator's
    handoff it stays silent."""
    port = free_port()
    config = (EXAMPLES / "fastapi" / "herald-webhooks.toml").read_text()
    config = config.replace("http://127.0.0.1:8002/", f"http://127.0.0.1:{port}/")
    assert f"127.0.0.1:{port}" in config
    (tmp_path / "herald.toml").write_text(config)
    dev = HeraldDev(tmp_path, extra=["--no-bot", "--config", str(tmp_path / "herald.toml")])
    monkeypatch.setenv("APP_HERALD_URL", dev.api_url)
    monkeypatch.setenv("APP_HERALD_API_KEY", dev.api_key)
    monkeypatch.setenv("APP_WEBHOOK_SECRET", "whsec_dev")  # the file's secret
    mod = load("fastapi/bot.py", "herald_example_bot3")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Forward)
    try:
        with TestClient(mod.app) as client:
            _Forward.client = client
            _Forward.closed = False
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                chat = chan("chat")
                visitor = mint_token(dev.secret, sub="visitor:abc", allow_subscribe=[chat], allow_publish=[chat])
                op = mint_token(dev.secret, sub="op:42", allow_subscribe=[chat], allow_publish=[chat])
                with WS(dev.ws_url, visitor) as v, WS(dev.ws_url, op) as o:
                    v.welcome()
                    o.welcome()
                    v.subscribe(chat)
                    o.subscribe(chat)
                    sent = v.request("publish", channel=chat, data={"role": "user", "content": "hi, prices?"})
                    mine = v.message(chat)
                    assert mine["id"] == sent["result"]["id"]
                    reply = v.message(chat, timeout=30)
                    assert reply["from"] == "bot:ai" and reply["data"]["reply_to"] == mine["id"]
                    o.request("publish", channel=chat, data={"type": "handoff"})
                    assert v.message(chat)["from"] == "op:42"
                    announced = v.message(chat, timeout=30)
                    assert announced["from"] == "bot:ai" and announced["data"]["type"] == "handoff"
                    # After the handoff: the visitor's message, then the
                    # operator's answer, and no bot message between them.
                    v.request("publish", channel=chat, data={"role": "user", "content": "hello?"})
                    assert v.message(chat)["from"] == "visitor:abc"
                    # Its webhook was handled, and the bot stayed silent.
                    deadline = time.monotonic() + 30
                    while ("publish", "handed-off") not in _Forward.actions:
                        assert time.monotonic() < deadline, f"bot actions: {_Forward.actions}"
                        time.sleep(0.05)
                    with Herald(dev.api_url, dev.api_key) as h:
                        # visitor, bot reply, handoff, bot's handoff event, visitor
                        assert h.positions(chat) == {chat: 5}
                    o.request("publish", channel=chat, data={"role": "operator", "content": "here"})
                    nxt = v.message(chat)
                    assert nxt["from"] == "op:42", f"a message after the handoff that is not the operator's: {nxt}"
                    assert _Forward.actions.count(("publish", "replied")) == 1, _Forward.actions
            finally:
                with _Forward.lock:
                    _Forward.closed = True
    finally:
        server.shutdown()
        server.server_close()
        dev.stop()
