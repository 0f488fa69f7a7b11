"""Table and property tests for mxwatch.provision_plan: what provision would do, pure."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxwatch.model import Connector, ConnectorLookup, ErrorKind, ExchangeFailure
from mxwatch.policy import audit_connector
from mxwatch.provision_plan import (
    MAX_SENDER_ENTRIES,
    AddSenderIps,
    Create,
    TenantPlan,
    exchange_ranges,
    plan_tenant,
)
from mxwatch.settings import Provider
from tests.unit.policy_builders import (
    EIGHT_24S,
    GUID,
    IDENTITY,
    PROVIDER_21,
    PROVIDER_NO_IPS,
    T0,
    TENANT,
    ambiguous,
    connector,
    failure,
    found,
    missing,
)

ALL_RANGES = (*EIGHT_24S, "198.51.100.7/32")


def plan(
    lookup: ConnectorLookup | ExchangeFailure,
    provider: Provider = PROVIDER_21,
    identity: str = IDENTITY,
) -> TenantPlan:
    return plan_tenant(TENANT, identity, provider, lookup, T0)


def covering(**overrides: object) -> Connector:
    """A disabled connector listing every range of PROVIDER_21: it passes the audit."""
    return connector(sender_ip_addresses=ALL_RANGES, **overrides)


# --- splitting ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("published", "sent"),
    [
        (["203.0.112.0/21"], EIGHT_24S),
        (["192.0.2.0/24"], ("192.0.2.0/24",)),
        (["192.0.2.128/25", "192.0.2.9/32"], ("192.0.2.128/25", "192.0.2.9/32")),
        (["192.0.2.0/23", "192.0.2.0/24"], ("192.0.2.0/24", "192.0.3.0/24")),  # no repeats
        (["2001:db8::/32", "192.0.2.0/24"], ("192.0.2.0/24",)),  # IPv6 never
    ],
)
def test_ranges_are_split_into_what_exchange_accepts(
    published: list[str], sent: tuple[str, ...]
) -> None:
    assert exchange_ranges(ipaddress.ip_network(text) for text in published) == sent


# --- a missing connector ------------------------------------------------------------------------


def test_a_missing_connector_is_created_disabled_and_restricted_to_the_providers_ranges() -> None:
    result = plan(missing())
    assert isinstance(result.action, Create)
    assert result.problem == ""
    parameters = result.action.connector.parameters()
    assert parameters == {
        "Name": IDENTITY,
        "ConnectorType": "Partner",
        "SenderDomains": ["*"],
        "RequireTls": True,
        "RestrictDomainsToIPAddresses": True,
        "SenderIPAddresses": list(ALL_RANGES),
        "Comment": parameters["Comment"],
        "Enabled": False,
    }
    assert "mxwatch" in parameters["Comment"]
    described = result.action.describe()
    assert "New-InboundConnector" in described and "-Enabled $false" in described
    assert "'203.0.119.0/24','198.51.100.7/32'" in described


def test_without_sender_ips_no_connector_is_created_and_the_key_to_set_is_named() -> None:
    result = plan(missing(), PROVIDER_NO_IPS)
    assert result.action is None
    assert "[providers.testfilter] sender_ips" in result.problem
    assert "console" in result.problem


@pytest.mark.parametrize("identity", [GUID, "{" + GUID.upper() + "}"])
def test_a_connector_configured_by_guid_is_never_created(identity: str) -> None:
    result = plan(missing(), identity=identity)
    assert result.action is None
    assert "by name only" in result.problem


def test_a_sender_range_list_past_the_bound_is_refused_as_a_likely_typo() -> None:
    wide = replace(PROVIDER_21, sender_ips=(ipaddress.IPv4Network("10.0.0.0/8"),))
    result = plan(missing(), wide)
    assert result.action is None
    assert f"more than {MAX_SENDER_ENTRIES}" in result.problem


# --- what cannot be read or matched -------------------------------------------------------------


def test_an_ambiguous_name_is_neither_duplicated_nor_changed() -> None:
    result = plan(ambiguous())
    assert result.action is None
    assert "GUID" in result.problem


def test_a_failed_read_is_a_problem_with_its_kind() -> None:
    result = plan(failure(ErrorKind.BLOCKED))
    assert result.action is None
    assert result.problem.startswith("blocked: HTTP 403")


# --- an existing connector ----------------------------------------------------------------------


def test_a_disabled_connector_that_passes_the_audit_needs_nothing() -> None:
    result = plan(found(covering()))
    assert (result.action, result.problem) == (None, "")
    assert "passes the audit" in result.found


def test_a_disabled_connector_gains_the_ranges_it_lacks_and_keeps_its_own() -> None:
    result = plan(found(connector(sender_ip_addresses=("203.0.112.0/24", "192.0.2.9"))))
    assert result.action == AddSenderIps(GUID, (*EIGHT_24S[1:], "198.51.100.7/32"), 2)
    assert result.problem == ""
    assert "lacks 8 provider ranges" in result.found


def test_a_wider_entry_already_covers_the_ranges_inside_it() -> None:
    result = plan(found(connector(sender_ip_addresses=("203.0.112.0/22", "203.0.116.0/22"))))
    assert isinstance(result.action, AddSenderIps)
    assert result.action.ranges == ("198.51.100.7/32",)


def test_a_connector_failing_more_than_ranges_is_left_to_a_person() -> None:
    result = plan(found(connector(connector_type="OnPremises", sender_ip_addresses=())))
    assert result.action is None
    assert "ConnectorType" in result.problem
    assert "SenderIPAddresses" not in result.problem  # adding ranges would fix that much


@pytest.mark.parametrize("lacking", [True, False])
def test_an_enabled_connector_is_never_written_to(lacking: bool) -> None:
    conn = connector(enabled=True) if lacking else covering(enabled=True)
    result = plan(found(conn))
    assert result.action is None
    if lacking:
        assert "never writes to an enabled connector" in result.problem
    else:
        assert result.problem == ""


def test_without_sender_ips_an_existing_restricted_connector_passes_with_a_note() -> None:
    result = plan(found(connector()), PROVIDER_NO_IPS)
    assert (result.action, result.problem) == (None, "")
    assert any("no sender_ips" in note for note in result.notes)


# --- properties ---------------------------------------------------------------------------------

_ENTRIES = st.lists(
    st.sampled_from([*ALL_RANGES, "203.0.112.0/22", "192.0.2.0/24", "2001:db8::1", "x"]),
    max_size=6,
)


@given(
    enabled=st.booleans(),
    connector_type=st.sampled_from(["Partner", "OnPremises"]),
    entries=_ENTRIES,
    restricted=st.booleans(),
)
def test_plans_never_touch_an_enabled_connector_and_only_ever_add(
    enabled: bool, connector_type: str, entries: list[str], restricted: bool
) -> None:
    conn = connector(
        enabled=enabled,
        connector_type=connector_type,
        sender_ip_addresses=tuple(entries),
        restrict_domains_to_ip_addresses=restricted,
    )
    result = plan(found(conn))
    assert not isinstance(result.action, Create)  # never a duplicate
    if enabled:
        assert result.action is None
    if isinstance(result.action, AddSenderIps):
        assert not set(result.action.ranges) & set(entries)
        after = replace(conn, sender_ip_addresses=(*entries, *result.action.ranges))
        assert audit_connector(after, PROVIDER_21).passed  # the write fixes what it is for
    assert result.action is not None or result.problem or audit_connector(conn, PROVIDER_21).passed
