"""verify_webhook / sign_webhook against the contract: header
`Herald-Signature: t=<unix s>,v1=<hex>`, hex = HMAC-SHA256(secret,
f"{t}." + raw body), several v1= during a rotation, ±tolerance."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from herald_client import Client, Message, WebhookEvent, WebhookSignatureError, sign_webhook, verify_webhook

SECRET = "whsec_test"
NOW = 1_767_225_600

PUBLISH = {
    "id": "ev_01HF",
    "type": "publish",
    "ts": NOW * 1000 + 123,
    "channel": "chat_42",
    "message": {"channel": "chat_42", "seq": 21, "id": "m_01HF", "ts": NOW * 1000 + 120,
                "from": "visitor:abc", "data": {"role": "user", "content": "Hello"}},
}
JOIN = {
    "id": "ev_02",
    "type": "join",
    "ts": NOW * 1000,
    "channel": "chat_42",
    "client": {"sub": "op:42", "conn": "c_01", "info": {"name": "Purna"}},
}


def body(ev: object) -> bytes:
    return json.dumps(ev, separators=(",", ":")).encode()


def test_signature_is_the_documented_hmac() -> None:
    b = body(PUBLISH)
    want = hmac.new(SECRET.encode(), f"{NOW}.".encode() + b, hashlib.sha256).hexdigest()
    assert sign_webhook(b, SECRET, NOW) == f"t={NOW},v1={want}"


def test_a_good_signature_gives_the_typed_event() -> None:
    b = body(PUBLISH)
    ev = verify_webhook(b, sign_webhook(b, SECRET, NOW), SECRET, now=NOW)
    assert ev == WebhookEvent(
        id="ev_01HF", type="publish", ts=NOW * 1000 + 123, channel="chat_42",
        message=Message(channel="chat_42", seq=21, id="m_01HF", ts=NOW * 1000 + 120,
                        data={"role": "user", "content": "Hello"}, from_="visitor:abc"),
        client=None)
    assert ev.raw == PUBLISH
    b = body(JOIN)
    ev = verify_webhook(b, sign_webhook(b, SECRET.encode(), NOW), SECRET, now=NOW + 299)
    assert ev.client == Client(sub="op:42", conn="c_01", info={"name": "Purna"})
    assert ev.message is None and ev.type == "join"


def test_a_hand_written_header_verifies() -> None:
    """Independent of sign_webhook: the header built from the spec alone,
    with spaces and upper-case hex, an unknown scheme, then the real v1."""
    b = b'{"id":"ev_1","type":"connect","ts":1,"client":{"sub":"u","conn":"c_1"}}'
    mac = hmac.new(b"k", f"{NOW}.".encode() + b, hashlib.sha256).hexdigest()
    header = f"t={NOW}, v0=abc, v1={mac.upper()}"
    ev = verify_webhook(b, header, "k", now=NOW)
    assert ev.type == "connect" and ev.client == Client(sub="u", conn="c_1", info=None)
    assert ev.channel is None


def test_tampered_body_is_refused() -> None:
    b = body(PUBLISH)
    header = sign_webhook(b, SECRET, NOW)
    tampered = b.replace(b"Hello", b"Hellp")
    with pytest.raises(WebhookSignatureError):
        verify_webhook(tampered, header, SECRET, now=NOW)
    with pytest.raises(WebhookSignatureError):
        verify_webhook(b + b" ", header, SECRET, now=NOW)
    # Re-serializing the body (here: with spaces) breaks the signature too:
    # always verify the raw bytes.
    with pytest.raises(WebhookSignatureError):
        verify_webhook(json.dumps(PUBLISH).encode(), header, SECRET, now=NOW)


def test_old_and_future_timestamps_are_refused() -> None:
    b = body(PUBLISH)
    with pytest.raises(WebhookSignatureError, match="away from now"):
        verify_webhook(b, sign_webhook(b, SECRET, NOW - 301), SECRET, now=NOW)
    with pytest.raises(WebhookSignatureError):
        verify_webhook(b, sign_webhook(b, SECRET, NOW + 301), SECRET, now=NOW)
    verify_webhook(b, sign_webhook(b, SECRET, NOW - 300), SECRET, now=NOW)
    verify_webhook(b, sign_webhook(b, SECRET, NOW - 3000), SECRET, now=NOW, tolerance=3600)
    with pytest.raises(WebhookSignatureError):
        verify_webhook(b, sign_webhook(b, SECRET, NOW - 11), SECRET, now=NOW, tolerance=10)
    # The real clock by default.
    verify_webhook(b, sign_webhook(b, SECRET), SECRET)


def test_a_changed_timestamp_breaks_the_signature() -> None:
    b = body(PUBLISH)
    header = sign_webhook(b, SECRET, NOW).replace(f"t={NOW}", f"t={NOW + 1}")
    with pytest.raises(WebhookSignatureError, match="no signature matches"):
        verify_webhook(b, header, SECRET, now=NOW)


def test_wrong_secret_is_refused() -> None:
    b = body(PUBLISH)
    with pytest.raises(WebhookSignatureError, match="no signature matches"):
        verify_webhook(b, sign_webhook(b, "other", NOW), SECRET, now=NOW)


def test_rotation_any_v1_and_any_secret_passes() -> None:
    b = body(PUBLISH)
    both = sign_webhook(b, ["new-secret", "old-secret"], NOW)
    assert both.count("v1=") == 2
    verify_webhook(b, both, "old-secret", now=NOW)
    verify_webhook(b, both, "new-secret", now=NOW)
    verify_webhook(b, sign_webhook(b, "old-secret", NOW), ["new-secret", "old-secret"], now=NOW)
    with pytest.raises(WebhookSignatureError):
        verify_webhook(b, both, ["third", "fourth"], now=NOW)


@pytest.mark.parametrize("header", [
    None, "", "v1=abc", f"t={NOW}", f"t={NOW},v2=abc", "t=abc,v1=00", f"t=-{NOW},v1=00",
    f"t={NOW},t={NOW},v1=00", "garbage", f"t={NOW},v1=",
])
def test_missing_or_malformed_header_is_refused(header: str | None) -> None:
    with pytest.raises(WebhookSignatureError):
        verify_webhook(body(PUBLISH), header, SECRET, now=NOW)


def test_a_signed_body_that_is_not_an_event_is_a_value_error() -> None:
    for b in (b"not json", b"[1,2]", b'{"id":"ev_1","type":"publish"}', b'{"id":1,"type":"x","ts":1}',
              body({**PUBLISH, "message": {"channel": "c"}})):
        with pytest.raises(ValueError) as e:
            verify_webhook(b, sign_webhook(b, SECRET, NOW), SECRET, now=NOW)
        assert not isinstance(e.value, WebhookSignatureError)


def test_unknown_fields_and_types_pass_through() -> None:
    ev = {"id": "ev_9", "type": "future_kind", "ts": 5, "extra": [1]}
    b = body(ev)
    got = verify_webhook(b, sign_webhook(b, SECRET, NOW), SECRET, now=NOW)
    assert got.type == "future_kind" and got.raw["extra"] == [1]


def test_misuse_is_a_type_or_value_error() -> None:
    with pytest.raises(TypeError):
        verify_webhook("a str body", sign_webhook(b"x", SECRET, NOW), SECRET, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        verify_webhook(b"{}", sign_webhook(b"{}", SECRET, NOW), "", now=NOW)
    with pytest.raises(ValueError):
        sign_webhook(b"{}", [], NOW)
