"""A local stand-in for Entra ID and the Exchange Online admin API.

It follows reference/exchange-admin-api.md.

One HTTPS server, on 127.0.0.1 and a free port, serves both the authority (OIDC discovery and the
client-credentials token endpoint) and `POST /adminapi/beta/{tenant}/InvokeCommand`. Its
certificate comes from a throw-away trustme CA written to `ca_pem_path`, so a config with
cloud = "custom", login_url = admin_url = `url` and ca_bundle = `ca_pem_path` talks to it with the
real MSAL and httpx. Operators can rehearse against it; tests inject faults into it.

    with ExchangeSandbox() as sandbox:
        sandbox.register_app(tenant_id, client_id, secret="s3cret")
        guid = sandbox.add_connector(tenant_id, "Inbound from Mailprotector Only")

Lists (Get-InboundConnector, Get-AcceptedDomain) come in pages of at most `page_size` objects,
fewer if the request says `Prefer: odata.maxpagesize=N`. A page that is not the last carries
`@odata.nextLink`: the InvokeCommand URL with an opaque `$skiptoken`, to be POSTed the same body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import jwt
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

CONCURRENT_REQUESTS_TEXT = (
    "The request was throttled: the maximum number of concurrent requests per tenant "
    "was exceeded. Please retry after some time."
)
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_COLLECTION = "#Collection(String)"
# Fields whose values are string collections carry an annotation key, as the real API does.
_COLLECTION_FIELDS = (
    "SenderDomains",
    "SenderIPAddresses",
    "AssociatedAcceptedDomains",
    "EFSkipIPs",
)
_SETTABLE = frozenset(
    {
        "Name",
        "Enabled",
        "Comment",
        "ConnectorType",
        "ConnectorSource",
        "SenderDomains",
        "SenderIPAddresses",
        "RestrictDomainsToIPAddresses",
        "RestrictDomainsToCertificate",
        "RequireTls",
        "TlsSenderCertificateName",
        "EFSkipIPs",
        "EFSkipLastIP",
        "EFUsers",
        "TreatMessagesAsInternal",
        "CloudServicesMailEnabled",
        "ScanAndDropRecipients",
        "AssociatedAcceptedDomains",
    }
)
# What New-InboundConnector gives a connector for every parameter the request leaves out.
_NEW_CONNECTOR_DEFAULTS: Mapping[str, Any] = {
    "Enabled": True,
    "ConnectorType": "Partner",
    "SenderIPAddresses": [],
    "RestrictDomainsToIPAddresses": False,
    "RequireTls": True,
}
_BOOLEANS = frozenset(
    {
        "Enabled",
        "RestrictDomainsToIPAddresses",
        "RestrictDomainsToCertificate",
        "RequireTls",
        "EFSkipLastIP",
        "TreatMessagesAsInternal",
        "CloudServicesMailEnabled",
    }
)


# --------------------------------------------------------------------------- values


@dataclass
class Fault:
    """One injected misbehaviour, consumed `times` times (None: until cleared).

    `target` is "api" (InvokeCommand) or "token" (the token endpoint); `cmdlet` and `tenant`
    narrow an api fault, and `later_pages_only` narrows it to requests for a page after the
    first. `delay` sleeps before answering; with `status` None the request is then served
    normally. `body` None gives a realistic default body for `status`. `value` replaces the
    objects of a 200 answer (a connector without a Guid, say); `next_link` sets the
    `@odata.nextLink` of a 200 answer; `trickle` spreads the writing of the body over that
    many seconds, a few bytes at a time.
    """

    status: int | None = None
    body: bytes | None = None
    content_type: str = "application/json; charset=utf-8"
    retry_after: str | None = None
    delay: float = 0.0
    value: list[dict[str, Any]] | None = None
    next_link: str | None = None
    trickle: float = 0.0
    target: str = "api"
    cmdlet: str | None = None
    tenant: str | None = None
    later_pages_only: bool = False
    times: int | None = 1

    @classmethod
    def malformed_json(cls, **kwargs: Any) -> Fault:
        return cls(status=200, body=b'{"value": [{"Name": "Inbound', **kwargs)

    @classmethod
    def concurrent_requests(cls, **kwargs: Any) -> Fault:
        """The 200 with a plain-text throttling message that Exchange sometimes sends."""
        body = CONCURRENT_REQUESTS_TEXT.encode()
        return cls(status=200, body=body, content_type="text/plain; charset=utf-8", **kwargs)

    @classmethod
    def forbidden_nul(cls, **kwargs: Any) -> Fault:
        """A 403 whose body is NUL bytes, as seen from the real endpoint."""
        return cls(status=403, body=b"\x00" * 16, content_type="text/plain", **kwargs)

    @classmethod
    def huge(cls, size: int, **kwargs: Any) -> Fault:
        """A 200 of `size` bytes that is valid JSON for an empty list: only its size is wrong."""
        return cls(status=200, body=b'{"value": [' + b" " * size + b"]}", **kwargs)


@dataclass(frozen=True)
class RecordedRequest:
    at: float  # time.monotonic() when the request arrived
    method: str
    path: str
    endpoint: str  # "discovery" | "token" | "api" | "other"
    tenant: str | None
    cmdlet: str | None
    parameters: Mapping[str, Any]
    status: int
    had_auth: bool
    client_id: str | None = None
    prefer: str | None = None  # the Prefer header
    body: bytes = b""  # the request body (InvokeCommand only: a token request holds secrets)


@dataclass
class _App:
    client_id: str
    secret: str | None
    public_key: Any | None  # the registered certificate's public key
    thumbprints: frozenset[str]  # base64url SHA-1 and SHA-256 of the certificate


@dataclass(frozen=True)
class _AcceptedDomain:
    name: str  # DomainName exactly as the API sends it: any case, Unicode, even invalid
    match_subdomains: bool = False


@dataclass
class _Tenant:
    tenant_id: str
    apps: dict[str, _App] = field(default_factory=dict)
    connectors: list[dict[str, Any]] = field(default_factory=list)
    accepted_domains: list[_AcceptedDomain] = field(default_factory=list)


@dataclass(frozen=True)
class _Cursor:
    """The rest of a listing, behind one $skiptoken."""

    tenant_id: str
    cmdlet_input: Any  # the parsed CmdletInput each page's request must repeat
    objects: list[dict[str, Any]]


@dataclass(frozen=True)
class _Token:
    tenant_id: str
    client_id: str
    expires_at: float


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> _Answer:
    return _Answer(status, json.dumps(payload).encode(), headers=headers or {})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def _entra_error(status: int, error: str, code: str, text: str) -> _Answer:
    description = f"{code}: {text} Trace ID: {uuid.uuid4()} Timestamp: {_now_text()}"
    payload = {
        "error": error,
        "error_description": description,
        "error_codes": [int(code.removeprefix("AADSTS"))],
        "timestamp": _now_text(),
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
    }
    return _json(status, payload)


def _admin_error(status: int, code: str, exception_type: str, text: str) -> _Answer:
    """An error body in the admin API's shape (see the reference's Errors section)."""
    payload = {
        "error": {
            "code": code,
            "message": "Invalid Operation" if status == 400 else text,
            "details": [{"code": "Client", "target": "", "message": f"|{exception_type}|{text}"}],
            "innererror": {
                "message": "Invalid Operation",
                "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
                "internalexception": {"message": text, "type": exception_type},
            },
        }
    }
    return _json(status, payload)


def _default_fault_body(status: int) -> bytes:
    if status in (401, 403):
        return b""
    if status == 400:
        return _admin_error(400, "BadRequest", "System.ArgumentException", "Injected fault").body
    if status == 404:
        return _admin_error(
            404, "NotFound", "ManagementObjectNotFoundException", "Injected: object not found"
        ).body
    return json.dumps(
        {"error": {"code": str(status), "message": f"Injected HTTP {status}"}}
    ).encode()


# --------------------------------------------------------------------------- the sandbox


class ExchangeSandbox:
    """The emulator. Thread-safe: the server threads and the test thread share `_lock`."""

    def __init__(
        self, *, token_lifetime: int = 3600, page_size: int = 1000, workdir: Path | None = None
    ) -> None:
        self.token_lifetime = token_lifetime
        self.page_size = page_size  # the most objects in one page of a list; tests lower it
        self._lock = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}
        self._tokens: dict[str, _Token] = {}
        self._cursors: dict[str, _Cursor] = {}
        self._faults: list[Fault] = []
        self._requests: list[RecordedRequest] = []
        self._tmp = (
            tempfile.TemporaryDirectory(prefix="mxwatch-sandbox-") if workdir is None else None
        )
        self._workdir = workdir or Path(self._tmp.name if self._tmp else ".")
        self._ca = trustme.CA()
        self.ca_pem_path = self._workdir / "sandbox-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_pem_path))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> ExchangeSandbox:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        server = _Server(("127.0.0.1", 0), _Handler, context, self)
        self._server = server
        self.url = f"https://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ExchangeSandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------- set-up helpers

    def _tenant(self, tenant_id: str) -> _Tenant:
        return self._tenants.setdefault(tenant_id.lower(), _Tenant(tenant_id.lower()))

    def add_tenant(self, tenant_id: str, *, accepted_domains: Iterable[str] = ()) -> None:
        with self._lock:
            domains = [_AcceptedDomain(name) for name in accepted_domains]
            self._tenant(tenant_id).accepted_domains = domains

    def set_accepted_domains(self, tenant_id: str, domains: Iterable[str]) -> None:
        self.add_tenant(tenant_id, accepted_domains=domains)

    def add_accepted_domain(
        self, tenant_id: str, name: str, *, match_subdomains: bool = False
    ) -> None:
        """One more accepted domain; `name` is sent as given (case, Unicode, invalid names)."""
        with self._lock:
            self._tenant(tenant_id).accepted_domains.append(_AcceptedDomain(name, match_subdomains))

    def register_app(
        self,
        tenant_id: str,
        client_id: str,
        *,
        secret: str | None = None,
        certificate_pem: bytes | str | None = None,
    ) -> None:
        """Consent an app in a tenant, with a client secret and/or a certificate (public PEM).

        Registering the same client again replaces its credentials (a rotation).
        """
        public_key = None
        thumbprints: frozenset[str] = frozenset()
        if certificate_pem is not None:
            raw = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
            cert = x509.load_pem_x509_certificate(raw)
            der = cert.public_bytes(serialization.Encoding.DER)
            public_key = cert.public_key()
            thumbprints = frozenset(
                {
                    _b64url(hashlib.sha1(der, usedforsecurity=False).digest()),
                    _b64url(hashlib.sha256(der).digest()),
                }
            )
        with self._lock:
            app = _App(client_id.lower(), secret, public_key, thumbprints)
            self._tenant(tenant_id).apps[client_id.lower()] = app

    def add_connector(self, tenant_id: str, name: str, **fields: Any) -> str:
        """Create a connector as New-InboundConnector would (no duplicate check); returns its GUID.

        Defaults describe a well-formed, disabled Mailprotector partner connector.
        """
        obj = _new_connector(name, {"Enabled": False, **fields})
        with self._lock:
            self._tenant(tenant_id).connectors.append(obj)
        return str(obj["Guid"])

    def add_on_premises_connector(self, tenant_id: str, name: str, *, enabled: bool = True) -> str:
        """An inbound connector of another type: OnPremises, no IP restriction, enabled."""
        return self.add_connector(
            tenant_id,
            name,
            Enabled=enabled,
            ConnectorType="OnPremises",
            SenderIPAddresses=[],
            RestrictDomainsToIPAddresses=False,
            RequireTls=False,
        )

    def connector(self, tenant_id: str, guid: str) -> dict[str, Any]:
        """A copy of a connector's current state."""
        with self._lock:
            for obj in self._tenant(tenant_id).connectors:
                if obj["Guid"] == guid.lower():
                    return json.loads(json.dumps(obj))  # type: ignore[no-any-return]
        raise KeyError(guid)

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(replace(fault))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def mint_token(self, tenant_id: str, client_id: str) -> str:
        """An access token bound to a tenant, as the token endpoint would issue it."""
        access_token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[access_token] = _Token(
                tenant_id.lower(), client_id.lower(), time.time() + self.token_lifetime
            )
        return access_token

    def token_response(self, access_token: str) -> bytes:
        """A token endpoint answer carrying `access_token` (for Fault(target="token", body=...))."""
        payload = {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": access_token,
        }
        return json.dumps(payload).encode()

    def revoke_tokens(self) -> None:
        """Forget every issued token, so the next API call answers 401."""
        with self._lock:
            self._tokens.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    # ----------------------------------------------------------------------- internals

    def _take_fault(
        self, target: str, tenant: str | None, cmdlet: str | None, later_page: bool = False
    ) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.target != target:
                    continue
                if fault.later_pages_only and not later_page:
                    continue
                if fault.cmdlet is not None and fault.cmdlet.lower() != (cmdlet or "").lower():
                    continue
                if fault.tenant is not None and fault.tenant.lower() != (tenant or ""):
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # ----------------------------------------------------------------------- authority

    def discovery(self, tenant_id: str) -> _Answer:
        with self._lock:
            known = tenant_id.lower() in self._tenants
        if not known:
            return _entra_error(
                400, "invalid_tenant", "AADSTS90002", f"Tenant '{tenant_id}' not found."
            )
        base = f"{self.url}/{tenant_id}"
        return _json(
            200,
            {
                "issuer": f"{self.url}/{tenant_id}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "jwks_uri": f"{self.url}/{tenant_id}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "tenant_region_scope": "EU",
            },
        )

    def token(
        self, tenant_id: str, form: Mapping[str, str], basic: tuple[str, str] | None
    ) -> _Answer:
        client_id = (basic[0] if basic else form.get("client_id", "")).lower()
        if form.get("grant_type") != "client_credentials":
            return _entra_error(
                400,
                "unsupported_grant_type",
                "AADSTS70003",
                "The app requested an unsupported grant type.",
            )
        if not form.get("scope", "").endswith("/.default"):
            return _entra_error(
                400, "invalid_scope", "AADSTS1002012", "The provided value for scope is not valid."
            )
        with self._lock:
            tenant = self._tenants.get(tenant_id.lower())
            app = tenant.apps.get(client_id) if tenant else None
        if tenant is None:
            return _entra_error(
                400, "invalid_request", "AADSTS90002", f"Tenant '{tenant_id}' not found."
            )
        if app is None:
            return _entra_error(
                400,
                "unauthorized_client",
                "AADSTS700016",
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant_id}'.",
            )
        problem = self._authenticate(app, tenant_id, form, basic)
        if problem is not None:
            return problem
        access_token = self.mint_token(tenant.tenant_id, client_id)
        return _Answer(200, self.token_response(access_token))

    def _authenticate(
        self, app: _App, tenant_id: str, form: Mapping[str, str], basic: tuple[str, str] | None
    ) -> _Answer | None:
        secret = basic[1] if basic else form.get("client_secret")
        if secret is not None:
            if app.secret is not None and hmac.compare_digest(secret.encode(), app.secret.encode()):
                return None
            return _entra_error(
                401,
                "invalid_client",
                "AADSTS7000215",
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                f"the client secret value, not the client secret ID, for a secret added to app "
                f"'{app.client_id}'.",
            )
        assertion = form.get("client_assertion")
        if assertion is None or form.get("client_assertion_type") != _ASSERTION_TYPE:
            return _entra_error(
                401,
                "invalid_client",
                "AADSTS7000216",
                "'client_assertion', 'client_secret' or 'request' is required for the "
                "'client_credentials' grant type.",
            )
        return self._check_assertion(app, tenant_id, assertion)

    def _check_assertion(self, app: _App, tenant_id: str, assertion: str) -> _Answer | None:
        def reject(code: str, text: str) -> _Answer:
            return _entra_error(401, "invalid_client", code, text)

        if app.public_key is None:
            return reject("AADSTS700027", "Client assertion contains an invalid signature.")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.InvalidTokenError:
            return reject("AADSTS50027", "JWT token is invalid or malformed.")
        # MSAL pads its base64url thumbprints; RFC 7515 does not. Accept both spellings.
        thumbprint = str(header.get("x5t#S256") or header.get("x5t") or "").rstrip("=")
        if thumbprint not in app.thumbprints:
            return reject(
                "AADSTS700027",
                f"The certificate with identifier used to sign the client assertion is not "
                f"registered on application '{app.client_id}'.",
            )
        audience = f"{self.url}/{tenant_id}/oauth2/v2.0/token"
        try:
            claims = jwt.decode(
                assertion,
                app.public_key,
                algorithms=["RS256", "PS256"],
                audience=audience,
                issuer=app.client_id,
                options={"require": ["exp", "aud", "iss", "sub"]},
                leeway=300,
            )
        except jwt.InvalidTokenError as exc:
            return reject(
                "AADSTS700027", f"Client assertion failed validation: {type(exc).__name__}."
            )
        if str(claims.get("sub", "")).lower() != app.client_id:
            return reject("AADSTS700023", "Client assertion subject does not match the client.")
        return None

    # ----------------------------------------------------------------------- admin API

    def authorise(self, tenant_id: str, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        with self._lock:
            token = self._tokens.get(authorization.removeprefix("Bearer ").strip())
        return (
            token is not None
            and token.tenant_id == tenant_id.lower()
            and token.expires_at > time.time()
        )

    def client_of(self, authorization: str | None) -> str | None:
        """The app a bearer token was issued to, if it is one of ours: who made a request."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        with self._lock:
            token = self._tokens.get(authorization.removeprefix("Bearer ").strip())
        return token.client_id if token is not None else None

    def invoke(
        self, tenant_id: str, cmdlet_input: Mapping[str, Any], page_size: int | None = None
    ) -> _Answer:
        """Run a cmdlet; a list answer holds its first page (`page_size`: from Prefer)."""
        cmdlet = str(cmdlet_input["CmdletName"])
        parameters = dict(cmdlet_input.get("Parameters") or {})
        listers = {
            "get-inboundconnector": self._get_inbound_connector,
            "get-accepteddomain": self._get_accepted_domain,
        }
        writers = {
            "set-inboundconnector": self._set_inbound_connector,
            "new-inboundconnector": self._new_inbound_connector,
        }
        with self._lock:
            tenant = self._tenant(tenant_id)
            lister = listers.get(cmdlet.lower())
            writer = writers.get(cmdlet.lower())
            if lister is not None:
                # A snapshot, as a server-side cursor: later writes do not shift the pages.
                objects = json.loads(json.dumps(lister(tenant, parameters)))
            elif writer is not None:
                return writer(tenant, parameters)
            else:
                return _Answer(403, b"", "text/plain")  # unknown cmdlet or no RBAC role
        return self._page(_Cursor(tenant.tenant_id, cmdlet_input, objects), page_size)

    def next_page(
        self,
        tenant_id: str,
        skiptoken: str,
        cmdlet_input: Mapping[str, Any],
        page_size: int | None = None,
    ) -> _Answer:
        """The page behind a `$skiptoken`, for a request that repeats the listing's body."""
        with self._lock:
            cursor = self._cursors.get(skiptoken)
        if cursor is None or cursor.tenant_id != tenant_id.lower():
            return _admin_error(
                400, "BadRequest", "System.ArgumentException", "The skip token is not valid."
            )
        if cursor.cmdlet_input != cmdlet_input:
            return _admin_error(
                400,
                "BadRequest",
                "System.ArgumentException",
                "The request body is not the one that started this listing.",
            )
        return self._page(cursor, page_size)

    def _page(self, listing: _Cursor, page_size: int | None) -> _Answer:
        size = max(1, min(self.page_size, page_size or self.page_size))
        page, rest = listing.objects[:size], listing.objects[size:]
        next_link = None
        if rest:
            skiptoken = secrets.token_urlsafe(16)
            with self._lock:
                self._cursors[skiptoken] = replace(listing, objects=rest)
            invoke_url = f"{self.url}/adminapi/beta/{listing.tenant_id}/InvokeCommand"
            next_link = f"{invoke_url}?$skiptoken={skiptoken}"
        cmdlet = str(listing.cmdlet_input["CmdletName"])
        answer = self.envelope(cmdlet, page, next_link=next_link)
        if page_size is None:
            return answer
        applied = {"Preference-Applied": f"odata.maxpagesize={page_size}"}
        return replace(answer, headers={**answer.headers, **applied})

    def envelope(
        self,
        cmdlet: str,
        objects: list[dict[str, Any]],
        warnings: Iterable[str] = (),
        next_link: str | None = None,
    ) -> _Answer:
        """A 200 InvokeCommand answer carrying `objects`."""
        entity = "InboundConnector" if "Connector" in cmdlet else "AcceptedDomain"
        payload: dict[str, Any] = {
            "@odata.context": f"{self.url}/adminapi/beta/$metadata#{entity}",
            "adminapi.warnings@odata.type": _COLLECTION,
            "@adminapi.warnings": list(warnings),
            "value": [_annotated(obj) for obj in objects],
        }
        if next_link is not None:
            payload["@odata.nextLink"] = next_link
        return _json(200, payload)

    def _get_inbound_connector(
        self, tenant: _Tenant, params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        identity = params.get("Identity")
        if identity is None:
            return tenant.connectors
        # The real API answers an unknown identity with every connector; keep that quirk.
        return _match(tenant.connectors, str(identity)) or tenant.connectors

    def _set_inbound_connector(self, tenant: _Tenant, params: dict[str, Any]) -> _Answer:
        identity = params.pop("Identity", None)
        if identity is None:
            return _admin_error(
                400,
                "BadRequest",
                "System.Management.Automation.ParameterBindingException",
                "Cannot process command because of one or more missing mandatory parameters: "
                "Identity.",
            )
        problem = _check_parameters(params)
        if problem is not None:
            return problem
        matches = _match(tenant.connectors, str(identity))
        if not matches:
            return _admin_error(
                404,
                "NotFound",
                "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException",
                f"The operation couldn't be performed because object '{identity}' "
                "couldn't be found.",
            )
        if len(matches) > 1:
            return _admin_error(
                400,
                "BadRequest",
                "Microsoft.Exchange.Configuration.Tasks.ManagementObjectAmbiguousException",
                f"The operation couldn't be performed because '{identity}' "
                "matches multiple entries.",
            )
        obj = matches[0]
        changed = {key: value for key, value in params.items() if obj.get(key) != value}
        warnings = []
        if changed:
            obj.update(changed)
            obj["Identity"] = obj["Name"]
            obj["WhenChangedUTC"] = obj["WhenChanged"] = _now_text()
        else:
            warnings.append(
                "The command completed successfully but no settings of "
                f"'{obj['Name']}' have been modified."
            )
        return self.envelope("Set-InboundConnector", [], warnings)

    def _new_inbound_connector(self, tenant: _Tenant, params: dict[str, Any]) -> _Answer:
        missing = [key for key in ("Name", "SenderDomains") if key not in params]
        if missing:
            return _admin_error(
                400,
                "BadRequest",
                "System.Management.Automation.ParameterBindingException",
                "Cannot process command because of one or more missing mandatory parameters: "
                + " ".join(missing)
                + ".",
            )
        problem = _check_parameters(params)
        if problem is not None:
            return problem
        name = str(params.pop("Name"))
        if any(obj["Name"].lower() == name.lower() for obj in tenant.connectors):
            return _admin_error(
                400,
                "BadRequest",
                "Microsoft.Exchange.Management.Tasks.ADObjectAlreadyExistsException",
                f"The object '{name}' already exists.",
            )
        # Exchange's own defaults, not add_connector's well-formed ones: enabled at once, no
        # sender IPs, no IP restriction. A client that omits a parameter gets these.
        obj = _new_connector(name, {**_NEW_CONNECTOR_DEFAULTS, **params})
        tenant.connectors.append(obj)
        return self.envelope("New-InboundConnector", [obj])

    def _get_accepted_domain(self, tenant: _Tenant, params: dict[str, Any]) -> list[dict[str, Any]]:
        objects = [
            {
                "Name": domain.name,
                "Identity": domain.name,
                "DomainName": domain.name,
                "DomainType": "Authoritative",
                "Default": index == 0,
                "MatchSubDomains": domain.match_subdomains,
                "Guid": str(uuid.uuid5(uuid.NAMESPACE_DNS, domain.name)),
            }
            for index, domain in enumerate(tenant.accepted_domains)
        ]
        identity = params.get("Identity")
        if identity is None:
            return objects
        wanted = str(identity).casefold()
        return [o for o in objects if str(o["DomainName"]).casefold() == wanted]


def _match(connectors: list[dict[str, Any]], identity: str) -> list[dict[str, Any]]:
    wanted = identity.strip().strip("{}").lower()
    return [c for c in connectors if wanted in (c["Name"].lower(), c["Guid"])]


def _check_parameters(params: Mapping[str, Any]) -> _Answer | None:
    for key, value in params.items():
        if key not in _SETTABLE:
            return _admin_error(
                400,
                "BadRequest",
                "System.Management.Automation.ParameterBindingException",
                f"A parameter cannot be found that matches parameter name '{key}'.",
            )
        if key in _BOOLEANS and not isinstance(value, bool):
            return _admin_error(
                400,
                "BadRequest",
                "System.Management.Automation.ParameterBindingException",
                f'Cannot convert value "{value}" to type "System.Boolean" for parameter \'{key}\'.',
            )
    return _check_sender_ips(params.get("SenderIPAddresses"))


def _check_sender_ips(value: Any) -> _Answer | None:
    """Exchange takes IPv4 addresses, address ranges and CIDR ranges of /24 to /32 only.

    The error's shape is the admin API's (reference, Errors); its text is the emulator's own.
    """
    if value is None:
        return None
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        return _admin_error(
            400,
            "BadRequest",
            "System.Management.Automation.ParameterBindingException",
            "Cannot convert the value of parameter 'SenderIPAddresses' to a list of IP ranges.",
        )
    for entry in entries:
        if not _acceptable_sender_ip(entry):
            return _admin_error(
                400,
                "BadRequest",
                "Microsoft.Exchange.Data.DataValidationException",
                f"The value '{entry}' of SenderIPAddresses isn't valid: use IPv4 addresses, "
                "IPv4 address ranges, or CIDR ranges with a subnet mask of /24 through /32. "
                "IPv6 addresses aren't supported.",
            )
    return None


def _acceptable_sender_ip(entry: str) -> bool:
    try:
        if "-" in entry:
            first, last = (ipaddress.ip_address(end.strip()) for end in entry.split("-", 1))
            return first.version == last.version == 4
        network = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return False
    return network.version == 4 and network.prefixlen >= 24


def _new_connector(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    guid = str(uuid.uuid4())
    now = _now_text()
    obj: dict[str, Any] = {
        "Name": name,
        "Identity": name,
        "Id": name,
        "Guid": guid,
        "DistinguishedName": f"CN={name},CN=Transport Settings,CN=Configuration",
        "Enabled": True,
        "ConnectorType": "Partner",
        "ConnectorSource": "Default",
        "Comment": "",
        "SenderDomains": ["smtp:*;1"],
        "SenderIPAddresses": ["192.0.2.0/24"],
        "AssociatedAcceptedDomains": [],
        "RestrictDomainsToIPAddresses": True,
        "RestrictDomainsToCertificate": False,
        "RequireTls": True,
        "TlsSenderCertificateName": None,
        "CloudServicesMailEnabled": False,
        "TreatMessagesAsInternal": False,
        "EFSkipIPs": [],
        "EFSkipLastIP": False,
        "EFUsers": [],
        "ScanAndDropRecipients": [],
        "IsValid": True,
        "ObjectState": "Unchanged",
        "ExchangeVersion": "0.1 (8.14.0.0)",
        "WhenChanged": now,
        "WhenCreated": now,
        "WhenChangedUTC": now,
        "WhenCreatedUTC": now,
    }
    obj.update(params)
    obj["Identity"] = obj["Id"] = obj["Name"]
    return obj


def _annotated(obj: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key in _COLLECTION_FIELDS:
            out[f"{key}@odata.type"] = _COLLECTION
        out[key] = value
    return out


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext,
        sandbox: ExchangeSandbox,
    ) -> None:
        super().__init__(address, handler)
        self.context = context
        self.sandbox = sandbox

    def get_request(self) -> tuple[socket.socket, Any]:
        raw, address = super().get_request()
        # Handshake in the handler thread, not the accept loop: one stalled client must not
        # block the others, and a client that rejects our certificate only ends its own thread.
        return self.context.wrap_socket(
            raw, server_side=True, do_handshake_on_connect=False
        ), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that reject the certificate or time out are expected in tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body then
    # waits for the client's delayed ACK, about 40 ms an answer.
    disable_nagle_algorithm = True
    server: _Server
    _arrived = 0.0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._arrived = time.monotonic()
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            answer = self.server.sandbox.discovery(parts[0])
            self._finish(answer, "discovery", parts[0].lower())
        else:
            self._finish(_json(404, {"error": "not_found"}), "other", None)

    def do_POST(self) -> None:
        self._arrived = time.monotonic()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            self._token(parts[0], body)
        elif len(parts) == 4 and parts[:2] == ["adminapi", "beta"] and parts[3] == "InvokeCommand":
            self._invoke(parts[2], body)
        else:
            self._finish(_json(404, {"error": "not_found"}), "other", None)

    def _token(self, tenant_id: str, body: bytes) -> None:
        sandbox = self.server.sandbox
        form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        basic = _basic_credentials(self.headers.get("Authorization"))
        client_id = basic[0] if basic else form.get("client_id")
        fault = sandbox._take_fault("token", tenant_id.lower(), None)
        answer = self._apply(fault, "") if fault else None
        if answer is None:
            answer = sandbox.token(tenant_id, form, basic)
        self._finish(
            answer, "token", tenant_id.lower(), fault, client_id=client_id, had_auth=bool(basic)
        )

    def _invoke(self, tenant_id: str, body: bytes) -> None:
        sandbox = self.server.sandbox
        tenant = tenant_id.lower()
        authorization = self.headers.get("Authorization")
        try:
            cmdlet_input = json.loads(body)["CmdletInput"]
            cmdlet = str(cmdlet_input["CmdletName"])
            parameters = cmdlet_input.get("Parameters")
        except (ValueError, KeyError, TypeError):
            bad = _admin_error(
                400, "BadRequest", "System.ArgumentException", "Invalid request body."
            )
            self._finish(bad, "api", tenant, had_auth=bool(authorization))
            return
        prefer = self.headers.get("Prefer")
        record = {
            "cmdlet": cmdlet,
            "parameters": parameters or {},
            "had_auth": bool(authorization),
            "prefer": prefer,
            "body": body,
            "client_id": sandbox.client_of(authorization),
        }
        skiptoken = parse_qs(urlsplit(self.path).query).get("$skiptoken", [None])[0]
        fault = sandbox._take_fault("api", tenant, cmdlet, later_page=skiptoken is not None)
        answer = self._apply(fault, cmdlet) if fault else None
        if answer is None and not sandbox.authorise(tenant, authorization):
            answer = _Answer(401, b"", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if answer is None and not isinstance(parameters, dict):
            answer = _admin_error(
                400, "BadRequest", "System.ArgumentException", "Parameters must be an object."
            )
        if answer is None:
            page_size = _max_page_size(prefer)
            if skiptoken is None:
                answer = sandbox.invoke(tenant, cmdlet_input, page_size)
            else:
                answer = sandbox.next_page(tenant, skiptoken, cmdlet_input, page_size)
        if fault is not None and fault.next_link is not None and answer.status == 200:
            answer = _with_next_link(answer, fault.next_link)
        self._finish(answer, "api", tenant, fault, **record)

    def _apply(self, fault: Fault, cmdlet: str) -> _Answer | None:
        if fault.delay:
            time.sleep(fault.delay)
        if fault.value is not None:
            return self.server.sandbox.envelope(cmdlet, fault.value)
        if fault.status is None:
            return None
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        body = fault.body if fault.body is not None else _default_fault_body(fault.status)
        return _Answer(fault.status, body, fault.content_type, headers)

    def _finish(
        self,
        answer: _Answer,
        endpoint: str,
        tenant: str | None,
        fault: Fault | None = None,
        **record: Any,
    ) -> None:
        self.server.sandbox._record(
            RecordedRequest(
                at=self._arrived,
                method=self.command,
                path=self.path,
                endpoint=endpoint,
                tenant=tenant,
                cmdlet=record.get("cmdlet"),
                parameters=record.get("parameters") or {},
                status=answer.status,
                had_auth=record.get("had_auth", False),
                client_id=record.get("client_id"),
                prefer=record.get("prefer"),
                body=record.get("body", b""),
            )
        )
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.send_header("request-id", str(uuid.uuid4()))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self._write(answer.body, fault.trickle if fault else 0.0)
        except OSError:
            self.close_connection = True  # the client gave up (timeout tests)

    def _write(self, body: bytes, seconds: float) -> None:
        if seconds <= 0:
            self.wfile.write(body)
            return
        pieces = max(1, round(seconds * 10))
        size = max(1, -(-len(body) // pieces))  # ceiling: `pieces` writes cover the body
        for start in range(0, len(body), size):
            if start:
                time.sleep(seconds / pieces)
            self.wfile.write(body[start : start + size])


def _max_page_size(prefer: str | None) -> int | None:
    """N of `Prefer: odata.maxpagesize=N`; None when absent or unreadable."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.partition("=")
        if name.strip().lower() == "odata.maxpagesize":
            try:
                size = int(value.strip().strip('"'))
            except ValueError:
                return None
            return size if size > 0 else None
    return None


def _with_next_link(answer: _Answer, link: str) -> _Answer:
    payload = json.loads(answer.body)
    payload["@odata.nextLink"] = link
    return replace(answer, body=json.dumps(payload).encode())


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    # MSAL sends a client secret with HTTP Basic, form-encoded inside (RFC 6749 §2.3.1).
    if not header or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header.removeprefix("Basic ").strip()).decode()
    except ValueError:
        return None
    user, sep, password = decoded.partition(":")
    return (unquote_plus(user), unquote_plus(password)) if sep else None
