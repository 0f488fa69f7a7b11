"""Exchange Online admin API client: MSAL app-only token + InvokeCommand (DESIGN.md §6).

The endpoint is undocumented (reference/exchange-admin-api.md), so every answer is parsed
defensively and every failure is classified by who must act: ErrorKind.BLOCKED (the tenant's
permissions or objects), CREDENTIALS (the app's certificate/secret/consent) or TRANSIENT
(throttling, 5xx, timeouts, TLS or network trouble: retry next cycle).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import http.cookiejar
import json
import random
import ssl
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import requests
import structlog

from . import __version__
from .credentials import CredentialProblem, load_credential
from .logs import register_secret
from .model import (
    AcceptedDomain,
    AcceptedDomains,
    Connector,
    ConnectorLookup,
    ErrorKind,
    ExchangeError,
    ExchangeFailure,
    LookupStatus,
)
from .names import BadName, normalise_name
from .settings import CredentialRef, ExchangeConfig, TenantConfig

log = structlog.get_logger("mxwatch.exchange")

_ANCHOR_MAILBOX = "APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{tenant_id}"
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Exchange sometimes answers throttling with a 200 and this plain text instead of a 429.
_CONCURRENCY_TEXT = "maximum number of concurrent requests"
_BACKOFF_BASE = 0.5  # seconds; doubled per attempt, with jitter
# Token errors that a retry next cycle may fix; every other token error needs a person.
_TRANSIENT_TOKEN_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_MICROSOFT_LOGIN_HOSTS = (
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
    "login.microsoft.com",
    "login.windows.net",
)
_MAX_TEXT = 300  # longest server text copied into an error message


# --------------------------------------------------------------------------- statistics


@dataclass
class ExchangeStats:
    """Counters for metrics and benchmarks (mutable on purpose).

    `api_calls` is keyed by (cmdlet, outcome); outcome is the HTTP status as text, or
    "timeout" / "network" when no answer came back.
    """

    token_requests: int = 0  # tokens fetched from the authority (cache misses)
    api_calls: Counter[tuple[str, str]] = field(default_factory=Counter)


# --------------------------------------------------------------------------- response parsing


def parse_objects(body: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The `value` objects (annotation keys dropped) and the warnings of an InvokeCommand body."""
    if not isinstance(body, Mapping):
        raise ValueError("the response is not a JSON object")
    raw_values = body.get("value", [])
    if raw_values is None:
        raw_values = []
    if isinstance(raw_values, Mapping):
        raw_values = [raw_values]
    if not isinstance(raw_values, list):
        raise ValueError("'value' is not a list")
    objects = [
        {key: val for key, val in item.items() if "@" not in key}
        for item in raw_values
        if isinstance(item, Mapping)
    ]
    warnings = body.get("@adminapi.warnings") or []
    if not isinstance(warnings, list):
        warnings = [warnings]
    return objects, [str(w) for w in warnings]


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True


def _as_strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list | tuple):
        return tuple(str(item) for item in value if item is not None and item != "")
    return ()


def connector_from_object(obj: Mapping[str, Any]) -> Connector:
    """Map one Get-InboundConnector object; missing or null fields get safe defaults."""
    return Connector(
        name=str(obj.get("Name") or obj.get("Identity") or ""),
        guid=str(obj.get("Guid") or ""),
        enabled=_as_bool(obj.get("Enabled")),
        connector_type=str(obj.get("ConnectorType") or ""),
        sender_domains=_as_strings(obj.get("SenderDomains")),
        sender_ip_addresses=_as_strings(obj.get("SenderIPAddresses")),
        restrict_domains_to_ip_addresses=_as_bool(obj.get("RestrictDomainsToIPAddresses")),
        restrict_domains_to_certificate=_as_bool(obj.get("RestrictDomainsToCertificate")),
        require_tls=_as_bool(obj.get("RequireTls")),
        ef_skip_ips=_as_strings(obj.get("EFSkipIPs")),
        ef_skip_last_ip=_as_bool(obj.get("EFSkipLastIP")),
    )


def _normal_guid(text: str) -> str | None:
    try:
        return str(uuid.UUID(text.strip().strip("{}")))
    except ValueError:
        return None


def connector_matches(connector: Connector, identity: str) -> bool:
    """Exact match on Name (case-insensitive) or Guid (any GUID spelling)."""
    if connector.name.casefold() == identity.strip().casefold():
        return True
    wanted = _normal_guid(identity)
    return wanted is not None and wanted == _normal_guid(connector.guid)


