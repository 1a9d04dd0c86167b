"""One configuration system for the YAML files soe reads: a documented dataclass, validated by pydantic.

A config (data preparation, merge, the studies' experiment, merging, search and ablation files) is a plain
dataclass whose fields carry their documentation (a docstring under each field) and whose type hints state
each field's type *and* range, with `annotated_types` constraints::

    @dataclass
    class ShardsSpec:
        val_every: Annotated[Int, Ge(2)] = 20
        \"\"\"Every val_every-th chunk of a domain goes to val.bin.\"\"\"

`parse` validates a parsed YAML mapping against the dataclass with pydantic (nested sections, lists of
sections, unions, literals, ranges) and turns the first problem into one `ConfigError` line naming the file,
the key, the value and what was expected::

    data.yaml: shards.val_every=1: expected an integer ≥ 2

Scalars are strict: ``'8192'`` is not an integer and ``yes`` (a string) is not a boolean, so a quoted number
or a typo fails here, not deep inside a stage. Rules across fields (``k1 * k2 == k``, unique names) stay in each
config's ``validate``. Why pydantic rather than jsonargparse (which reads the training configs through
LightningCLI): jsonargparse is a command-line parser, so it converts text (``'yes'`` → True, ``'8192'`` → 8192)
and reports problems as nested prose without list indices; pydantic's strict mode and its structured errors
(location, input, constraint) give exactly the one line above.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import annotated_types as at
from pydantic import AllowInfNan, ConfigDict, Strict, TypeAdapter, ValidationError, with_config

from soe.checks import safe_load_yaml

__all__ = [
    "ConfigError",
    "ConfigNotFound",
    "Expect",
    "Int",
    "Float",
    "Bool",
    "Str",
    "Count",
    "config",
    "parse",
    "read_yaml",
]


class ConfigError(ValueError):
    """A config file or mapping is wrong; the message names the source, the key, the value and the expectation."""


class ConfigNotFound(ConfigError, FileNotFoundError):
    """The config file does not exist (a `ConfigError` and a `FileNotFoundError`)."""


@dataclasses.dataclass(frozen=True)
class Expect:
    """``Annotated[..., Expect("a learning rate in (0, 1)")]``: what an error says is expected, when the type and
    range alone would not say it as well."""

    text: str


Int = Annotated[int, Strict()]
"""An integer (not a bool, not a float, not a quoted number)."""
Float = Annotated[float, Strict(), AllowInfNan(False)]
"""A finite number; an integer is accepted (YAML writes 3 for 3.0)."""
Bool = Annotated[bool, Strict()]
"""true or false (not 'yes', not 1)."""
Str = Annotated[str, Strict()]
Count = Annotated[int, Strict(), at.Ge(1), Expect("a positive integer")]
"""A positive integer."""


def config(cls):
    """Decorator of a config dataclass: unknown keys are refused (a typo must not be ignored)."""
    return with_config(ConfigDict(extra="forbid"))(cls)


_ADAPTERS: dict[Any, TypeAdapter] = {}


def parse(cls, raw: Any, source: str):
    """An instance of the config dataclass ``cls`` from a parsed YAML mapping ``raw``, or a `ConfigError` naming
    ``source`` (the file), the key, the value and what was expected."""
    adapter = _ADAPTERS.get(cls) or _ADAPTERS.setdefault(cls, TypeAdapter(cls))
    try:
        return adapter.validate_python(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_message(cls, e.errors(include_url=False))}") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed YAML file ``path`` (a key given twice is refused); a missing, non-UTF-8 or unparsable file is
    refused naming it as ``what``."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigNotFound(f"{what} {p} not found" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        text = p.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {p} is not UTF-8 text ({e.reason}); expected a YAML file") from None
    try:
        raw = safe_load_yaml(text, f"{what} {p}")
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {p} is not valid YAML ({' '.join(str(e).split())})") from None
    except ValueError as e:  # a key given twice
        raise ConfigError(str(e)) from None
    return {} if raw is None else raw


# -- one problem, one line ---------------------------------------------------------------------------------------


def _message(cls, errors: list[dict]) -> str:
    unknown = [e for e in errors if e["type"] in ("unexpected_keyword_argument", "extra_forbidden")]
    if unknown:  # a typo explains the other problems: name every unknown key of the first section that has one
        parent = unknown[0]["loc"][:-1]
        keys = sorted(str(e["loc"][-1]) for e in unknown if e["loc"][:-1] == parent)
        where, hint = _walk(cls, parent)
        fields = sorted(_fields(_strip(hint))) if _is_dataclass(hint) else []
        return f"{_prefix(where)}unknown keys {keys}; expected some of {fields}"
    # A union (``str | {soup: ..., h: ...}``) reports one error per member: the deepest one is in the member
    # whose shape the value has, so it names the key that is actually wrong.
    e = max((x for x in errors if x["loc"][:1] == errors[0]["loc"][:1]), key=lambda x: len(x["loc"]))
    where, hint = _walk(cls, e["loc"])
    key = where or "the config"
    if e["type"] == "missing":
        return f"{key}: missing; expected {describe(hint)}"
    value = e["input"]
    if _is_dataclass(hint) and not isinstance(value, dict):
        return f"{_prefix(where)}expected a mapping of {_strip(hint).__name__} settings, got {type(value).__name__}"
    tip = ""
    if isinstance(value, str) and _is_float_text(value) and _strip(_optional_member(hint)) is float:
        tip = f" (YAML reads {value} as text: write it with a dot, e.g. {float(value):.1e})"
    if e["type"] == "finite_number":
        return f"{key}={value!r} is not finite; expected {describe(hint)}"
    return f"{key}={value!r}: expected {describe(hint)}{tip}"


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _walk(cls, loc: tuple) -> tuple[str, Any]:
    """The dotted key (``sources[0].max_chunks``) of a pydantic error location and the type hint found there.
    A union's members are tagged in the location: the walk stops at the union and describes it whole."""
    hint, key = cls, ""
    for item in loc:
        hint = _optional_member(hint)
        base = _strip(hint)
        if _is_dataclass(base) and isinstance(item, str):
            fields = _fields(base)
            if item not in fields:
                break
            hint, key = fields[item], f"{key}.{item}" if key else item
        elif _union_args(hint) and isinstance(item, str):  # a member's tag: descend into a section member
            members = [a for a in _union_args(hint) if _is_dataclass(a) and _strip(a).__name__ == item]
            if not members:
                break
            hint = members[0]
        elif typing.get_origin(base) is list and isinstance(item, int):
            hint, key = typing.get_args(base)[0], f"{key}[{item}]"
        elif typing.get_origin(base) is dict:
            hint, key = typing.get_args(base)[1] if typing.get_args(base) else Any, f"{key}.{item}"
        else:
            break  # a union member's tag, or a constraint's
    return key, hint


