"""TOML configuration -> validated, frozen Config (DESIGN.md §4).

`load_config` validates the whole file in one pass and raises `ConfigError` listing every
problem, each prefixed by its key path (`tenant[0].domains[2]`, `providers.acme.mx[1]`;
array indexes are 0-based). Two layers find problems:

- pydantic models (strict, unknown keys forbidden) check each key's type and value. They are
  built from the dataclasses of settings.py, where each key is defined once (its type,
  default, bounds and description), and they give those dataclasses;
- `_relation_problems` checks rules that span keys (credentials, duplicates, references).
  It reads the raw TOML tolerantly, so it still runs when some values are invalid and the
  operator sees every problem at once rather than one layer at a time.

Error messages never contain the value of a key, except for domain names, MX patterns and
resolvers, which are public and which the operator needs to see to find the typo. Secrets are
never written in the file; only references to them (a path or an environment variable name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
)

from .names import BadName, normalise_name, normalise_pattern
from .providers import BUILTIN_PROVIDERS
from .settings import (
    CLOUDS,
    KEY,
    CertificateRef,
    Cloud,
    CloudEndpoints,
    Config,
    ConfigFile,
    CredentialKeys,
    CredentialRef,
    ExchangeConfig,
    ExchangeKeys,
    Form,
    Key,
    PostgresUri,
    Provider,
    ProviderKeys,
    ResolverSpec,
    SecretEnvRef,
    SecretFileRef,
    TenantConfig,
    TenantKeys,
)


class ConfigError(Exception):
    """Every problem found in a config file, each starting with its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


DEFAULT_CONFIG_PATH = Path("/etc/mxwatch/mxwatch.toml")

DURATION_FORM = 'a duration such as "90s", "5m", "1h", "2d" or "1h30m"'
_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_GUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_REF_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# Tenant names appear in log lines and on the command line (`mxwatch history NAME`).
_TENANT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_PROVIDER_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_CREDENTIAL_KEYS = ("certificate", "client_secret_file", "client_secret_env")
# Key names that would hold a secret written inline; such a key is always refused.
_INLINE_SECRET_WORDS = ("secret", "password", "passphrase", "token", "private_key", "api_key")


# ---------------------------------------------------------------------------------------------
# Public helpers


def default_config_path(environ: Mapping[str, str]) -> Path:
    """The config file when --config is not given: $MXWATCH_CONFIG, else the system path."""
    given = environ.get("MXWATCH_CONFIG", "")
    return Path(given) if given else DEFAULT_CONFIG_PATH


def parse_duration(text: str) -> timedelta:
    """Parse "90s", "5m", "1h", "2d", "0s" or a combination in d-h-m-s order ("1h30m").

    Raises ValueError (without echoing the text) for anything else, negatives included.
    """
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"must be {DURATION_FORM}")
    days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    try:
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ValueError("is too large") from None


def duration_text(duration: timedelta) -> str:
    """A duration as the config file writes it: timedelta(hours=1, minutes=30) -> "1h30m"."""
    rest = int(duration.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and convert a config file; raise ConfigError listing every problem.

    `environ` (default: os.environ) resolves "auto" state paths and $VARIABLE references in
    path values, so tests and `check-config` can pass their own environment.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    raw = _read_toml(path)
    context = {"environ": env, "base": path.absolute().parent}
    problems: list[str] = []
    document: ConfigFile | None = None
    try:
        document = _FILE.validate_python(raw, context=context)
    except ValidationError as exc:
        problems.extend(_describe(error) for error in exc.errors(include_input=False))
    problems.extend(_relation_problems(raw))
    if problems or document is None:
        raise ConfigError(sorted(problems, key=_document_order))
    return _build(path, document)


# ---------------------------------------------------------------------------------------------
# Reading


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line L, column C)"; tomllib never quotes the value.
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None


# ---------------------------------------------------------------------------------------------
# Value validators used by the models. They raise ValueError with a message that completes
# "<key path>: ...".


def _duration(value: object) -> timedelta:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"must be a string with a unit, {DURATION_FORM}; not a bare number")
    if not isinstance(value, str):
        raise ValueError(f"must be {DURATION_FORM}")
    return parse_duration(value)