def lookup_from_objects(identity: str, objects: list[dict[str, Any]]) -> ConnectorLookup:
    connectors = [connector_from_object(obj) for obj in objects]
    matches = [c for c in connectors if connector_matches(c, identity)]
    if len(matches) == 1:
        return ConnectorLookup(identity, LookupStatus.FOUND, matches[0], len(connectors))
    if matches:
        guids = ", ".join(c.guid for c in matches)
        detail = f"{len(matches)} connectors match {identity!r} (GUIDs {guids}); use a GUID"
        return ConnectorLookup(identity, LookupStatus.AMBIGUOUS, None, len(connectors), detail)
    detail = f"no inbound connector is named {identity!r} or has that GUID"
    if connectors:
        names = ", ".join(repr(c.name) for c in connectors[:10])
        detail += (
            f"; the API returned {len(connectors)} other connector(s) ({names}), as it does "
            "for an unknown identity"
        )
    return ConnectorLookup(identity, LookupStatus.MISSING, None, len(connectors), detail)


def error_text(body: bytes) -> str:
    """The human text of an admin API error body, or "" when it has none."""
    try:
        error = json.loads(body.decode("utf-8")).get("error") or {}
    except (ValueError, AttributeError, UnicodeDecodeError):
        return ""
    if not isinstance(error, Mapping):
        return ""
    candidates: list[Any] = []
    details = error.get("details")
    if isinstance(details, list):
        candidates += [d.get("message") for d in details if isinstance(d, Mapping)]
    inner = error.get("innererror")
    if isinstance(inner, Mapping) and isinstance(inner.get("internalexception"), Mapping):
        candidates.append(inner["internalexception"].get("message"))
    candidates.append(error.get("message"))
    for text in candidates:
        if isinstance(text, str) and text.strip():
            return _strip_type_prefix(text.strip())[:_MAX_TEXT]
    return ""


def _strip_type_prefix(text: str) -> str:
    # "|Microsoft.Exchange...Exception|real text" -> "real text"
    if text.startswith("|"):
        _, sep, rest = text[1:].partition("|")
        if sep:
            return rest.strip()
    return text


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class _Retry:
    """A failure worth another attempt, with the wait the server asked for (if any)."""

    failure: ExchangeFailure
    retry_after: float | None = None


def _fail(
    kind: ErrorKind, message: str, status: int | None = None, cmdlet: str = ""
) -> ExchangeError:
    return ExchangeError(ExchangeFailure(kind, message, status, cmdlet))


