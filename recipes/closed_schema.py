"""A closed schema: every key a command line sets must be a key of its entry point's schema.

Why Hydra alone lets unknown keys through: it applies ``+key=value`` and ``++key=value`` with OmegaConf's
``force_add``, which ignores the struct flag of the composed (structured) config, and ``OmegaConf.to_object`` then
sets such a key as a plain attribute of the dataclass, where nothing reads it: a typo ``+trainer.max_step=10`` ran
with the default step count. Without the ``+``, Hydra refuses the key but suggests adding the ``+``. So
:func:`check_overrides` walks each override's dotted key through the schema's types before Hydra composes:

- below a dataclass a key must be one of its fields; below a list, an index;
- a ``dict`` field's own keys are open, and its values keep their type (``stages.<any name>.entry`` is checked
  against the pipeline's ``StageConfig``); everything below an ``Any`` field is open;
- Hydra's own settings (``hydra.*``, ``hydra/...``), group paths (``a/b=...``) and package selections
  (``group@pkg=option``) are Hydra's to check, and so is an override it cannot parse.

A config group selection (``model=sambay_125m``, ``+optim=mup``) names a schema key, so it passes.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

# What one step of a dotted key reaches when the key is not in the schema.
_UNKNOWN = object()


class UnknownKeyError(ValueError):
    """A command line sets a key its entry point's schema does not have."""


def schema_type(name: str) -> type:
    """The dataclass stored in Hydra's ConfigStore as ``name`` (e.g. ``sft_schema``)."""
    try:
        node = ConfigStore.instance().load(f"{name}.yaml").node
    except HydraException as e:
        raise LookupError(f"no schema {name!r} in Hydra's ConfigStore ({e})") from None
    return OmegaConf.get_type(node)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _without_none(tp: Any) -> Any:
    """``Optional[X]`` -> ``X``; a union of several types stays a (scalar) union."""
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _step(tp: Any, part: str) -> Any:
    """The type one key ``part`` below a value of type ``tp`` has; ``_UNKNOWN`` when there is no such key."""
    tp = _without_none(tp)
    if tp is Any:
        return Any
    if dataclasses.is_dataclass(tp):
        return _field_types(tp).get(part, _UNKNOWN)
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return args[1] if args else Any
    if isinstance(origin, type) and issubclass(origin, Sequence) and not issubclass(origin, str):
        return (args[0] if args else Any) if part.isdigit() else _UNKNOWN
    return _UNKNOWN  # a scalar has no keys


def schema_keys(tp: Any, prefix: str = "") -> list[str]:
    """Every dotted key a dataclass type defines (a ``dict``, list or ``Any`` field ends a key: its keys are open)."""
    tp = _without_none(tp)
    if not dataclasses.is_dataclass(tp):
        return []
    keys = []
    for name, field_type in _field_types(tp).items():
        keys += [prefix + name, *schema_keys(field_type, f"{prefix}{name}.")]
    return keys


def _refusal(schema: type, key: str, parts: list[str], depth: int, parent: Any) -> UnknownKeyError:
    """The error for ``key``, whose part ``parts[depth]`` is not a key of ``parent`` (the type above it)."""
    where = ".".join(parts[:depth])
    prefix = f"{where}." if where else ""
    here = schema_keys(parent, prefix)
    candidates = list(dict.fromkeys(schema_keys(schema) + here))
    close = difflib.get_close_matches(key, candidates, n=1)
    hint = f"did you mean {close[0]}?" if close else "no key of the schema is close to it."
    parent = _without_none(parent)
    if dataclasses.is_dataclass(parent):
        fields = ", ".join(_field_types(parent))
        listing = f"the keys {'under ' + where if where else 'at the top level'} are: {fields}"
    elif typing.get_origin(parent) in (list, tuple):
        listing = f"{where} is a list: the key after it is an index"
    else:
        listing = f"{where} is a value, with no keys below it"
    return UnknownKeyError(f"unknown config key {key} (not in {schema.__name__}): {hint} ({listing})")


def check_key(schema: type, key: str) -> None:
    """Refuse ``key`` (dotted) unless it is a key of the dataclass ``schema`` or lies below an open one."""
    parts, tp = key.split("."), schema
    for depth, part in enumerate(parts):
        child = _step(tp, part)
        if child is _UNKNOWN:
            raise _refusal(schema, key, parts, depth, tp)
        if child is Any:
            return
        tp = child


def _is_hydras(key: str, package: str | None) -> bool:
    """Overrides Hydra itself checks: its own settings, group paths and package selections."""
    return package is not None or "/" in key or key.split(".")[0] == "hydra"


def check_overrides(schema: type, overrides: Iterable[str]) -> None:
    """Refuse the first command-line override (``key=value``, ``+key=value``, ``++key=value``, ``~key``) whose key
    is not in ``schema``, with :class:`UnknownKeyError` naming it and the closest valid key."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return  # Hydra reports the syntax error itself, with its own pointer into the override
    for override in parsed:
        if not _is_hydras(override.key_or_group, override.package):
            check_key(schema, override.key_or_group)