def _positive_duration(value: object) -> timedelta:
    duration = _duration(value)
    if duration <= timedelta(0):
        raise ValueError(f"must be greater than zero, {DURATION_FORM}")
    return duration


def _at_most(limit: timedelta) -> AfterValidator:
    """An upper bound for a duration key (settle's "auto", None, passes)."""

    def check(value: timedelta | None) -> timedelta | None:
        if value is not None and value > limit:
            raise ValueError(f"must be at most {duration_text(limit)}")
        return value

    return AfterValidator(check)


def _settle(value: object) -> timedelta | None:
    if value == "auto":
        return None
    try:
        return _duration(value)
    except ValueError:
        raise ValueError(f'must be "auto" or {DURATION_FORM}') from None


def _guid(value: str) -> str:
    if not _GUID_RE.fullmatch(value):
        raise ValueError("not a GUID (expected 8-4-4-4-12 hexadecimal digits)")
    return value.lower()


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _connector(value: str) -> str:
    # Exchange names hold no control characters; one here would reach logs and terminals.
    if any(not char.isprintable() for char in value):
        raise ValueError("must not contain control characters (a connector's Name or GUID)")
    return _non_empty(value)


def _tenant_name(value: str) -> str:
    if not _TENANT_NAME_RE.fullmatch(value):
        raise ValueError(
            "must be 1-64 letters, digits, '.', '_', '-' or '@', starting with a letter or digit"
        )
    return value


def _env_name(value: str) -> str:
    # Not echoed: an operator may have pasted the secret itself here by mistake.
    if not _ENV_NAME_RE.fullmatch(value):
        raise ValueError("must be an environment variable name such as MXWATCH_CLIENT_SECRET")
    return value


def _https_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("must be an https URL such as https://login.microsoftonline.com")
    return value.rstrip("/")


def _domain(value: str) -> str:
    try:
        name = normalise_name(value)
    except BadName as exc:
        raise ValueError(str(exc)) from None
    labels = name.split(".")
    if len(labels) < 2:
        raise ValueError(f"{value!r} is not a valid mail domain (such as example.com)")
    return name


def _pattern(value: str) -> str:
    try:
        pattern = normalise_pattern(value)
    except BadName as exc:
        raise ValueError(str(exc)) from None
    # "*.com" would call almost any MX "filtered" and enable connectors too early.
    if pattern.startswith("*.") and "." not in pattern[2:]:
        raise ValueError(f"{value!r} is too broad: a wildcard needs at least two labels after it")
    return pattern


def _cidr(value: object) -> ipaddress.IPv4Network:
    if not isinstance(value, str):
        raise ValueError('must be an IPv4 range as a string, such as "192.0.2.0/24"')
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 range without host bits: {exc}") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"{value!r}: Exchange connectors accept IPv4 sender ranges only")
    return network


def _resolver(value: object) -> ResolverSpec:
    form = '"system", "IP", "IP:PORT" or "[IPv6]:PORT"'
    if not isinstance(value, str):
        raise ValueError(f"must be a string: {form}")
    if value == "system":
        return ResolverSpec("system", None)
    host, port = _split_host_port(value)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not {form}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r}: the port must be 1-65535")
    return ResolverSpec(value, str(address), port)


def resolver_spec(text: str) -> ResolverSpec:
    """A resolver as `dns.resolvers` takes it (for `mxwatch check --resolver`); ValueError."""
    return _resolver(text)


def mail_domain(text: str) -> str:
    """A mail domain as `tenant.domains` takes it, normalised (for `mxwatch check`); ValueError."""
    return _domain(text)


def _split_host_port(value: str) -> tuple[str, int]:
    """Split "IP", "IPv4:PORT", "[IPv6]:PORT" or a bare IPv6 address; port 53 by default."""
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return value, 53  # left for ip_address() to reject
        return host, _port(value, rest[1:]) if rest else 53
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, _port(value, port)
    return value, 53