def _is_microsoft_host(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return any(host == known or host.endswith("." + known) for known in _MICROSOFT_LOGIN_HOSTS)


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # walk the cause chain; requests and httpx wrap ssl errors
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _tls_message(url: str) -> str:
    return (
        f"TLS verification failed for {url}: the server certificate is not trusted "
        "(behind a TLS-inspecting proxy, set exchange.ca_bundle)"
    )


class ExchangeClient:
    """One per process: it keeps the MSAL apps (token caches) and the HTTP connection pool."""

    def __init__(
        self,
        config: ExchangeConfig,
        *,
        user_agent: str | None = None,
        timeout: float | None = None,
        max_attempts: int = 4,
        max_retry_wait: float = 60.0,
        max_in_flight_per_tenant: int = 2,
        max_in_flight: int = 32,
    ) -> None:
        self._config = config
        self._user_agent = user_agent or f"mxwatch/{__version__}"
        # None: the configured exchange.timeout (tests and benchmarks may pass their own).
        self._timeout = config.timeout.total_seconds() if timeout is None else timeout
        self._max_attempts = max(1, max_attempts)
        self._max_retry_wait = max(0.0, max_retry_wait)
        self._max_in_flight = max(1, max_in_flight_per_tenant)
        # Requests beyond this wait on a semaphore, never in httpcore's pool: its queue costs
        # O(queued x connections) CPU per event, which burnt most of a first cycle over 200
        # tenants (tests/integration/test_soak.py).
        self._max_in_flight_total = max(1, max_in_flight)
        self._all_in_flight: asyncio.Semaphore | None = None
        self.stats = ExchangeStats()
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout),
            verify=self._ssl_context(),
            headers={"User-Agent": self._user_agent},
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=self._max_in_flight_total,
                max_keepalive_connections=self._max_in_flight_total,
            ),
        )
        self._apps: dict[tuple[str, str, CredentialRef], Any] = {}
        self._app_locks: dict[tuple[str, str, CredentialRef], asyncio.Lock] = {}
        self._msal_session: requests.Session | None = None
        self._in_flight: dict[str, asyncio.Semaphore] = {}

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if self._config.ca_bundle is None:
            return True
        # An explicit context: SSL_CERT_FILE and friends cannot replace the configured CA.
        return ssl.create_default_context(cafile=str(self._config.ca_bundle))

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._msal_session is not None:
            self._msal_session.close()
            self._msal_session = None
        self._apps.clear()

    async def __aenter__(self) -> ExchangeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------------- public API

    async def find_connector(self, tenant: TenantConfig, identity: str) -> ConnectorLookup:
        """Get-InboundConnector -Identity <identity>, matched exactly against Name/Guid."""
        cmdlet = "Get-InboundConnector"
        try:
            objects = await self._invoke(tenant, cmdlet, {"Identity": identity})
        except ExchangeError as exc:
            if exc.failure.status == 404:
                detail = f"no inbound connector is named {identity!r} or has that GUID (404)"
                return ConnectorLookup(identity, LookupStatus.MISSING, None, 0, detail)
            raise
        return lookup_from_objects(identity, objects)

    async def set_connector_enabled(
        self, tenant: TenantConfig, guid: str, enabled: bool
    ) -> Connector:
        """Set-InboundConnector -Identity <guid> -Enabled <enabled>, then read back by guid."""
        await self._invoke(tenant, "Set-InboundConnector", {"Identity": guid, "Enabled": enabled})
        lookup = await self.find_connector(tenant, guid)
        if lookup.connector is None:
            raise _fail(
                ErrorKind.BLOCKED,
                f"read-back after Set-InboundConnector found no connector {guid}: {lookup.detail}",
                cmdlet="Get-InboundConnector",
            )
        return lookup.connector

    async def accepted_domains(self, tenant: TenantConfig) -> AcceptedDomains:
        """Get-AcceptedDomain: every domain the tenant accepts mail for, normalised."""
        objects = await self._invoke(tenant, "Get-AcceptedDomain", {})
        found: dict[str, AcceptedDomain] = {}
        unreadable: list[str] = []
        for obj in objects:
            raw = str(obj.get("DomainName"))
            try:
                name = normalise_name(raw)
            except BadName:
                log.warning("accepted_domain_skipped", tenant=tenant.name, domain=raw)
                unreadable.append(raw)
                continue
            subdomains = _as_bool(obj.get("MatchSubDomains"))
            found[name] = AcceptedDomain(
                name, subdomains or (name in found and found[name].match_subdomains)
            )
        return AcceptedDomains(tuple(found[n] for n in sorted(found)), tuple(unreadable))

    # ----------------------------------------------------------------------- tokens

    def _authority(self, tenant: TenantConfig) -> str:
        return f"{self._config.login_url.rstrip('/')}/{tenant.tenant_id}"

    def _scope(self) -> str:
        return f"{self._config.admin_url.rstrip('/')}/.default"

    def _session(self) -> requests.Session:
        """The requests session every MSAL app of this client shares, verifying against the
        configured CA. One, not one per app: each session holds its own TLS context and pool,
        about 150 KB a tenant (30 MB for 200 tenants in a measurement)."""
        if self._msal_session is not None:
            return self._msal_session
        session = requests.Session()
        # No cookies: nothing mxwatch asks for needs them, and tenants must not share any.
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        session.headers["User-Agent"] = self._user_agent
        verify: str | bool = str(self._config.ca_bundle) if self._config.ca_bundle else True
        session.verify = verify
        # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE replace session.verify unless the
        # request itself carries `verify`, so bind it (and a timeout) to every request.
        session.request = functools.partial(  # type: ignore[method-assign]
            session.request, timeout=self._timeout, verify=verify
        )
        self._msal_session = session
        return session

    async def _app(self, tenant: TenantConfig) -> Any:
        key = (self._authority(tenant), tenant.client_id, tenant.credential)
        lock = self._app_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._apps:
                self._apps[key] = await self._build_app(tenant, key[0])
            return self._apps[key]

    async def _build_app(self, tenant: TenantConfig, authority: str) -> Any:
        try:
            credential = load_credential(tenant.credential)
        except CredentialProblem as problem:
            raise _fail(ErrorKind.CREDENTIALS, str(problem)) from None
        # Belt and braces: should any library ever echo the material, the log renderer scrubs it.
        register_secret(credential if isinstance(credential, str) else credential["private_key"])
        import msal  # here, not at the top: a steady `--once` never needs it (~0.2 s to import)

        build = functools.partial(
            msal.ConfidentialClientApplication,
            tenant.client_id,
            client_credential=credential,
            authority=authority,
            http_client=self._session(),
            instance_discovery=None if _is_microsoft_host(authority) else False,
        )
        # MSAL runs OIDC discovery in its constructor, so this is the first network call.
        return await self._call_msal(build, authority)

    async def _call_msal(self, function: Any, url: str) -> Any:
        import msal.exceptions

        try:
            return await asyncio.to_thread(function)
        except requests.exceptions.RequestException as exc:
            if _is_tls_failure(exc):
                raise _fail(ErrorKind.TRANSIENT, _tls_message(url)) from None
            raise _fail(
                ErrorKind.TRANSIENT, f"identity platform {url} unreachable: {type(exc).__name__}"
            ) from None
        except msal.exceptions.MsalServiceError as exc:
            # MSAL raises this for a 5xx from the authority (a 4xx comes back as a dict).
            raise _fail(
                ErrorKind.TRANSIENT, f"identity platform {url} failed: {str(exc)[:_MAX_TEXT]}"
            ) from None
        except json.JSONDecodeError:
            raise _fail(
                ErrorKind.TRANSIENT, f"identity platform {url} sent malformed JSON"
            ) from None
        except ValueError as exc:
            # Raised for a tenant the authority does not know (OIDC discovery answered 4xx).
            raise _fail(
                ErrorKind.CREDENTIALS,
                f"authority {url} rejected the tenant: {str(exc)[:_MAX_TEXT]}",
            ) from None

    async def _token(self, tenant: TenantConfig, *, fresh: bool = False) -> str:
        app = await self._app(tenant)
        key = (self._authority(tenant), tenant.client_id, tenant.credential)
        # One token request at a time per app, so concurrent calls share the cached token.
        async with self._app_locks[key]:
            if fresh:
                await asyncio.to_thread(app.remove_tokens_for_client)
            acquire = functools.partial(app.acquire_token_for_client, scopes=[self._scope()])
            result = await self._call_msal(acquire, self._authority(tenant))
        return self._token_from(tenant, result)

    def _token_from(self, tenant: TenantConfig, result: Any) -> str:
        if not isinstance(result, Mapping):
            raise _fail(ErrorKind.TRANSIENT, "MSAL returned no token result")
        if result.get("token_source") != "cache":
            self.stats.token_requests += 1
        token = result.get("access_token")
        if isinstance(token, str) and token:
            if result.get("token_source") != "cache":
                log.info("token_acquired", tenant=tenant.name, expires_in=result.get("expires_in"))
            return token
        error = str(result.get("error") or "no_token")
        description = str(result.get("error_description") or "").split("\r\n")[0].split("\n")[0]
        kind = ErrorKind.TRANSIENT if error in _TRANSIENT_TOKEN_ERRORS else ErrorKind.CREDENTIALS
        message = f"token request for client {tenant.client_id} failed: {error}"
        if description:
            message += f": {description[:_MAX_TEXT]}"
        raise _fail(kind, message)

    # ----------------------------------------------------------------------- InvokeCommand

    async def _invoke(
        self, tenant: TenantConfig, cmdlet: str, parameters: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Run one cmdlet with retries; the `value` objects, annotation keys dropped."""
        token = await self._token(tenant)
        refreshed = False
        attempt = 1
        while True:
            outcome = await self._attempt(tenant, token, cmdlet, parameters)
            if isinstance(outcome, list):
                return outcome
            if outcome.failure.status == 401:
                if refreshed:
                    raise ExchangeError(outcome.failure)
                # The cached token may have been revoked or expired early: one fresh token.
                refreshed = True
                token = await self._token(tenant, fresh=True)
                continue
            if attempt >= self._max_attempts:
                raise ExchangeError(outcome.failure)
            wait = self._wait(attempt, outcome.retry_after)
            log.warning(
                "exchange_retry",
                tenant=tenant.name,
                cmdlet=cmdlet,
                status=outcome.failure.status,
                attempt=attempt,
                wait=round(wait, 3),
                reason=outcome.failure.message,
            )
            await asyncio.sleep(wait)
            attempt += 1

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._max_retry_wait)
        # Full-size exponential step with jitter, so tenants throttled together spread out.
        step: float = _BACKOFF_BASE * 2.0 ** (attempt - 1)
        return min(step * random.uniform(0.5, 1.0), self._max_retry_wait)  # noqa: S311

    def _url(self, tenant: TenantConfig) -> str:
        return (
            f"{self._config.admin_url.rstrip('/')}/adminapi/beta/{tenant.tenant_id}/InvokeCommand"
        )

    async def _attempt(
        self, tenant: TenantConfig, token: str, cmdlet: str, parameters: Mapping[str, Any]
    ) -> list[dict[str, Any]] | _Retry:
        url = self._url(tenant)
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "X-AnchorMailbox": _ANCHOR_MAILBOX.format(tenant_id=tenant.tenant_id),
            "X-CmdletName": cmdlet,
            "client-request-id": str(uuid.uuid4()),
        }
        body = {"CmdletInput": {"CmdletName": cmdlet, "Parameters": dict(parameters)}}
        semaphore = self._in_flight.setdefault(
            tenant.tenant_id, asyncio.Semaphore(self._max_in_flight)
        )
        if self._all_in_flight is None:
            self._all_in_flight = asyncio.Semaphore(self._max_in_flight_total)
        try:
            async with semaphore, self._all_in_flight:
                response = await self._http.post(url, json=body, headers=headers)
        except httpx.TimeoutException:
            self.stats.api_calls[(cmdlet, "timeout")] += 1
            return _Retry(
                ExchangeFailure(
                    ErrorKind.TRANSIENT,
                    f"{cmdlet}: no answer within {self._timeout}s",
                    None,
                    cmdlet,
                )
            )
        except httpx.TransportError as exc:
            self.stats.api_calls[(cmdlet, "network")] += 1
            if _is_tls_failure(exc):
                raise _fail(ErrorKind.TRANSIENT, _tls_message(url), cmdlet=cmdlet) from None
            message = f"{cmdlet}: cannot reach {url}: {type(exc).__name__}"
            return _Retry(ExchangeFailure(ErrorKind.TRANSIENT, message, None, cmdlet))
        self.stats.api_calls[(cmdlet, str(response.status_code))] += 1
        return self._read(tenant, cmdlet, response)

    def _read(
        self, tenant: TenantConfig, cmdlet: str, response: httpx.Response
    ) -> list[dict[str, Any]] | _Retry:
        status = response.status_code
        if status == 200:
            return self._read_success(tenant, cmdlet, response)
        text = error_text(response.content)
        if status in _RETRY_STATUSES:
            message = f"{cmdlet}: HTTP {status}" + (f": {text}" if text else "")
            failure = ExchangeFailure(ErrorKind.TRANSIENT, message, status, cmdlet)
            return _Retry(failure, retry_after_seconds(response.headers.get("Retry-After")))
        if status == 401:
            message = (
                f"{cmdlet}: the admin API rejected the token (401): check the app's "
                "Exchange.ManageAsApp permission and admin consent in this tenant"
            )
            return _Retry(ExchangeFailure(ErrorKind.CREDENTIALS, message, 401, cmdlet))
        raise _fail(ErrorKind.BLOCKED, _blocked_message(cmdlet, status, text), status, cmdlet)

    def _read_success(
        self, tenant: TenantConfig, cmdlet: str, response: httpx.Response
    ) -> list[dict[str, Any]] | _Retry:
        try:
            body = json.loads(response.content.decode("utf-8"))
            objects, warnings = parse_objects(body)
        except (ValueError, UnicodeDecodeError):
            if _CONCURRENCY_TEXT in response.text.lower():
                message = f"{cmdlet}: throttled (too many concurrent requests for the tenant)"
                failure = ExchangeFailure(ErrorKind.TRANSIENT, message, 200, cmdlet)
                return _Retry(failure, retry_after_seconds(response.headers.get("Retry-After")))
            raise _fail(
                ErrorKind.TRANSIENT,
                f"{cmdlet}: the admin API answered 200 with a body that is not the expected JSON",
                200,
                cmdlet,
            ) from None
        for warning in warnings:
            log.warning("exchange_warning", tenant=tenant.name, cmdlet=cmdlet, warning=warning)
        return objects


def _blocked_message(cmdlet: str, status: int, text: str) -> str:
    if status == 403:
        return (
            f"{cmdlet}: permission denied (403): give the app the Exchange Administrator role "
            "or Exchange RBAC for this cmdlet in the tenant"
        )
    if status == 404:
        return f"{cmdlet}: object not found (404)" + (f": {text}" if text else "")
    return f"{cmdlet}: HTTP {status}: {text or 'the admin API rejected the request'}"


__all__ = [
    "ExchangeClient",
    "ExchangeStats",
    "connector_from_object",
    "connector_matches",
    "error_text",
    "lookup_from_objects",
    "parse_objects",
    "retry_after_seconds",
]
