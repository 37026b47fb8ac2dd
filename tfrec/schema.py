"""How a setting is declared, checked and read: the machinery of the settings schema.

`tfrec.config` declares every setting with `setting(default, help, ...)` on a
`Settings` dataclass; this module turns those declarations into checks (a
`Literal` field type lists the allowed values, a `Rule` checks a range),
errors naming the full dotted key, and the loader from plain data
(`from_dict`). It imports no TensorFlow.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import difflib
import math
import types
import typing
from typing import Any, Callable, Literal, Mapping

from tfrec.errors import InputError


# Declaring a setting -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Rule:
    """A range check: `test(value)` is true for an allowed value; `text` says which are."""

    text: str
    test: Callable[[Any], bool]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a finite float (not a bool, nan or inf)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def integer_at_least(low: int) -> Rule:
    return Rule(f"an integer >= {low}", lambda v: is_int(v) and v >= low)


POSITIVE = Rule("a positive integer", integer_at_least(1).test)


def integer_between(low: int, high: int) -> Rule:
    return Rule(f"an integer from {low} to {high}", lambda v: is_int(v) and low <= v <= high)


# A seed: what every random generator the settings feed takes (numpy's, TensorFlow's).
SEED = integer_between(0, 2**31 - 1)


def above(low: float) -> Rule:
    return Rule(f"> {low:g}", lambda v: is_number(v) and v > low)


def at_least(low: float) -> Rule:
    return Rule(f">= {low:g}", lambda v: is_number(v) and v >= low)


def within(low: float, high: float, brackets: str = "[]") -> Rule:
    """`brackets` "[)" and the like: which ends are allowed."""
    def test(v):
        return (is_number(v) and (v >= low if brackets[0] == "[" else v > low)
                and (v <= high if brackets[1] == "]" else v < high))
    return Rule(f"in {brackets[0]}{low:g}, {high:g}{brackets[1]}", test)


# A share or a probability: 0 allowed, 1 not (a dropout rate, a held-out share).
SHARE = within(0, 1, "[)")
# A share that leaves something on both sides (neither 0 nor 1).
INNER_SHARE = within(0, 1, "()")


def each(rule: Rule, text: str, *, non_empty: bool = False) -> Rule:
    """Every element of a list setting passes `rule`; `text` names them ("positive integers")."""
    return Rule(("a non-empty list of " if non_empty else "a list of ") + text,
                lambda v: (bool(v) or not non_empty) and all(rule.test(x) for x in v))


def setting(default: Any, help: str, *, check: Rule | None = None,
            flag: str | None = None, required: bool = False, group: str | None = None,
            checked_by: str | None = None, path: bool = False) -> Any:
    """Declares one setting: a dataclass field whose metadata the schema is generated from.

    Args:
      default: the default value (the one place it is written).
      help: what the setting does, for the README, ``--help`` and errors. It
        never restates the default: the reference and ``--help`` show it.
      check: the range of allowed values, beyond the field's type. A
        `Literal` field type is its own list of allowed values.
      flag: the command-line flag that sets it, if any (see `tfrec.cli`).
      required: the command needs it (the flag is then required).
      group: flags of one group are alternatives: exactly one is given.
      checked_by: for a `str` setting whose allowed values are registered
        elsewhere: where they are checked (no check here).
      path: a file or folder path: relative in a run config file, it is read
        relative to that file's folder (see `tfrec.run.load_run_config`).
    """
    metadata = {"help": help, "check": check, "flag": flag, "required": required,
                "group": group, "checked_by": checked_by, "path": path}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type) -> Any:
    """A nested settings section (e.g. ``model.text``), defaulting to its own defaults."""
    return dataclasses.field(default_factory=cls, metadata={"section": True})


# Each settings class's key prefix ("model.text." for `TextConfig`), registered by
# `tfrec.config` once every section is declared.
_PREFIXES: dict[type, str] = {}


def register_sections(prefixes: dict[type, str]) -> None:
    """Records the key prefix of each settings class (see `section_prefix`)."""
    _PREFIXES.update(prefixes)


def section_prefix(cls: type) -> str:
    """The key prefix of a settings class: "model.text." for `TextConfig`, "" for `RunConfig`."""
    return _PREFIXES[cls]


class Settings:
    """Base of every settings dataclass: its fields are checked as they are declared.

    A subclass adds checks across fields in `check`; its errors name the
    full key with `self.key(name)`.
    """

    def __post_init__(self):
        for field in dataclasses.fields(self):
            _check_field(self, field)
        self.check()

    def check(self) -> None:
        """Checks across fields (the single-field ones come from the schema)."""

    @classmethod
    def key(cls, name: str) -> str:
        """The full dotted key of setting `name` of this section (``model.text_share``)."""
        return f"{section_prefix(cls)}{name}"


def _check_field(config: Settings, field: dataclasses.Field) -> None:
    value = getattr(config, field.name)
    meta = field.metadata
    if meta.get("section") or "help" not in meta:
        return
    key = config.key(field.name)
    hint = type_hints(type(config))[field.name]
    if value is None:
        if meta["required"]:
            raise InputError(f"{field.name} is required", key=key)
        if is_optional(hint):
            return
    expected = expected_type(strip_optional(hint), value)
    if expected:
        raise InputError(f"expected {expected}, got {value!r} ({type(value).__name__})",
                         key=key)
    allowed = choices(config_class=type(config), name=field.name)
    if allowed and value not in allowed:
        raise InputError(f"{field.name} must be {choices_text(allowed)}, got {value!r}",
                         key=key)
    if meta["check"] is not None and not meta["check"].test(value):
        raise InputError(f"{field.name} must be {meta['check'].text}, got {value!r}", key=key)


def choices_text(allowed: tuple) -> str:
    """The allowed values in words: "'a', 'b' or 'c'"."""
    quoted = [f"'{a}'" for a in allowed]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


_UNION_TYPES = (typing.Union, types.UnionType)
_PLURALS = {int: "integers", float: "numbers", str: "texts", bool: "true or false values"}
_HINTS: dict[type, dict] = {}


def type_hints(cls: type) -> dict:
    """The field types of a settings class, resolved (and kept)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def is_optional(hint) -> bool:
    return typing.get_origin(hint) in _UNION_TYPES and type(None) in typing.get_args(hint)