def _port(value: str, text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{value!r}: the port must be a number 1-65535")
    return int(text)


def _listen(value: object) -> tuple[str, int]:
    form = '"HOST:PORT" such as "127.0.0.1:9464" or "[::1]:9464"'
    if not isinstance(value, str) or value.count(":") == 0:
        raise ValueError(f"must be {form}")
    host, port = _split_host_port(value)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not {form}; the host must be an IP address") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r}: the port must be 1-65535")
    return str(address), port


def _webhook(value: str) -> str:
    # The URL is not echoed: Slack and Teams webhook URLs carry their secret in the path.
    parts = urlsplit(value)
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return value  # a local relay or a test receiver; nothing leaves the machine
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("must be an https URL (http is allowed only to 127.0.0.1 or ::1)")
    return value


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _path(value: object, info: ValidationInfo) -> Path:
    """A file path; $NAME / ${NAME} come from the environment, relative means config dir.

    The value is not echoed: it may be a secret pasted into the wrong key.
    """
    if not isinstance(value, str):
        raise ValueError("must be a path as a string")
    if not value.strip():
        raise ValueError("must not be empty")
    _, base = _context(info)
    return base / _expand(value, info)


def _expand(value: str, info: ValidationInfo) -> str:
    """$NAME and ${NAME} from the environment; an unset one is an error."""
    env, _ = _context(info)

    def expand(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if not env.get(name):
            raise ValueError(_unset_variable(name, info.field_name))
        return env[name]

    return _ENV_REF_RE.sub(expand, value)


def _unset_variable(name: str, key: str | None) -> str:
    if key in _CREDENTIAL_KEYS:
        # The name is part of the value: "pa$Sw0rd" would show "$Sw0rd".
        return (
            "refers to an environment variable that is not set (not named: the name is part "
            "of the value, which may be a secret)"
        )
    return f"refers to ${name}, which is not set in the environment"


def _state(value: object, info: ValidationInfo) -> Path | PostgresUri:
    if not isinstance(value, str):
        raise ValueError('must be "auto", a path or a postgresql:// URI, as a string')
    if value.startswith(("postgresql://", "postgres://")):
        # $NAME too, as in paths: passfile=$CREDENTIALS_DIRECTORY/pgpass under systemd.
        return _postgres_uri(_expand(value, info))
    if value != "auto":
        return _path(value, info)
    env, _ = _context(info)
    return _auto_state_path(env)


def state_location(text: str) -> Path | PostgresUri:
    """A state named on the command line (`mxwatch state copy`): an SQLite file path, or a
    PostgreSQL URI under the same rules as daemon.state. ValueError says what is wrong."""
    if text.startswith(("postgresql://", "postgres://")):
        return _postgres_uri(text)
    if not text.strip():
        raise ValueError("must be an SQLite file path or a postgresql:// URI")
    return Path(text)


def _postgres_uri(value: str) -> PostgresUri:
    # Not echoed: it is refused precisely when it may hold a password.
    parts = urlsplit(value)
    if parts.password is not None or "password=" in parts.query.lower():
        raise ValueError(
            "a PostgreSQL URI must not hold a password: put it in libpq's passfile (PGPASSFILE, "
            "or passfile=... in the URI, e.g. passfile=$CREDENTIALS_DIRECTORY/pgpass) or in "
            "PGPASSWORD"
        )
    if not parts.path.strip("/"):
        raise ValueError("a PostgreSQL URI must name its database: postgresql://user@host/db")
    return PostgresUri(value)


def _auto_state_path(env: Mapping[str, str]) -> Path:
    """systemd's StateDirectory=, else the XDG base directory spec, else ~/.local/state."""
    state_directory = env.get("STATE_DIRECTORY", "")
    if state_directory:
        # Several StateDirectory= entries arrive colon-separated; the first one is ours.
        return Path(state_directory.split(":")[0]) / "state.db"
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        return Path(xdg) / "mxwatch" / "state.db"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "state" / "mxwatch" / "state.db"


def _context(info: ValidationInfo) -> tuple[Mapping[str, str], Path]:
    # load_config always passes both; a missing context is a programming error.
    context: Mapping[str, Any] = info.context or {}
    return context["environ"], context["base"]


# ---------------------------------------------------------------------------------------------
# The file's shape, built from the dataclasses of settings.py: a pydantic model per table with a
# field per key, whose type and default come from the dataclass field. Every table forbids
# unknown keys; values arrive converted, and every table arrives as its dataclass.


class _Table(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# The rule of each form a string can take (settings.Form).
_FORMS: dict[Form, Any] = {
    "guid": Annotated[str, AfterValidator(_guid)],
    "tenant name": Annotated[str, AfterValidator(_tenant_name)],
    "connector": Annotated[str, AfterValidator(_connector)],
    "environment variable": Annotated[str, AfterValidator(_env_name)],
    "https URL": Annotated[str, AfterValidator(_https_url)],
    "webhook": Annotated[str, AfterValidator(_webhook)],
    "domain": Annotated[str, AfterValidator(_domain)],
    "MX pattern": Annotated[str, AfterValidator(_pattern)],
    "listen address": Annotated[tuple[str, int], PlainValidator(_listen)],
    "state": Annotated[Path | PostgresUri, PlainValidator(_state)],
}

# The rule of each type whose rule needs nothing from the key.
_TYPES: dict[Any, Any] = {
    bool: bool,
    str: str,
    Path: Annotated[Path, PlainValidator(_path)],
    ResolverSpec: Annotated[ResolverSpec, PlainValidator(_resolver)],
    ipaddress.IPv4Network: Annotated[ipaddress.IPv4Network, PlainValidator(_cidr)],
}

# What _model_field reads of a field without a Key: ConfigFile's, which are tables, not keys.
_TABLE = Key("a table")


def _table_type(keys: type[Any]) -> Any:
    """The type of a table whose keys are the fields of the dataclass `keys`; gives a `keys`."""
    hints = get_type_hints(keys)
    definitions: dict[str, Any] = {
        field.name: _model_field(field, hints[field.name]) for field in dataclasses.fields(keys)
    }
    model = create_model(keys.__name__, __base__=_Table, **definitions)
    return Annotated[model, AfterValidator(lambda table: keys(**dict(table)))]


def _model_field(field: dataclasses.Field[Any], hint: Any) -> tuple[Any, Any]:
    """A key's pydantic type and default, from its dataclass field."""
    key = field.metadata.get(KEY, _TABLE)
    value_type = _file_type(hint, key)
    if dataclasses.is_dataclass(hint):
        # A table left out is validated as an empty one, so that its "auto" defaults see the
        # validation context (the environment).
        return value_type, Field(default_factory=dict, validate_default=True)
    if key.auto:
        return value_type, Field(default="auto", validate_default=True)
    if field.default is not dataclasses.MISSING:
        return value_type, field.default
    if field.default_factory is not dataclasses.MISSING:
        return value_type, Field(default_factory=field.default_factory)
    return value_type, ...


def _file_type(hint: Any, key: Key) -> Any:
    """The type of a key as the file writes it: `X | None` may be left out (TOML has no null),
    `tuple[X, ...]` is an array and `dict[str, X]` a table of tables."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType) and type(None) in args:
        (value,) = (arg for arg in args if arg is not type(None))
        return _file_type(value, key) | None
    if origin is tuple and args[1:] == (...,):
        return _array(_value_type(args[0], key), not_empty=key.not_empty)
    if origin is dict:
        return _named(_value_type(args[1], key))
    return _value_type(hint, key)


def _array(item: Any, *, not_empty: bool) -> Any:
    """An array, given as a tuple: the dataclasses are frozen.

    (A function of its own, like _named: mypy takes a parameter as a type argument, not a
    local variable.)
    """
    items = Annotated[list[item], Field(min_length=1)] if not_empty else list[item]
    return Annotated[items, AfterValidator(tuple)]


def _named(table: Any) -> Any:
    """Tables by name, as [providers.NAME]."""
    return dict[str, table]


def _value_type(hint: Any, key: Key) -> Any:
    """The type of one value of a key: the key itself, or one item of an array."""
    if key.form is not None:
        return _FORMS[key.form]
    if hint is timedelta:
        return _duration_type(key)
    if hint is int:
        return Annotated[int, Field(ge=key.at_least, le=key.at_most)]
    if hint in _TYPES:
        return _TYPES[hint]
    if get_origin(hint) is Literal:
        return hint
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        # Strict mode takes members only; lax mode takes their values, as the file writes them.
        return Annotated[hint, Field(strict=False)]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _table_type(hint)
    raise TypeError(f"no rule for a key of type {hint}")


def _duration_type(key: Key) -> Any:
    """A duration: "auto" too for settle, greater than zero if the key says so, and bounded."""
    rule = _settle if key.auto else _positive_duration if key.positive else _duration
    if isinstance(key.at_most, timedelta):
        return Annotated[timedelta, PlainValidator(rule), _at_most(key.at_most)]
    return Annotated[timedelta, PlainValidator(rule)]


_FILE: TypeAdapter[ConfigFile] = TypeAdapter(_table_type(ConfigFile))


# ---------------------------------------------------------------------------------------------
# Turning pydantic errors into "<key path>: <message>"

_PLAIN_MESSAGES = {
    "missing": "required key is missing",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "list_type": "must be an array",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "dict_type": "must be a table",
    "too_short": "must not be empty",
}


_SECTION_ORDER = ("daemon", "dns", "policy", "exchange", "metrics", "notify", "providers", "tenant")


def _document_order(problem: str) -> tuple[int, int]:
    """Group problems by section, and by [[tenant]]; the sort is stable within a group."""
    match = re.match(r"([A-Za-z_]*)(?:\[(\d+)\])?", problem)
    section, index = match.groups() if match else ("", None)
    rank = _SECTION_ORDER.index(section) if section in _SECTION_ORDER else -1
    return rank, int(index) if index else -1


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(part for part in error["loc"] if part != "[key]")
    return f"{key_path(loc)}: {_message(error, loc)}"


def _message(error: Mapping[str, Any], loc: tuple[str | int, ...]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_key_message(loc)
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in ("literal_error", "enum"):
        return f"must be {ctx.get('expected')}"
    if kind in ("greater_than_equal", "greater_than"):
        return f"must be at least {ctx.get('ge', ctx.get('gt'))}"
    if kind == "missing" and loc and loc[-1] == "tenant_id":
        return "required key is missing (the Microsoft 365 tenant's GUID)"
    return _PLAIN_MESSAGES.get(kind, str(error["msg"]))


def _unknown_key_message(loc: tuple[str | int, ...]) -> str:
    key = str(loc[-1])
    if any(word in key.lower() for word in _INLINE_SECRET_WORDS):
        return (
            "unknown key; secrets are never written in the config: use client_secret_file "
            "(a path to a file holding the secret) or client_secret_env (the name of an "
            "environment variable), or better, certificate"
        )
    suggestions = difflib.get_close_matches(key, _known_keys(loc[:-1]), n=1)
    return f"unknown key (did you mean {suggestions[0]!r}?)" if suggestions else "unknown key"


def _known_keys(parent: tuple[str | int, ...]) -> list[str]:
    tables = get_type_hints(ConfigFile)
    table = tables.get(str(parent[0]), ConfigFile) if parent else ConfigFile
    # The dataclass of the table's keys: ProviderKeys from dict[str, ProviderKeys], and so on.
    keys = next(arg for arg in (table, *get_args(table)) if dataclasses.is_dataclass(arg))
    return [field.name for field in dataclasses.fields(keys)]


def key_path(loc: tuple[str | int, ...]) -> str:
    """("tenant", 3, "domains", 0) -> "tenant[3].domains[0]"; odd keys are quoted as in TOML."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _BARE_KEY_RE.fullmatch(part) else f'"{part}"'
            text += f".{name}" if text else name
    return text


# ---------------------------------------------------------------------------------------------
# Rules that span keys, checked on the raw TOML so that they run even when values are invalid


def _relation_problems(raw: Mapping[str, Any]) -> list[str]:
    problems = _exchange_problems(_table(raw, "exchange"))
    problems += _provider_problems(_table(raw, "providers"))
    tenants = list(_tenants(raw))
    if raw.get("tenant", []) == []:
        problems.append("tenant: at least one [[tenant]] is required")
    problems += _tenant_credential_problems(tenants, _table(raw, "exchange"))
    known = set(BUILTIN_PROVIDERS) | set(_table(raw, "providers"))
    for index, tenant in tenants:
        provider = tenant.get("provider", TenantKeys.provider)
        if isinstance(provider, str) and provider not in known:
            problems.append(
                f"tenant[{index}].provider: no provider named {provider!r} "
                f"(known: {', '.join(sorted(known))})"
            )
    problems += _unique_problems(tenants, "name", "name", str.casefold)
    problems += _unique_problems(tenants, "tenant_id", "tenant", str.lower)
    problems += _domain_problems(tenants)
    return problems


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def _tenants(raw: Mapping[str, Any]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    value = raw.get("tenant")
    if isinstance(value, list):
        yield from ((i, item) for i, item in enumerate(value) if isinstance(item, dict))


def _exchange_problems(exchange: Mapping[str, Any]) -> list[str]:
    problems = []
    cloud = exchange.get("cloud", ExchangeKeys.cloud.value)
    for key in ("login_url", "admin_url"):
        if cloud == "custom" and key not in exchange:
            problems.append(f'exchange.{key}: required with cloud = "custom"')
        elif cloud != "custom" and key in exchange:
            problems.append(
                f'exchange.{key}: only allowed with cloud = "custom"; cloud = {cloud!r} '
                "uses its built-in endpoints"
            )
    given = [key for key in _CREDENTIAL_KEYS if key in exchange]
    if len(given) > 1:
        problems.append(f"exchange: set only one of {', '.join(given)}")
    return problems


def _provider_problems(providers: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, table in providers.items():
        where = key_path(("providers", name))
        if not _PROVIDER_NAME_RE.fullmatch(name):
            problems.append(f"{where}: a provider name must be lower-case letters, digits, - or _")
        if name not in BUILTIN_PROVIDERS and isinstance(table, dict) and "mx" not in table:
            problems.append(f"{where}.mx: required for a provider that is not built in")
    return problems


def _tenant_credential_problems(
    tenants: list[tuple[int, Mapping[str, Any]]], exchange: Mapping[str, Any]
) -> list[str]:
    problems = []
    for index, tenant in tenants:
        own = [key for key in _CREDENTIAL_KEYS if key in tenant]
        if len(own) > 1:
            problems.append(f"tenant[{index}]: set only one of {', '.join(own)}")
        if "client_id" not in tenant and "client_id" not in exchange:
            problems.append(f"tenant[{index}]: no client_id; set client_id here or in [exchange]")
        if not own and not any(key in exchange for key in _CREDENTIAL_KEYS):
            problems.append(
                f"tenant[{index}]: no credential; set certificate, client_secret_file or "
                "client_secret_env here or in [exchange]"
            )
    return problems


def _unique_problems(
    tenants: list[tuple[int, Mapping[str, Any]]],
    key: str,
    what: str,
    fold: Callable[[str], str],
) -> list[str]:
    seen: dict[str, int] = {}
    problems = []
    for index, tenant in tenants:
        value = tenant.get(key)
        if not isinstance(value, str):
            continue
        first = seen.setdefault(fold(value), index)
        if first != index:
            problems.append(f"tenant[{index}].{key}: same {what} as tenant[{first}]{_why(key)}")
    return problems


def _why(key: str) -> str:
    if key == "tenant_id":
        # One connector with sender domains "*" covers every domain of a Microsoft 365 tenant.
        return "; list all of a tenant's domains in one [[tenant]], as its connector covers all"
    return ""


def _domain_problems(tenants: list[tuple[int, Mapping[str, Any]]]) -> list[str]:
    seen: dict[str, tuple[str, str]] = {}  # normalised -> (key path, spelling) of first mention
    problems = []
    for index, tenant in tenants:
        domains = tenant.get("domains")
        for position, value in enumerate(domains if isinstance(domains, list) else []):
            try:
                name = _domain(value) if isinstance(value, str) else None
            except ValueError:
                continue  # reported by the model
            if name is None:
                continue
            where = f"tenant[{index}].domains[{position}]"
            if name in _ignored(tenant):
                problems.append(f"{where}: {name} is also in tenant[{index}].ignore_domains")
            first, spelling = seen.setdefault(name, (where, value))
            if first != where:
                problems.append(
                    f"{where}: {value!r} is the same domain as {first} ({spelling!r}), "
                    f"both {name}{_across(first, index)}"
                )
    return problems


def _ignored(tenant: Mapping[str, Any]) -> set[str]:
    names = tenant.get("ignore_domains")
    ignored = set()
    for value in names if isinstance(names, list) else []:
        if isinstance(value, str):  # anything else is reported by the model
            with contextlib.suppress(ValueError):
                ignored.add(_domain(value))
    return ignored


def _across(first: str, index: int) -> str:
    if first.startswith(f"tenant[{index}]."):
        return ""
    return "; a domain belongs to one tenant, whose connector covers it"


# ---------------------------------------------------------------------------------------------
# Conversion of a valid document into the frozen dataclasses


def _build(path: Path, document: ConfigFile) -> Config:
    providers = _build_providers(document.providers)
    exchange = _build_exchange(document.exchange)
    tenants = tuple(
        _build_tenant(index, tenant, exchange, providers)
        for index, tenant in enumerate(document.tenant)
    )
    return Config(
        path=path,
        daemon=document.daemon,
        dns=document.dns,
        policy=document.policy,
        exchange=exchange,
        providers=providers,
        tenants=tenants,
        metrics=document.metrics,
        notify=document.notify,
    )


def _build_providers(tables: Mapping[str, ProviderKeys]) -> dict[str, Provider]:
    providers = dict(BUILTIN_PROVIDERS)
    for name, table in tables.items():
        builtin = BUILTIN_PROVIDERS.get(name)
        source = "config" if builtin is None else f"{builtin.source}, overridden in config"
        mx = tuple(dict.fromkeys(table.mx)) if table.mx is not None else None
        sender_ips = (
            tuple(dict.fromkeys(table.sender_ips)) if table.sender_ips is not None else None
        )
        providers[name] = Provider(
            name=name,
            mx=mx if mx is not None else builtin.mx if builtin else (),
            sender_ips=sender_ips
            if sender_ips is not None
            else builtin.sender_ips
            if builtin
            else (),
            source=source,
        )
    return providers


def _credential(table: CredentialKeys, where: str) -> CredentialRef | None:
    if table.certificate is not None:
        return CertificateRef(table.certificate, key=f"{where}.certificate")
    if table.client_secret_file is not None:
        return SecretFileRef(table.client_secret_file, key=f"{where}.client_secret_file")
    if table.client_secret_env is not None:
        return SecretEnvRef(table.client_secret_env, key=f"{where}.client_secret_env")
    return None


def _build_exchange(table: ExchangeKeys) -> ExchangeConfig:
    cloud = table.cloud
    if cloud is Cloud.CUSTOM:
        assert table.login_url is not None and table.admin_url is not None  # checked above
        endpoints = CloudEndpoints(table.login_url, table.admin_url)
    else:
        endpoints = CLOUDS[cloud]
    return ExchangeConfig(
        cloud=cloud,
        login_url=endpoints.login_url,
        admin_url=endpoints.admin_url,
        ca_bundle=table.ca_bundle,
        client_id=table.client_id,
        credential=_credential(table, "exchange"),
        timeout=table.timeout,
    )


def _build_tenant(
    index: int, table: TenantKeys, exchange: ExchangeConfig, providers: Mapping[str, Provider]
) -> TenantConfig:
    client_id = table.client_id or exchange.client_id
    credential = _credential(table, f"tenant[{index}]") or exchange.credential
    assert client_id is not None and credential is not None  # checked in _relation_problems
    return TenantConfig(
        name=table.name,
        tenant_id=table.tenant_id,
        connector=table.connector,
        provider=providers[table.provider],
        domains=table.domains or (),
        client_id=client_id,
        credential=credential,
        ignore_domains=table.ignore_domains,
    )
