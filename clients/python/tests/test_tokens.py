"""Tokens minted by the SDK: the claims of `herald token`, and herald's
verdict on them over a real WebSocket."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from conftest import chan
from harness import HeraldDev, Topology, herald_bin
from herald_client import Herald, mint_token, subscription_token
from herald_client.names import pattern_matches
from wsclient import WS

SECRET = "s" * 32


def claims(token: str) -> dict[str, object]:
    out: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    return out


def test_claims_match_herald_token() -> None:
    args = dict(sub="op:42", channels=["dashboard_website_12", "dashboard_user_42"],
                allow_subscribe=["chat_*"], allow_publish=["chat_8942b9df-77c8-4e5f-a7eb-097aace75053"],
                allow_signal=["chat_*"], allow_presence=["chat_*"])
    ours = claims(mint_token(SECRET, **args, info={"name": "Purna Acharya"}, ttl=3600))  # type: ignore[arg-type]
    out = subprocess.run(
        [str(herald_bin()), "token", "--jwt-secret", SECRET, "--sub", "op:42",
         "--channels", ",".join(args["channels"]), "--allow-subscribe", "chat_*",
         "--allow-publish", "chat_8942b9df-77c8-4e5f-a7eb-097aace75053",
         "--allow-signal", "chat_*", "--allow-presence", "chat_*",
         "--info", '{"name":"Purna Acharya"}', "--ttl", "1h"],
        capture_output=True, text=True, timeout=30, check=True, env={"PATH": "/usr/bin:/bin"})
    theirs = claims(out.stdout.strip())
    assert jwt.get_unverified_header(out.stdout.strip())["alg"] == "HS256"
    for c in (ours, theirs):
        assert c.pop("exp") == c.pop("iat") + 3600  # type: ignore[operator]
    assert ours == theirs


def test_minimal_claims_and_options() -> None:
    t = mint_token(SECRET, sub="u1", now=1000, ttl=timedelta(minutes=1))
    assert claims(t) == {"sub": "u1", "iat": 1000, "exp": 1060}
    assert "kid" not in jwt.get_unverified_header(t)
    t = mint_token(SECRET, sub="u1", now=1000, ttl=None, kid="k1", audience="a", issuer="i",
                   allow_publish="chat_*", channels="solo")
    assert claims(t) == {"sub": "u1", "iat": 1000, "aud": "a", "iss": "i", "channels": ["solo"],
                         "allow": {"publish": ["chat_*"]}}
    assert jwt.get_unverified_header(t)["kid"] == "k1"
    s = subscription_token(SECRET, sub="u1", channel="chat_42", now=1000, ttl=30)
    assert claims(s) == {"sub": "u1", "channel": "chat_42", "iat": 1000, "exp": 1030}
    assert jwt.decode(s, SECRET, algorithms=["HS256"], options={"verify_exp": False})["sub"] == "u1"


@pytest.mark.parametrize("kwargs", [
    {"sub": ""},
    {"sub": "u", "channels": ["chat_*"]},  # a pattern is not a channel
    {"sub": "u", "channels": ["bad channel"]},
    {"sub": "u", "channels": [""]},
    {"sub": "u", "channels": ["x" * 201]},
    {"sub": "u", "allow_subscribe": ["chat_/"]},
    {"sub": "u", "allow_presence": ["é*"]},
    {"sub": "u", "info": {"big": "x" * 1100}},
    {"sub": "u", "info": ["not", "an", "object"]},
    {"sub": "u", "info": {"nan": float("nan")}},
    {"sub": "u", "ttl": 0},
    {"sub": "u", "ttl": -5},
    {"sub": "u", "algorithm": "none"},
    {"sub": "u", "algorithm": "HS512"},
])
def test_mint_token_refuses_bad_input(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        mint_token(SECRET, **kwargs)  # type: ignore[arg-type]


def test_subscription_token_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        subscription_token(SECRET, sub="u", channel="chat_*")
    with pytest.raises(ValueError):
        subscription_token("", sub="u", channel="chat_1")
    with pytest.raises(ValueError):
        mint_token(b"", sub="u")


def test_names_at_the_limits() -> None:
    mint_token(SECRET, sub="u", channels=["x" * 200, "a-b.c:d@e=f_G9"], allow_subscribe=["*", "**"])
    assert pattern_matches("chat_*", "chat_") and pattern_matches("chat_*", "chat_8942b9df-77c8")
    assert pattern_matches("*_website_*", "dashboard_website_12")
    assert not pattern_matches("chat_*", "xchat_1") and not pattern_matches("chat_*", "chat 1")
    assert pattern_matches("a.b", "a.b") and not pattern_matches("a.b", "axb")


def test_herald_accepts_a_minted_token(topology: Topology) -> None:
    dash, chat, other = chan("dashboard_website"), chan("chat"), chan("private")
    token = mint_token(topology.secret, sub="op:42", channels=[dash], allow_subscribe=["chat_*"],
                       allow_publish=[chat], info={"name": "Purna"}, ttl=600)
    with WS(topology.ws_url, token) as ws:
        w = ws.welcome()
        assert w["subs"] == [{"channel": dash, "seq": 0}]
        assert ws.subscribe(chat)["result"] == {"channel": chat, "seq": 0}
        r = ws.request("subscribe", channel=other)
        assert r["error"]["code"] == "forbidden"
        pub = ws.request("publish", channel=chat, data={"content": "hi"})
        assert pub["result"]["seq"] == 1
        assert ws.message(chat)["from"] == "op:42"


def test_a_token_with_the_wrong_secret_is_closed_4001(topology: Topology) -> None:
    token = mint_token("not-the-secret-" * 3, sub="op:42", channels=[chan()])
    with WS(topology.ws_url, token) as ws:
        code, frames = ws.closed_with()
    assert code == 4001
    assert [f["type"] for f in frames] == ["disconnect"] and frames[0]["code"] == 4001


def test_an_expired_token_is_closed_4004(dev: HeraldDev) -> None:
    token = mint_token(dev.secret, sub="u", channels=[chan()], ttl=60, now=time.time() - 3600)
    with WS(dev.ws_url, token) as ws:
        code, frames = ws.closed_with()
    assert code == 4004 and frames[-1]["type"] == "disconnect"


def test_subscription_tokens(topology: Topology) -> None:
    c, other = chan("chat"), chan("chat")
    conn = mint_token(topology.secret, sub="visitor:abc")  # no grants at all
    with WS(topology.ws_url, conn) as ws:
        ws.welcome()
        assert ws.request("subscribe", channel=c)["error"]["code"] == "forbidden"
        ok = ws.request("subscribe", channel=c,
                        token=subscription_token(topology.secret, sub="visitor:abc", channel=c))
        assert ok["result"] == {"channel": c, "seq": 0}
        wrong_channel = subscription_token(topology.secret, sub="visitor:abc", channel=c)
        assert ws.request("subscribe", channel=other, token=wrong_channel)["error"]["code"] == "forbidden"
        wrong_sub = subscription_token(topology.secret, sub="visitor:xyz", channel=other)
        assert ws.request("subscribe", channel=other, token=wrong_sub)["error"]["code"] == "forbidden"
        with Herald(topology.api_url, topology.api_key) as h:
            r = h.publish(c, {"content": "for you"})
        assert ws.message(c)["id"] == r.id


def _pem_pair(alg: str) -> tuple[bytes, str]:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HeraldDev, dict[str, bytes]]]:
    """A herald dev with an audience, an issuer and one public key per
    asymmetric algorithm, by kid."""
    tmp: Path = tmp_path_factory.mktemp("herald-keys")
    privates: dict[str, bytes] = {}
    conf = ['[auth]', 'audience = "herald-py"', 'issuer = "https://app.example"']
    for alg in ("RS256", "ES256", "EdDSA"):
        private, public = _pem_pair(alg)
        privates[alg] = private
        conf += ["[[auth.keys]]", f'kid = "{alg.lower()}-1"', f'alg = "{alg}"',
                 f'public_key_pem = """\n{public}"""']
    (tmp / "herald.toml").write_text("\n".join(conf) + "\n")
    t = HeraldDev(tmp, extra=["--config", str(tmp / "herald.toml")])
    yield t, privates
    t.stop()


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_asymmetric_tokens_with_kid_audience_issuer(keyed: tuple[HeraldDev, dict[str, bytes]], alg: str) -> None:
    t, privates = keyed
    c = chan()
    good = mint_token(privates[alg], sub="u", channels=[c], algorithm=alg, kid=f"{alg.lower()}-1",
                      audience="herald-py", issuer="https://app.example")
    with WS(t.ws_url, good) as ws:
        assert ws.welcome()["subs"] == [{"channel": c, "seq": 0}]
    for bad in (
        # no aud / iss while herald checks them
        mint_token(privates[alg], sub="u", algorithm=alg, kid=f"{alg.lower()}-1"),
        # another audience
        mint_token(privates[alg], sub="u", algorithm=alg, kid=f"{alg.lower()}-1",
                   audience="other", issuer="https://app.example"),
        # a kid herald does not know
        mint_token(privates[alg], sub="u", algorithm=alg, kid="unknown",
                   audience="herald-py", issuer="https://app.example"),
    ):
        with WS(t.ws_url, bad) as ws:
            assert ws.closed_with()[0] == 4001


def test_hs256_with_audience_on_the_keyed_node(keyed: tuple[HeraldDev, dict[str, bytes]]) -> None:
    t, _ = keyed
    tok = mint_token(t.secret, sub="u", audience="herald-py", issuer="https://app.example")
    with WS(t.ws_url, tok) as ws:
        assert ws.welcome()["type"] == "welcome"