def strip_optional(hint):
    if typing.get_origin(hint) in _UNION_TYPES:
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner[0]
    return hint


def literal_values(hint) -> tuple:
    """A Literal's values, nested Literals flattened."""
    values = []
    for arg in typing.get_args(hint):
        values.extend(literal_values(arg) if typing.get_origin(arg) is Literal else [arg])
    return tuple(values)


def choices(config_class: type, name: str) -> tuple:
    """The allowed values of a setting whose type is a `Literal` (else empty)."""
    hint = strip_optional(type_hints(config_class)[name])
    return literal_values(hint) if typing.get_origin(hint) is Literal else ()


def expected_type(hint, value) -> str | None:
    """What `value` should have been, if it is not of type `hint`."""
    origin = typing.get_origin(hint)
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if is_int(value) else "an integer"
    if hint is float:
        return None if is_number(value) else "a finite number"
    if hint is str:
        return None if isinstance(value, str) else "text"
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return "a list"
        item = typing.get_args(hint)[0]
        if any(expected_type(item, v) for v in value):
            return "a list of " + _PLURALS.get(item, "values")
        return None
    if origin in (collections.abc.Mapping, dict):
        return None if isinstance(value, Mapping) else "a mapping"
    return None


# Reading settings from plain data --------------------------------------------------------------

def plain(value):
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def from_dict(cls, data: Any, source: str | None = None, prefix: str | None = None):
    """Builds a config dataclass from plain data, checking every key and type.

    Raises:
      InputError: naming the file and the full dotted key that is unknown, of
        the wrong type or out of range.
    """
    prefix = section_prefix(cls) if prefix is None else prefix
    if data is None and prefix:  # `section:` with nothing under it (YAML reads None)
        raise InputError("the section is empty: give its settings under it, or leave the "
                         "section out for its defaults", path=source,
                         key=prefix.rstrip(".") or None)
    if not isinstance(data, Mapping):
        shown = {"str": "text", "list": "a list", "int": "a number", "float": "a number",
                 "bool": "true/false", "NoneType": "nothing"}.get(type(data).__name__,
                                                                  type(data).__name__)
        raise InputError(f"expected a mapping of settings (name: value lines), got {shown} "
                         f"{data!r:.60}", path=source, key=prefix.rstrip(".") or None)
    hints = type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = close_keys(cls, prefix, str(key))
            hint = f" (did you mean {' or '.join(close)}?)" if close else (
                f" (known: {', '.join(fields)})")
            raise InputError(f"unknown setting{hint}", path=source, key=dotted)
        kwargs[key] = _coerce(hints[key], value, source, dotted)
        default = fields[key].default_factory
        if isinstance(kwargs[key], dict) and default is not dataclasses.MISSING:
            # A mapping setting (e.g. event_weights) adds to its defaults.
            kwargs[key] = {**default(), **kwargs[key]}
    try:
        return cls(**kwargs)
    except InputError as err:
        if err.path is not None or source is None:
            raise
        raise InputError(err.reason, path=source, key=err.key) from None


def close_keys(cls, prefix: str, name: str) -> list[str]:
    """The full keys a mistyped setting `name` of section `cls` (key prefix `prefix`) may
    have meant: the closest names of that section (``model.embeding_dim`` ->
    ``model.embedding_dim``), else close names in the other sections under the same
    top-level section (``data.window`` -> ``data.pairs.window``)."""
    close = difflib.get_close_matches(name, [f.name for f in dataclasses.fields(cls)], n=3)
    if close or not prefix:
        return [f"{prefix}{c}" for c in close]
    elsewhere = sorted(f"{other_prefix}{name}" for other, other_prefix in _PREFIXES.items()
                       if other_prefix and name in {f.name for f in dataclasses.fields(other)})
    if elsewhere:  # the right name in the wrong section (ranking.split_fraction)
        return elsewhere
    root = prefix.split(".")[0] + "."
    keys = {f"{other_prefix}{field.name}": field.name
            for other, other_prefix in _PREFIXES.items() if other_prefix.startswith(root)
            for field in dataclasses.fields(other)}
    names = difflib.get_close_matches(name, sorted(set(keys.values())), n=3)
    return sorted(key for key, field_name in keys.items() if field_name in names)


def _coerce(hint, value, source, key):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, key + ".")
    if origin in _UNION_TYPES:
        if value is None and type(None) in args:
            return None
        return _coerce(strip_optional(hint), value, source, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(key, "a list", value, source)
        return tuple(_coerce(args[0], v, source, key) for v in value)
    if origin in (collections.abc.Mapping, dict):
        if not isinstance(value, Mapping):
            raise _wrong_type(key, "a mapping", value, source)
        return {str(k): _coerce(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
    if hint is str and isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()  # YAML reads 2011-10-01 as a date
    expected = expected_type(hint, value)
    if expected:
        raise _wrong_type(key, expected, value, source)
    return float(value) if hint is float else value


def _wrong_type(key, expected, value, source):
    return InputError(f"expected {expected}, got {value!r} ({type(value).__name__})",
                      path=source, key=key)
