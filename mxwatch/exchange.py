"""Exchange Online admin API client: MSAL app-only token + InvokeCommand (DESIGN.md §6).

The endpoint is undocumented (reference/exchange-admin-api.md), so every answer is parsed
defensively and every failure is classified by who must act: ErrorKind.BLOCKED (the tenant's
permissions or objects), CREDENTIALS (the app's certificate/secret/consent) or TRANSIENT
(throttling, 5xx, timeouts, TLS or network trouble: retry next cycle).

Every public operation runs under one deadline, `exchange.timeout`: its token, every page, every
retry and every wait. A list is returned whole or not at all: a listing cut short by a failing
page or a refused `@odata.nextLink` is an error, never a shorter list.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import functools
import http.cookiejar
import json
import random
import ssl
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx
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
    NewConnector,
)
from .names import BadName, normalise_name
from .settings import CredentialRef, ExchangeConfig, TenantConfig

if TYPE_CHECKING:  # imported when a token is needed, with msal: a steady cycle needs neither
    import requests

log = structlog.get_logger("mxwatch.exchange")

_ANCHOR_MAILBOX = "APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{tenant_id}"
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Throttling answers (a 429, or the 200 with the concurrency text) come before the cmdlet runs:
# even a write that must not be made twice may be sent again after one.
_NOT_CARRIED_OUT = frozenset({200, 429})
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
# Asked of every InvokeCommand; the server may still send smaller pages.
_PAGE_SIZE_PREFERENCE = "odata.maxpagesize=1000"
# Far more pages than any tenant's connectors or accepted domains fill even at a small page
# size; a server that keeps linking past this is looping, and the listing is refused.
MAX_PAGES = 100
# An InvokeCommand answer for connectors or accepted domains is kilobytes; a body past this
# is refused while it streams, before it can take the process's memory.
MAX_BODY_BYTES = 16 * 1024 * 1024


# --------------------------------------------------------------------------- statistics


@dataclass
class ExchangeStats:
    """Counters for metrics and benchmarks (mutable on purpose).

    `api_calls` is keyed by (cmdlet, outcome); outcome is the HTTP status as text, or
    "timeout" (cut at the operation's deadline) / "network" when no answer came back.
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


def next_link_of(body: Mapping[str, Any]) -> str | None:
    """The `@odata.nextLink` of an InvokeCommand body: None on the last page."""
    link = body.get("@odata.nextLink")
    if link is None:
        return None
    if not isinstance(link, str) or not link.strip():
        # A list goes on, but to where is unreadable: the rest cannot be fetched.
        raise ValueError("'@odata.nextLink' is not a URL")
    return link.strip()


def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    default_port = {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, parts.hostname or "", parts.port or default_port


def follow_link(link: str, current: str, admin_url: str) -> str:
    """The absolute URL of a next-page link, if the bearer token may go there.

    Only https on the scheme, host and port of `admin_url`: the link comes from the server's
    answer, and the request to it carries the token. ValueError says why a link is refused.
    """
    target = urljoin(current, link)
    parts = urlsplit(target)
    try:
        origin = _origin(parts)
    except ValueError:
        raise ValueError("it has an invalid port") from None
    if parts.scheme != "https":
        raise ValueError(f"it is not https ({parts.scheme or 'no scheme'}:)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("it carries user information")
    if origin != _origin(urlsplit(admin_url)):
        raise ValueError(f"it points at {origin[1]!r} port {origin[2]}, not the admin URL")
    return target


def _escaped(text: str) -> str:
    """`text` with control and invisible characters as escapes: safe to log and to show."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


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
    """The one connector matching `identity`, or why there is none.

    Raises ExchangeError (TRANSIENT) when the match has no valid Guid: a write is addressed
    only to a GUID read from the API, never to a name.
    """
    connectors = [connector_from_object(obj) for obj in objects]
    matches = [c for c in connectors if connector_matches(c, identity)]
    if len(matches) == 1:
        if _normal_guid(matches[0].guid) is None:
            raise _fail(
                ErrorKind.TRANSIENT,
                f"Get-InboundConnector: connector {_escaped(matches[0].name)!r} came back "
                f"without a valid Guid ({_escaped(matches[0].guid[:_MAX_TEXT])!r})",
                cmdlet="Get-InboundConnector",
            )
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


@dataclass(frozen=True)
class _Page:
    """One InvokeCommand answer: its objects and the link to the next page, if any."""

    objects: list[dict[str, Any]]
    next_link: str | None


@dataclass(frozen=True)
class _Answer:
    """An HTTP answer read whole; `body` None when it passed MAX_BODY_BYTES."""

    status: int
    headers: httpx.Headers
    body: bytes | None


@dataclass(frozen=True)
class _Command:
    """One cmdlet call: every page of its answer is fetched with this same body.

    `repeatable` is False for a write that must not be made twice (New-InboundConnector): it
    is retried only after an answer that says it was not carried out (throttled, or a
    rejected token), never after a timeout or a 5xx, which may come after the write.
    """

    cmdlet: str
    body: Mapping[str, Any]
    repeatable: bool = True


@dataclass(frozen=True)
class _Deadline:
    """The end of one public operation: `exchange.timeout` bounds all of its work."""

    operation: str
    seconds: float
    at: float  # on the event loop's clock

    @classmethod
    def start(cls, operation: str, seconds: float) -> _Deadline:
        return cls(operation, seconds, asyncio.get_running_loop().time() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - asyncio.get_running_loop().time())

    def passed(self, cmdlet: str = "") -> ExchangeError:
        message = (
            f"{self.operation} did not finish within its {self.seconds:g}s deadline "
            "(exchange.timeout)"
        )
        return _fail(ErrorKind.TRANSIENT, message, cmdlet=cmdlet)

    @contextlib.asynccontextmanager
    async def bound(self, cmdlet: str = "") -> AsyncIterator[None]:
        """Cut the work inside at the deadline, whatever it waits for, as passed()."""
        scope = asyncio.timeout_at(self.at)
        try:
            async with scope:
                yield
        except TimeoutError:
            if not scope.expired():
                raise
            raise self.passed(cmdlet) from None


# The time an MSAL call may still take, read by the requests session in the worker thread.
_msal_time_left: contextvars.ContextVar[float] = contextvars.ContextVar("msal_time_left")


def _with_time_left(seconds: float, function: Callable[[], Any]) -> Any:
    # Runs in the worker thread, inside the context copy asyncio.to_thread made for it.
    _msal_time_left.set(seconds)
    return function()


def _fail(
    kind: ErrorKind, message: str, status: int | None = None, cmdlet: str = ""
) -> ExchangeError:
    return ExchangeError(ExchangeFailure(kind, message, status, cmdlet))


def _incomplete(cmdlet: str, page: int, reason: str, status: int | None = None) -> ExchangeError:
    message = f"{cmdlet}: the listing is incomplete, page {page} was not read: {reason}"
    return _fail(ErrorKind.TRANSIENT, message, status, cmdlet)


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


async def _read_capped(response: httpx.Response) -> bytes | None:
    """The body, or None as soon as it passes MAX_BODY_BYTES (the rest is never read)."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


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
        # The deadline of one operation. None: the configured exchange.timeout (tests and
        # benchmarks may pass their own).
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
            # Per socket operation only; the operation's deadline is what ends a slow answer.
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
        deadline = _Deadline.start("find_connector", self._timeout)
        return await self._find_connector(tenant, identity, deadline)

    async def set_connector_enabled(
        self, tenant: TenantConfig, guid: str, enabled: bool
    ) -> Connector:
        """Set-InboundConnector -Identity <guid> -Enabled <enabled>, then read back by guid."""
        deadline = _Deadline.start("set_connector_enabled", self._timeout)
        cmdlet = "Set-InboundConnector"
        _writable_guid(guid, cmdlet)
        await self._invoke(tenant, cmdlet, {"Identity": guid, "Enabled": enabled}, deadline)
        return await self._read_back(tenant, guid, deadline, f"after {cmdlet}")

    async def create_connector(self, tenant: TenantConfig, new: NewConnector) -> Connector:
        """New-InboundConnector with `new.parameters()` (always Enabled $false); the connector
        as the answer describes it, or as read back by name when the answer leaves it out.

        Never retried after a timeout or a 5xx: a second New could not duplicate the connector
        (Exchange refuses a taken name), but it would fail on the first one's success.
        """
        deadline = _Deadline.start("create_connector", self._timeout)
        cmdlet = "New-InboundConnector"
        objects = await self._invoke(tenant, cmdlet, new.parameters(), deadline, repeatable=False)
        try:
            lookup = lookup_from_objects(new.name, objects)
        except ExchangeError:
            lookup = None  # an object without a valid Guid: the read-back below says which
        if lookup is None or lookup.connector is None:
            lookup = await self._find_connector(tenant, new.name, deadline)
        if lookup.connector is None:
            raise _fail(
                ErrorKind.TRANSIENT,
                f"{cmdlet} succeeded but connector {new.name!r} cannot be read back yet "
                f"({lookup.detail}); directory replication can take a minute",
                cmdlet="Get-InboundConnector",
            )
        return lookup.connector

    async def add_sender_ips(
        self, tenant: TenantConfig, guid: str, ranges: Sequence[str]
    ) -> Connector:
        """Add `ranges` to a disabled connector's SenderIPAddresses, keeping every entry it has;
        the connector as read back.

        The connector is read again first, so that the list sent is the newest one (nothing a
        person added in between is lost) and an enabled connector is never written to: it
        filters live mail, and what it lacks is a person's call.
        """
        deadline = _Deadline.start("add_sender_ips", self._timeout)
        cmdlet = "Set-InboundConnector"
        _writable_guid(guid, cmdlet)
        before = await self._read_back(tenant, guid, deadline, f"before {cmdlet}")
        if before.enabled:
            raise _fail(
                ErrorKind.BLOCKED,
                f"refused to change connector {_escaped(before.name)!r} ({guid}): it is "
                "enabled, and mxwatch changes only a disabled connector's sender IPs",
                cmdlet=cmdlet,
            )
        have = before.sender_ip_addresses
        wanted = (*have, *(r for r in ranges if r not in have))
        if wanted == have:
            return before
        parameters = {"Identity": before.guid, "SenderIPAddresses": list(wanted)}
        await self._invoke(tenant, cmdlet, parameters, deadline)
        return await self._read_back(tenant, guid, deadline, f"after {cmdlet}")

    async def _read_back(
        self, tenant: TenantConfig, guid: str, deadline: _Deadline, when: str
    ) -> Connector:
        """The connector with exactly this GUID, read `when` a write."""
        lookup = await self._find_connector(tenant, guid, deadline)
        if lookup.connector is None or _normal_guid(lookup.connector.guid) != _normal_guid(guid):
            detail = lookup.detail or "another connector answered to that identity"
            raise _fail(
                ErrorKind.BLOCKED,
                f"read-back {when} found no connector {guid}: {detail}",
                cmdlet="Get-InboundConnector",
            )
        return lookup.connector

    async def accepted_domains(self, tenant: TenantConfig) -> AcceptedDomains:
        """Get-AcceptedDomain: every domain the tenant accepts mail for, normalised."""
        deadline = _Deadline.start("accepted_domains", self._timeout)
        objects = await self._invoke(tenant, "Get-AcceptedDomain", {}, deadline)
        found: dict[str, AcceptedDomain] = {}
        unreadable: list[str] = []
        for obj in objects:
            raw = obj.get("DomainName")
            try:
                if not isinstance(raw, str):
                    raise BadName("not a domain name")
                name = normalise_name(raw)
            except BadName:
                # No domain name is longer than _MAX_TEXT: the cut loses nothing readable.
                shown = _escaped(raw if isinstance(raw, str) else json.dumps(raw))[:_MAX_TEXT]
                log.warning("accepted_domain_skipped", tenant=tenant.name, domain=shown)
                unreadable.append(shown)
                continue
            subdomains = _as_bool(obj.get("MatchSubDomains"))
            found[name] = AcceptedDomain(
                name, subdomains or (name in found and found[name].match_subdomains)
            )
        return AcceptedDomains(tuple(found[n] for n in sorted(found)), tuple(unreadable))

    async def _find_connector(
        self, tenant: TenantConfig, identity: str, deadline: _Deadline
    ) -> ConnectorLookup:
        try:
            objects = await self._invoke(
                tenant, "Get-InboundConnector", {"Identity": identity}, deadline
            )
        except ExchangeError as exc:
            if exc.failure.kind is ErrorKind.BLOCKED and exc.failure.status == 404:
                detail = f"no inbound connector is named {identity!r} or has that GUID (404)"
                return ConnectorLookup(identity, LookupStatus.MISSING, None, 0, detail)
            raise
        return lookup_from_objects(identity, objects)

    # ----------------------------------------------------------------------- tokens

    def _authority(self, tenant: TenantConfig) -> str:
        return f"{self._config.login_url.rstrip('/')}/{tenant.tenant_id}"

    def _scope(self) -> str:
        return f"{self._config.admin_url.rstrip('/')}/.default"

    def _session(self) -> requests.Session:
        """The requests session every MSAL app of this client shares, verifying against the
        configured CA. One, not one per app: each session holds its own TLS context and
        connection pool, which hundreds of tenants would multiply for nothing."""
        if self._msal_session is not None:
            return self._msal_session
        import requests

        session = requests.Session()
        # No cookies: nothing mxwatch asks for needs them, and tenants must not share any.
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        session.headers["User-Agent"] = self._user_agent
        verify: str | bool = str(self._config.ca_bundle) if self._config.ca_bundle else True
        session.verify = verify
        send = session.request

        # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE replace session.verify unless the
        # request itself carries `verify`, so bind it to every request, with the time the
        # operation has left (requests' timeout is per socket operation, but it is all there is).
        def request(*args: Any, **kwargs: Any) -> requests.Response:
            kwargs["timeout"] = _msal_time_left.get(self._timeout)
            kwargs["verify"] = verify
            return send(*args, **kwargs)

        session.request = request  # type: ignore[method-assign]
        self._msal_session = session
        return session

    async def _app(self, tenant: TenantConfig, deadline: _Deadline) -> Any:
        key = (self._authority(tenant), tenant.client_id, tenant.credential)
        lock = self._app_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._apps:
                self._apps[key] = await self._build_app(tenant, key[0], deadline)
            return self._apps[key]

    async def _build_app(self, tenant: TenantConfig, authority: str, deadline: _Deadline) -> Any:
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
        return await self._call_msal(build, authority, deadline)

    async def _call_msal(self, function: Any, url: str, deadline: _Deadline) -> Any:
        import msal.exceptions
        import requests

        time_left = deadline.remaining()
        if time_left <= 0:
            raise deadline.passed()
        try:
            # The thread cannot be cancelled: the caller's deadline.bound() stops waiting for
            # it, and requests gets only the time left, so the thread ends soon after.
            return await asyncio.to_thread(_with_time_left, time_left, function)
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

    async def _token(
        self, tenant: TenantConfig, deadline: _Deadline, *, fresh: bool = False
    ) -> str:
        async with deadline.bound():
            app = await self._app(tenant, deadline)
            key = (self._authority(tenant), tenant.client_id, tenant.credential)
            # One token request at a time per app, so concurrent calls share the cached token.
            async with self._app_locks[key]:
                if fresh:
                    await asyncio.to_thread(app.remove_tokens_for_client)
                acquire = functools.partial(app.acquire_token_for_client, scopes=[self._scope()])
                result = await self._call_msal(acquire, self._authority(tenant), deadline)
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
        self,
        tenant: TenantConfig,
        cmdlet: str,
        parameters: Mapping[str, Any],
        deadline: _Deadline,
        *,
        repeatable: bool = True,
    ) -> list[dict[str, Any]]:
        """Run one cmdlet and read every page of its answer; the `value` objects of all pages,
        annotation keys dropped. Any page that cannot be read fails the whole call."""
        body = {"CmdletInput": {"CmdletName": cmdlet, "Parameters": dict(parameters)}}
        command = _Command(cmdlet, body, repeatable)
        url = self._url(tenant)
        followed = [url]
        objects: list[dict[str, Any]] = []
        while True:
            page = await self._page(tenant, command, url, deadline, len(followed))
            objects += page.objects
            if page.next_link is None:
                return objects
            url = self._next_url(cmdlet, page.next_link, followed)
            followed.append(url)

    async def _page(
        self, tenant: TenantConfig, command: _Command, url: str, deadline: _Deadline, number: int
    ) -> _Page:
        try:
            return await self._with_retries(tenant, command, url, deadline)
        except ExchangeError as exc:
            if number == 1:
                raise  # nothing was read yet: the failure speaks for itself
            failure = exc.failure
            raise _incomplete(command.cmdlet, number, failure.message, failure.status) from None

    def _next_url(self, cmdlet: str, link: str, followed: list[str]) -> str:
        page = len(followed) + 1
        try:
            url = follow_link(link, followed[-1], self._config.admin_url)
        except ValueError as exc:
            raise _incomplete(cmdlet, page, f"refused its @odata.nextLink: {exc}") from None
        if url in followed:
            raise _incomplete(cmdlet, page, "its @odata.nextLink points at a page already read")
        if len(followed) >= MAX_PAGES:
            raise _incomplete(cmdlet, page, f"the answer runs past {MAX_PAGES} pages")
        return url

    async def _with_retries(
        self, tenant: TenantConfig, command: _Command, url: str, deadline: _Deadline
    ) -> _Page:
        token = await self._token(tenant, deadline)
        refreshed = False
        attempt = 1
        while True:
            outcome = await self._attempt(tenant, token, command, url, deadline)
            if isinstance(outcome, _Page):
                return outcome
            if outcome.failure.status == 401:
                if refreshed:
                    raise ExchangeError(outcome.failure)
                # The cached token may have been revoked or expired early: one fresh token.
                refreshed = True
                token = await self._token(tenant, deadline, fresh=True)
                continue
            if attempt >= self._max_attempts:
                raise ExchangeError(outcome.failure)
            if not command.repeatable and outcome.failure.status not in _NOT_CARRIED_OUT:
                raise _maybe_made(outcome.failure)
            wait = self._wait(attempt, outcome.retry_after)
            if wait >= deadline.remaining():
                raise _out_of_time(outcome.failure, wait, deadline)
            log.warning(
                "exchange_retry",
                tenant=tenant.name,
                cmdlet=command.cmdlet,
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
        self, tenant: TenantConfig, token: str, command: _Command, url: str, deadline: _Deadline
    ) -> _Page | _Retry:
        cmdlet = command.cmdlet
        try:
            async with deadline.bound(cmdlet):
                answer = await self._post(tenant, token, command, url)
        except ExchangeError:
            self.stats.api_calls[(cmdlet, "timeout")] += 1
            raise
        except httpx.TimeoutException:
            self.stats.api_calls[(cmdlet, "timeout")] += 1
            message = f"{cmdlet}: no answer within {self._timeout:g}s"
            return _Retry(ExchangeFailure(ErrorKind.TRANSIENT, message, None, cmdlet))
        except httpx.TransportError as exc:
            self.stats.api_calls[(cmdlet, "network")] += 1
            if _is_tls_failure(exc):
                raise _fail(ErrorKind.TRANSIENT, _tls_message(url), cmdlet=cmdlet) from None
            message = f"{cmdlet}: cannot reach {url}: {type(exc).__name__}"
            return _Retry(ExchangeFailure(ErrorKind.TRANSIENT, message, None, cmdlet))
        self.stats.api_calls[(cmdlet, str(answer.status))] += 1
        return self._read(tenant, cmdlet, answer)

    async def _post(self, tenant: TenantConfig, token: str, command: _Command, url: str) -> _Answer:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "Prefer": _PAGE_SIZE_PREFERENCE,
            "X-AnchorMailbox": _ANCHOR_MAILBOX.format(tenant_id=tenant.tenant_id),
            "X-CmdletName": command.cmdlet,
            "client-request-id": str(uuid.uuid4()),
        }
        semaphore = self._in_flight.setdefault(
            tenant.tenant_id, asyncio.Semaphore(self._max_in_flight)
        )
        if self._all_in_flight is None:
            self._all_in_flight = asyncio.Semaphore(self._max_in_flight_total)
        async with (
            semaphore,
            self._all_in_flight,
            self._http.stream("POST", url, json=command.body, headers=headers) as response,
        ):
            body = await _read_capped(response)
        return _Answer(response.status_code, response.headers, body)

    def _read(self, tenant: TenantConfig, cmdlet: str, answer: _Answer) -> _Page | _Retry:
        status = answer.status
        if answer.body is None:
            raise _fail(
                ErrorKind.TRANSIENT,
                f"{cmdlet}: the answer (HTTP {status}) is larger than "
                f"{MAX_BODY_BYTES // 2**20} MiB; refused",
                status,
                cmdlet,
            )
        if status == 200:
            return self._read_success(tenant, cmdlet, answer, answer.body)
        text = error_text(answer.body)
        if status in _RETRY_STATUSES:
            message = f"{cmdlet}: HTTP {status}" + (f": {text}" if text else "")
            failure = ExchangeFailure(ErrorKind.TRANSIENT, message, status, cmdlet)
            return _Retry(failure, retry_after_seconds(answer.headers.get("Retry-After")))
        if status == 401:
            message = (
                f"{cmdlet}: the admin API rejected the token (401): check the app's "
                "Exchange.ManageAsApp permission and admin consent in this tenant"
            )
            return _Retry(ExchangeFailure(ErrorKind.CREDENTIALS, message, 401, cmdlet))
        raise _fail(ErrorKind.BLOCKED, _blocked_message(cmdlet, status, text), status, cmdlet)

    def _read_success(
        self, tenant: TenantConfig, cmdlet: str, answer: _Answer, body: bytes
    ) -> _Page | _Retry:
        try:
            document = json.loads(body.decode("utf-8"))
            objects, warnings = parse_objects(document)
            next_link = next_link_of(document)
        except (ValueError, UnicodeDecodeError):
            if _CONCURRENCY_TEXT in body.decode("utf-8", "replace").lower():
                message = f"{cmdlet}: throttled (too many concurrent requests for the tenant)"
                failure = ExchangeFailure(ErrorKind.TRANSIENT, message, 200, cmdlet)
                return _Retry(failure, retry_after_seconds(answer.headers.get("Retry-After")))
            raise _fail(
                ErrorKind.TRANSIENT,
                f"{cmdlet}: the admin API answered 200 with a body that is not the expected JSON",
                200,
                cmdlet,
            ) from None
        for warning in warnings:
            log.warning("exchange_warning", tenant=tenant.name, cmdlet=cmdlet, warning=warning)
        return _Page(objects, next_link)


def _writable_guid(guid: str, cmdlet: str) -> None:
    """A write is addressed only to a GUID read from the API, never to a name."""
    if _normal_guid(guid) is None:
        raise _fail(
            ErrorKind.BLOCKED,
            f"refused to write to connector {_escaped(guid)!r}: not a GUID read from the API",
            cmdlet=cmdlet,
        )


def _maybe_made(failure: ExchangeFailure) -> ExchangeError:
    message = (
        f"{failure.message}; not retried: the write may have been made before the answer was "
        "lost, so read it back before trying again"
    )
    return ExchangeError(replace(failure, message=message))


def _out_of_time(failure: ExchangeFailure, wait: float, deadline: _Deadline) -> ExchangeError:
    message = (
        f"{failure.message}; gave up: the next attempt, in {wait:.1f}s, would start after "
        f"the {deadline.seconds:g}s deadline of {deadline.operation} (exchange.timeout)"
    )
    return ExchangeError(replace(failure, message=message))


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
    "MAX_BODY_BYTES",
    "MAX_PAGES",
    "ExchangeClient",
    "ExchangeStats",
    "connector_from_object",
    "connector_matches",
    "error_text",
    "follow_link",
    "lookup_from_objects",
    "next_link_of",
    "parse_objects",
    "retry_after_seconds",
]
