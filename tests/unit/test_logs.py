"""Redaction in the log pipeline: secret keys, registered secret values, token and PEM shapes."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from mxwatch import logs


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def render(**fields: object) -> dict[str, object]:
    stream = io.StringIO()
    logs.configure("debug", stream=stream, json=True)
    logs.get_logger("test").info("probe", **fields)
    return dict(json.loads(stream.getvalue()))


def test_keys_that_name_a_secret_are_masked() -> None:
    line = render(client_secret="hunter2-value", access_token="abc", tenant="contoso")
    assert line["client_secret"] == logs.REDACTED
    assert line["access_token"] == logs.REDACTED
    assert line["tenant"] == "contoso"


def test_registered_secret_is_scrubbed_wherever_it_appears() -> None:
    logs.register_secret("Zq8-registered-secret")
    line = render(error="upstream said: bad secret Zq8-registered-secret, retry")
    assert "Zq8-registered-secret" not in json.dumps(line)
    assert logs.REDACTED in str(line["error"])


def test_short_values_are_not_registered_so_words_survive() -> None:
    logs.register_secret("abc")
    assert render(word="abc")["word"] == "abc"


def test_bearer_tokens_jwts_and_private_keys_are_scrubbed_by_shape() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----"
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhcHAifQ.c2lnbmF0dXJl"
    line = render(header="Bearer abc.def.ghi", body=f"key {pem}", note=f"token {jwt}")
    text = json.dumps(line)
    assert "abc.def.ghi" not in text
    assert "MIIEvQIBADANBg" not in text
    assert jwt not in text


def test_console_renderer_is_scrubbed_too() -> None:
    logs.register_secret("console-secret-123")
    stream = io.StringIO()
    logs.configure("info", stream=stream, json=False)
    logs.get_logger("test").warning("probe", detail="console-secret-123")
    assert "console-secret-123" not in stream.getvalue()
    assert "probe" in stream.getvalue()
