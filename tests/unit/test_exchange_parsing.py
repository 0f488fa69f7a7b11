"""exchange.py's pure parts: response parsing, error text, Retry-After."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from mxwatch.exchange import (
    connector_from_object,
    error_text,
    lookup_from_objects,
    parse_objects,
    retry_after_seconds,
)
from mxwatch.model import LookupStatus

GUID = "ac4d5ab0-6637-4e91-8d47-f5c2e95c71d9"


def test_parse_objects_drops_annotation_keys_and_reads_warnings() -> None:
    body = {
        "@odata.context": "https://x/adminapi/beta/$metadata#InboundConnector",
        "adminapi.warnings@odata.type": "#Collection(String)",
        "@adminapi.warnings": ["careful"],
        "value": [{"Name": "A", "SenderIPAddresses@odata.type": "#Collection(String)"}],
    }
    objects, warnings = parse_objects(body)
    assert objects == [{"Name": "A"}]
    assert warnings == ["careful"]


def test_parse_objects_tolerates_missing_value_and_rejects_non_objects() -> None:
    assert parse_objects({"@odata.context": "x"}) == ([], [])
    assert parse_objects({"value": None, "@adminapi.warnings": None}) == ([], [])
    with pytest.raises(ValueError):
        parse_objects(["not", "an", "object"])


def test_connector_defaults_for_missing_and_null_fields() -> None:
    connector = connector_from_object({"Name": "A", "Guid": GUID, "SenderIPAddresses": None})
    assert connector.enabled is False
    assert connector.sender_ip_addresses == () and connector.sender_domains == ()
    assert connector.require_tls is False and connector.connector_type == ""


def test_connector_keeps_sender_domains_as_strings() -> None:
    connector = connector_from_object(
        {"Name": "A", "Guid": GUID, "Enabled": True, "SenderDomains": ["smtp:*;1"]}
    )
    assert connector.enabled is True and connector.sender_domains == ("smtp:*;1",)


def test_lookup_matches_guid_in_any_spelling_and_name_case_insensitively() -> None:
    objects = [{"Name": "Inbound", "Guid": GUID}, {"Name": "Other", "Guid": "1" * 32}]
    assert lookup_from_objects("{" + GUID.upper() + "}", objects).status is LookupStatus.FOUND
    assert lookup_from_objects("INBOUND", objects).status is LookupStatus.FOUND
    missing = lookup_from_objects("Nope", objects)
    assert missing.status is LookupStatus.MISSING and missing.returned == 2


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            {
                "code": "BadRequest",
                "message": "Invalid Operation",
                "details": [{"message": "|Microsoft.Exchange.SomeException|Real text."}],
                "innererror": {"internalexception": {"message": "Inner text."}},
            },
            "Real text.",
        ),
        (
            {
                "message": "Invalid Operation",
                "innererror": {"internalexception": {"message": "In"}},
            },
            "In",
        ),
        ({"message": "Only the message"}, "Only the message"),
    ],
)
def test_error_text_prefers_details_then_inner_then_message(
    error: dict[str, object], expected: str
) -> None:
    assert error_text(json.dumps({"error": error}).encode()) == expected


def test_error_text_of_nul_or_empty_body_is_empty() -> None:
    assert error_text(b"\x00\x00\x00") == ""
    assert error_text(b"") == ""


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None