def _fields(dc) -> dict[str, Any]:
    """A config dataclass's keys as a file spells them (a field's alias, e.g. ``lambda``) -> their type hints."""
    out = {}
    for name, hint in typing.get_type_hints(dc, include_extras=True).items():
        alias = next((m.alias for m in _metadata(hint) if getattr(m, "alias", None)), None)
        out[alias or name] = hint
    return out


def _strip(hint):
    """The type under ``Annotated[...]``."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


def _metadata(hint) -> tuple:
    return hint.__metadata__ if typing.get_origin(hint) is Annotated else ()


def _union_args(hint) -> tuple:
    import types

    base = _strip(hint)
    return typing.get_args(base) if typing.get_origin(base) in (Union, types.UnionType) else ()


def _optional_member(hint):
    """``X`` for ``X | None`` (pydantic does not tag a nullable type's member in error locations)."""
    args = _union_args(hint)
    members = [a for a in args if a is not type(None)]
    return members[0] if args and len(members) == 1 else hint


def _is_dataclass(hint) -> bool:
    return dataclasses.is_dataclass(_strip(hint))


def _is_float_text(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def describe(hint) -> str:
    """What a value of type ``hint`` is, in words: ``an integer in [258, 1,048,576]``, ``a list of strings``,
    ``'labels' or 'kmeans'``, ``a string or a list of strings or null``."""
    meta = _metadata(hint)
    for m in meta:
        if isinstance(m, Expect):
            return m.text
    base = _strip(hint)
    if _union_args(hint):
        return " or ".join(describe(a) for a in _union_args(hint))
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is list:
        item = _strip(args[0]) if args else Any
        return f"a list of {_PLURALS[item]}" if item in _PLURALS else f"a list (each {describe(args[0])})"
    if origin is dict or base is dict:
        return "a mapping"
    if dataclasses.is_dataclass(base):
        return f"a mapping of {base.__name__} settings"
    return _NAMES.get(base, getattr(base, "__name__", str(base))) + _range(base, meta)


def _range(base, meta) -> str:
    lo = hi = None
    lo_open = hi_open = False
    for m in meta:
        for name in ("ge", "gt", "le", "lt"):
            v = getattr(m, name, None)
            if v is None:
                continue
            if name in ("ge", "gt"):
                lo, lo_open = v, name == "gt"
            else:
                hi, hi_open = v, name == "lt"
    fmt = (lambda v: f"{v:,}") if base is int else (lambda v: f"{v:g}")
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '≥'} {fmt(lo)}"
    if hi is not None:
        return f" {'<' if hi_open else '≤'} {fmt(hi)}"
    return ""
