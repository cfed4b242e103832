"""Config files: YAML (safe loader) with `include:` and `key=value` overrides, into frozen dataclasses.

A config file names only what it changes::

    # conf/train/paper_2b.yaml
    include: base.yaml          # path relative to this file; may be a list
    model: {n_feats: 2}

Overrides on the command line use dotted keys and YAML values: ``optim.lr=3e-4 data.tiers=[isolated]``.
Unknown keys are errors (a typo never silently does nothing).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping, resolving ``include:`` (a path or list of paths, relative to the file)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"include cycle: {' -> '.join(map(str, _seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    includes = data.pop("include", [])
    merged: dict[str, Any] = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        merged = deep_merge(merged, load_yaml(path.parent / inc, _seen + (path,)))
    return deep_merge(merged, data)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``["a.b=1", "c=[x, y]"]`` (values parsed as YAML) to a nested dict."""
    out = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e
        update: dict[str, Any] = {}
        cur = update
        parts = key.strip().split(".")
        for p in parts[:-1]:
            cur[p] = {}
            cur = cur[p]
        cur[parts[-1]] = value
        out = deep_merge(out, update)
    return out


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, recursing into dataclass fields.

    Lists become tuples for tuple-typed fields. A ``preset: NAME`` key starts from ``cls.NAME()``
    (e.g. ``RhythmFeatureConfig.release``) and the other keys override it. Unknown keys raise
    :class:`ConfigError`.
    """
    data = dict(data or {})
    preset = data.pop("preset", None)
    if preset is not None:  # start from a named classmethod preset, e.g. RhythmFeatureConfig.release()
        factory = getattr(cls, str(preset), None)
        if not isinstance(factory, typing.Callable) or str(preset).startswith("_"):
            raise ConfigError(f"{where or cls.__name__}: unknown preset {preset!r}")
        data = deep_merge(to_dict(factory()), data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                          f"valid keys under {where or 'top level'}: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}.")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid config at {where or 'top level'}: {e}") from e


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        tp = args[0] if len(args) == 1 else tp
        origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return from_dict(tp, value, where)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if tp in (float, int) and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:  # YAML 1.1 reads "3e-3" (no dot) as a string
            return tp(value) if tp is float or not isinstance(value, float) else value
        except ValueError:
            raise ConfigError(f"{where.rstrip('.')}: expected a number, got {value!r}") from None
    return value


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) to plain dict/list values, for YAML dumps and MLflow params."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def resolve_path(root: str, p: str) -> Path:
    """``p`` as given when absolute (or a ``scheme://`` URI), else under ``root``; an empty ``root`` means
    ``$TRIA_ROOT`` or the current folder. Under ``ray job submit`` the job runs in an uploaded copy of the
    repo, so configs pass ``root`` to keep data outside it."""
    if os.path.isabs(p) or "://" in p:
        return Path(p)
    return Path(root or os.environ.get("TRIA_ROOT") or os.getcwd()) / p


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Read ``path`` (if given), apply ``overrides`` and build ``cls``."""
    data = load_yaml(path) if path else {}
    return from_dict(cls, apply_overrides(data, overrides))
