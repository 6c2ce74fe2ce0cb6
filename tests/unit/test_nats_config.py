"""uplink/nats config: what it refuses (with a reason naming the key), subject matching as the
server does it, and the JetStream error classification."""

from __future__ import annotations

from typing import Any

import pytest

from edged.config import Secret
from edged.errors import Permanent, Transient
from uplink.nats import Config
from uplink.nats.client import ApiError, puback_error
from uplink.nats.config import subject_matches

CREDS = """-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4
------END USER NKEY SEED------
"""


def cfg(**kw: Any) -> Config:
    return Config(name="js", type="nats", **kw)


def test_defaults_subjects_and_filters() -> None:
    c = cfg()
    assert c.subjects("plant1.press") == {
        "live": "edged.plant1_press.live",
        "historical": "edged.plant1_press.historical",
        "gap": "edged.plant1_press.gap",
    }
    assert c.filters() == ["edged.*.*"]
    assert c.peer_address() == ("127.0.0.1", 4222)
    assert cfg(servers=["tls://a:4443"]).uses_tls()
    assert cfg(creds=Secret(CREDS)).creds is not None


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"servers": []}, "at least one"),
        ({"servers": ["http://x:1"]}, "expected nats://host:port"),
        ({"servers": ["nats://u:p@x:4222"]}, "not in the URL"),
        ({"servers": ["nats://x:99999"]}, "port out of range"),
        ({"password": Secret("p")}, "password needs a user"),
        ({"user": "u", "token": Secret("t")}, "choose one way"),
        ({"nkey_seed": Secret("SAxxxx")}, "not a user NKey seed"),
        ({"creds": Secret("just text")}, "not a .creds file"),
        ({"subject": "edged.{gateway}.>"}, "wildcard"),
        ({"subject": "edged..{kind}"}, "empty token"),
        ({"subject": "edged.{gateway}"}, "needs {kind}"),
        ({"subject": "edged.{site}.{kind}"}, "unknown placeholder"),
        ({"stream": "a.b"}, "letters, digits"),
        ({"replicas": 7}, "replicas"),
        ({"max_age": 60.0, "duplicate_window": 120.0}, "longer than max_age"),
        ({"ca_file": "/x.pem"}, "TLS options are set"),
        ({"stream_subjects": ["a.>.b"]}, "wildcard"),
        ({"subject": "edged.gw-{gateway}.{kind}", "create_stream": True}, "set stream_subjects"),
    ],
)
def test_bad_config_is_refused_with_a_reason(kw: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        cfg(**kw)


@pytest.mark.parametrize(
    ("pattern", "subject", "match"),
    [
        ("edged.*.*", "edged.gw.live", True),
        ("edged.>", "edged.gw.live", True),
        ("edged.>", "edged", False),
        ("edged.*", "edged.gw.live", False),
        ("edged.gw.live", "edged.gw.live", True),
        ("edged.*.live", "edged.gw.gap", False),
        (">", "a", True),
    ],
)
def test_subject_matching(pattern: str, subject: str, match: bool) -> None:
    assert subject_matches(pattern, subject) is match


def test_puback_errors_are_classified() -> None:
    assert isinstance(puback_error(ApiError(503, 10077, "maximum messages exceeded"), "S", "s"), Transient)
    assert isinstance(puback_error(ApiError(400, 10054, "message size exceeds maximum allowed"), "S", "s"), Permanent)
    assert isinstance(puback_error(ApiError(400, 10060, "expected stream does not match"), "S", "s"), Permanent)


async def test_two_uplinks_into_one_stream_are_refused_before_connecting() -> None:
    """Their batches would share Nats-Msg-Ids: the stream would drop one uplink's as the other's."""
    import logging
    from pathlib import Path
    from types import SimpleNamespace

    from edged.plugin import PluginContext
    from uplink.nats import Uplink

    a, b = cfg(), Config(name="js2", type="nats", tags=["dev/*"])
    whole = SimpleNamespace(uplinks=[a, b])
    ctx = PluginContext("gw", Path("."), logging.getLogger("t"), config=whole)  # type: ignore[arg-type]
    with pytest.raises(Permanent, match="same stream EDGED"):
        async with Uplink(a, ctx):
            pass
    other = Config(name="js2", type="nats", stream="OTHER")
    ctx = PluginContext("gw", Path("."), logging.getLogger("t"), config=SimpleNamespace(uplinks=[a, other]))  # type: ignore[arg-type]
    assert Uplink(a, ctx)._twin is None
