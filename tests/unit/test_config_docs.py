"""The documentation of the config file agrees with the keys defined in mxwatch/settings.py.

The README's table of keys is generated from those definitions: after changing a key, rewrite
it with `python -m tests.unit.test_config_docs`. The example file is prose for operators,
written by hand and checked here: it shows every key and no other, shows each key that has a
default with that default, and states each duration key's bounds.
"""

from __future__ import annotations

import enum
import json
import re
import tomllib
from dataclasses import MISSING, dataclass, fields, is_dataclass
from datetime import timedelta
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from mxwatch.config import duration_text
from mxwatch.settings import KEY, ConfigFile, Key, ResolverSpec

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
EXAMPLE = REPO / "config" / "mxwatch.example.toml"
TABLE_HEADER = "| key | default | meaning |"


@dataclass(frozen=True)
class Documented:
    table: str  # as the file names it: "daemon", "providers", "tenant"
    name: str
    key: Key
    default: object  # as TOML data; None when the key has no default value

    def __str__(self) -> str:
        return self.path

    @property
    def path(self) -> str:
        """The key as the README names it: "daemon.interval", "tenant[].name"."""
        table = {"providers": "providers.NAME", "tenant": "tenant[]"}.get(self.table, self.table)
        return f"{table}.{self.name}"


def documented_keys() -> list[Documented]:
    """Every key of the file, table by table; a table's own keys before the inherited ones."""
    keys = []
    for table, hint in get_type_hints(ConfigFile).items():
        (dataclass_,) = (arg for arg in (hint, *get_args(hint)) if is_dataclass(arg))
        own = dataclass_.__annotations__
        for field in sorted(fields(dataclass_), key=lambda field: field.name not in own):
            key = field.metadata[KEY]
            default = "auto" if key.auto else None if field.default is MISSING else field.default
            keys.append(Documented(table, field.name, key, as_toml(default)))
    return keys


def as_toml(value: object) -> object:
    """A default as the file writes it."""
    if isinstance(value, timedelta):
        return duration_text(value)
    if isinstance(value, ResolverSpec):
        return value.label
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [as_toml(item) for item in value]
    return value


def toml_text(value: object) -> str:
    # JSON and TOML write strings, numbers, booleans and arrays of them alike.
    return json.dumps(value, ensure_ascii=False)


# --- the README's table --------------------------------------------------------------------


def reference_table() -> str:
    rows = [TABLE_HEADER, "|---|---|---|"]
    for documented in documented_keys():
        key = documented.key
        default = key.absent if documented.default is None else f"`{toml_text(documented.default)}`"
        rows.append(f"| `{documented.path}` | {default} | {key.doc}{bounds(key)} |")
    return "\n".join(rows) + "\n"


def bounds(key: Key) -> str:
    said = ["greater than zero"] if key.positive else []
    if key.at_least is not None:
        said.append(f"at least {key.at_least}")
    if isinstance(key.at_most, timedelta):
        said.append(f'at most `"{duration_text(key.at_most)}"`')
    elif key.at_most is not None:
        said.append(f"at most {key.at_most}")
    text = ", ".join(said)
    return f". {text[:1].upper()}{text[1:]}" if said else ""


def readme_table(text: str) -> tuple[int, int]:
    """Where the table of keys stands in the README: its first and past-the-end offsets."""
    start = text.index(TABLE_HEADER + "\n")
    end = text.index("\n\n", start) + 1
    return start, end


def test_every_key_has_a_description() -> None:
    keys = documented_keys()  # a field without a Key fails here
    # No final full stop: the table adds the bounds as a sentence of their own.
    assert all(key.key.doc and not key.key.doc.endswith(".") for key in keys)


def test_the_readme_table_is_generated_from_the_keys() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = readme_table(text)
    assert text[start:end] == reference_table(), (
        "the README's table of keys is out of date: python -m tests.unit.test_config_docs"
    )


# --- the example file ----------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """A key as the example file shows it, set or commented out."""

    table: str
    name: str
    value: object
    comment: str  # the comment lines right above it


_TABLE_LINE = re.compile(r"(?:# )?\[\[?([a-z_]+)[^\]]*\]\]?")
_KEY_LINE = re.compile(r"(?:# )?([a-z_]+) = (.+)")


def shown_keys() -> list[Shown]:
    shown, table, comment = [], "", []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if match := _TABLE_LINE.fullmatch(line):
            table, comment = match[1], []
        elif match := _KEY_LINE.fullmatch(line):
            value = tomllib.loads(f"value = {match[2]}")["value"]
            shown.append(Shown(table, match[1], value, " ".join(comment)))
            comment = []
        elif line.startswith("#"):
            comment.append(line.lstrip("# "))
        else:
            comment = []
    return shown


def test_the_example_shows_every_key_and_no_other() -> None:
    documented = {(key.table, key.name) for key in documented_keys()}
    shown = {(key.table, key.name) for key in shown_keys()}
    assert shown - documented == set(), "shown in the example, but not a key"
    assert documented - shown == set(), "a key the example does not show"


def shown_as(key: Documented) -> list[Shown]:
    return [shown for shown in shown_keys() if (shown.table, shown.name) == (key.table, key.name)]


@pytest.mark.parametrize(
    "key", [key for key in documented_keys() if key.default is not None], ids=str
)
def test_the_example_shows_each_default(key: Documented) -> None:
    values = [shown.value for shown in shown_as(key)]
    assert values == [key.default] * len(values), key.path


@pytest.mark.parametrize(
    "key", [key for key in documented_keys() if isinstance(key.key.at_most, timedelta)], ids=str
)
def test_the_example_states_each_duration_bound(key: Documented) -> None:
    assert isinstance(key.key.at_most, timedelta)
    (shown,) = shown_as(key)
    comment = shown.comment.lower()
    assert f'at most "{duration_text(key.key.at_most)}"' in comment, key.path
    assert key.key.positive == ("greater than zero" in comment), key.path


def _rewrite_readme() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = readme_table(text)
    README.write_text(text[:start] + reference_table() + text[end:], encoding="utf-8")


if __name__ == "__main__":
    _rewrite_readme()
