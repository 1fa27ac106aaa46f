"""Settings: dataclasses whose fields carry their own rules, YAML in and out, ``key=value`` overrides.

Every configuration value of sam3dseg is a dataclass field declared with one of the
helpers below (:func:`positive_int`, :func:`one_of`, ...). The field's metadata holds
its :class:`Rule`: what values are allowed, in words and as a check, and one line of
meaning. That rule is the one place a value is checked: when a configuration is
built from a dict (YAML file, ``key=value`` overrides, command-line flags, a model
file) by :func:`from_dict`, and when a dataclass is constructed in Python
(``__post_init__`` calls :func:`check_settings`). A bad value is one line naming
the key, the value and what is allowed::

    train.epochs (--epochs) must be a positive integer, got 0

The same rules print the ``--help`` key listings and the table of options.

A setting that was renamed keeps its old name as an alias: a class lists ``RENAMED = {old: new}``; files
written with the old name (a run's ``config.yaml``, a cache's ``cache.yaml``, a model file's configuration)
read as they are, and an old name given by a user (``KEY=VALUE``, a ``--config`` file) works with a
one-line deprecation note.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from ..errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """What a setting may be: ``allowed`` in words, ``check`` as code, ``help`` its meaning."""

    allowed: str
    check: Callable[[Any], bool]
    help: str
    flag: str | None = None  # the command-line option that sets it, if any


def setting(default: Any, allowed: str, check: Callable[[Any], bool], help: str, flag: str | None = None) -> Any:
    """A dataclass field with its rule; lists and tuples as defaults are fine (copied per instance)."""
    meta = {"rule": Rule(allowed, check, help, flag)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def positive_int(default: int, help: str, flag: str | None = None) -> Any:
    return setting(default, "a positive integer", lambda v: v >= 1, help, flag)


def non_negative_int(default: int, help: str, flag: str | None = None) -> Any:
    return setting(default, "an integer >= 0", lambda v: v >= 0, help, flag)


def positive_number(default: float, help: str, flag: str | None = None) -> Any:
    return setting(default, "a number > 0", lambda v: v > 0, help, flag)


def non_negative_number(default: float, help: str, flag: str | None = None) -> Any:
    return setting(default, "a number >= 0", lambda v: v >= 0, help, flag)


def fraction(default: float, help: str, upper_open: bool = False, flag: str | None = None) -> Any:
    """A number in ``[0, 1]`` (or ``[0, 1)``)."""
    if upper_open:
        return setting(default, "a number in [0, 1)", lambda v: 0 <= v < 1, help, flag)
    return setting(default, "a number in [0, 1]", lambda v: 0 <= v <= 1, help, flag)


def one_of(default: Any, options: Sequence[Any], help: str, flag: str | None = None) -> Any:
    options = tuple(options)
    return setting(default, "one of " + ", ".join(map(str, options)), lambda v: v in options, help, flag)


def switch(default: bool, help: str, flag: str | None = None) -> Any:
    """A true/false setting (its type is the whole rule)."""
    return setting(default, "true or false", lambda v: isinstance(v, bool), help, flag)


def _label(where: str, name: str, rule: Rule | None) -> str:
    key = f"{where}{name}"
    return f"{key} ({rule.flag})" if rule is not None and rule.flag else key


def _rules(cls_or_obj: Any) -> list[tuple[dataclasses.Field, Rule | None]]:
    return [(f, f.metadata.get("rule")) for f in fields(cls_or_obj)]


def refuse_unused(obj: Any, names: tuple[str, ...], used: bool, why: str) -> None:
    """The one rule for options that do nothing in the chosen mode: each of ``names`` set away from its
    default while ``used`` is False is a ``UserError`` saying ``why`` (rather than being ignored without a word)."""
    if used:
        return
    section = getattr(obj, "SECTION", "")
    for f in fields(obj):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name in names and getattr(obj, f.name) != default:
            raise UserError(f"{section}.{f.name}={getattr(obj, f.name)!r} does nothing {why}; leave it out")


def check_settings(obj: Any, where: str | None = None) -> None:
    """Check every field of dataclass ``obj`` against its rule; the first failure is a ``UserError``.

    ``where`` prefixes the key names (default: the class's ``SECTION`` and a dot).
    """
    if where is None:
        section = getattr(obj, "SECTION", "")
        where = f"{section}." if section else ""
    for f, rule in _rules(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_settings(value, f"{where}{f.name}.")
            continue
        if rule is None:
            continue
        try:
            ok = bool(rule.check(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"{_label(where, f.name, rule)} must be {rule.allowed}, got {value!r}")


def to_dict(config: Any) -> dict:
    """A dataclass tree (or a dict of them) as plain types (tuples as lists), fit for YAML, JSON and
    ``weights_only`` files."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(config)


def _coerce(value: Any, hint: Any, label: str) -> Any:
    """``value`` as the field's type ``hint``; a value of another type is a ``UserError``."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(get_args(hint)):
            return None
        first = None
        for arg in args:  # several types (int | str): the first that takes the value; else the first's complaint
            try:
                return _coerce(value, arg, label)
            except UserError as err:
                first = first or err
        raise first
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{label} must be a list, got {value!r}")
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], label) for v in value)
        if len(value) != len(args):
            raise UserError(f"{label} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, label) for v, a in zip(value, args))
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{label} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{label} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{label} must be a number, got {value!r}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise UserError(f"{label} must be a string, got {value!r}")
    return value


def renamed(cls: type, data: dict, where: str = "", note: Callable[[str], None] | None = None) -> dict:
    """``data`` with the old names of ``cls``'s settings (``cls.RENAMED``, in every section) replaced by the new
    ones; ``note`` is told each replacement. Both names at once is a ``UserError``."""
    if not isinstance(data, dict):
        return data
    names = getattr(cls, "RENAMED", {})
    hints = get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    out = {}
    for key, value in data.items():
        new = names.get(key, key)
        if new != key:
            if new in data:
                raise UserError(f"{where}{key} and {where}{new} are one setting (its old and new name): give {where}{new} only")
            if note is not None:
                note(f"{where}{key} is now {where}{new} (the old name still works)")
        hint = hints.get(new)
        out[new] = renamed(hint, value, f"{where}{new}.", note) if hint is not None and dataclasses.is_dataclass(hint) else value
    return out


def renamed_key(cls: type, key: str, note: Callable[[str], None] | None = None) -> str:
    """A dotted key (``decoder.image_path``) under its current name (``decoder.pixel_skip``)."""
    parts, node, where = [], cls, ""
    for part in key.split("."):
        names = getattr(node, "RENAMED", {}) if node is not None else {}
        if part in names:
            if note is not None:
                note(f"{where}{part} is now {where}{names[part]} (the old name still works)")
            part = names[part]
        parts.append(part)
        where += part + "."
        hint = get_type_hints(node).get(part) if node is not None and dataclasses.is_dataclass(node) else None
        node = hint if hint is not None and dataclasses.is_dataclass(hint) else None
    return ".".join(parts)


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict: unknown keys, wrong types and values outside a rule are refused.

    Keys left out take their defaults.
    """
    if not isinstance(data, dict):
        raise UserError(f"{where.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    data = renamed(cls, data, where)
    hints = get_type_hints(cls)
    rules = {f.name: rule for f, rule in _rules(cls)}
    unknown = sorted(set(data) - set(rules))
    if unknown:
        raise UserError(f"unknown config key(s) {', '.join(f'{where}{k}' for k in unknown)}; known: {', '.join(rules)}")
    kwargs = {}
    for name, value in data.items():
        hint, rule = hints[name], rules[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, _label(where, name, rule))
    obj = cls(**kwargs)
    check_settings(obj, where)
    return obj


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """``["train.lr=1e-3", "decoder.channels=[64,32,16,8]"]`` applied to a nested dict (values in YAML)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not KEY=VALUE (e.g. train.lr=0.001)")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise UserError(f"override {item!r}: {p!r} is not a config section; sections: {', '.join(k for k, v in data.items() if isinstance(v, dict))}")
            node = node[p]
        if leaf not in node or isinstance(node[leaf], dict):
            raise UserError(f"override {item!r}: unknown key {key!r}")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise UserError(f"override {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from err
    return data


def _merge(data: dict, loaded: dict, source: str, where: str = "") -> None:
    """Values of ``loaded`` into ``data``, section by section; ``source`` names where they came from."""
    for key, value in loaded.items():
        if key not in data:
            if not where and all(isinstance(v, dict) for v in data.values()):
                raise UserError(f"{source}: unknown section {key!r}; known: {', '.join(data)}")
            raise UserError(f"{source}: unknown key {where}{key}; known: {', '.join(data)}")
        if isinstance(data[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"{source}: section {where}{key!r} must be a mapping")
            _merge(data[key], value, source, f"{where}{key}.")
        else:
            data[key] = value


def read_yaml(path: str | Path, missing: str) -> dict:
    """A YAML file holding a mapping (an empty file is an empty one); ``missing`` is the message when absent."""
    path = Path(path)
    if not path.is_file():
        raise UserError(missing)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(loaded, dict):
        raise UserError(f"{path} must hold a mapping of keys and sections")
    return loaded


def _layer(data: dict, defaults: dict, values: dict, source: str, dependents: dict[str, tuple[str, ...]]) -> None:
    """Merge one source's ``values`` into ``data``; a setting it changes resets the settings whose defaults depend
    on it (``dependents``: key -> keys) to their defaults, unless the same source sets them too: an image size a
    recipe chose for its encoder does not outlive a later ``--encoder``."""
    before = {key: data.get(key) for key in dependents}
    _merge(data, values, source)
    for key, keys in dependents.items():
        if data.get(key) != before[key]:
            for dependent in keys:
                if dependent not in values:
                    data[dependent] = defaults[dependent]


def load_settings(
    cls: type, path: str | Path | None = None, overrides: Sequence[str] = (), given: dict | None = None, base: Sequence[tuple[str, dict]] = ()
) -> Any:
    """Defaults, then each of ``base`` (a recipe, a plan: ``(name, values)``) in order, then the YAML file,
    then the ``key=value`` overrides, then the values ``given`` (flags), checked.

    ``cls.DEPENDENTS`` (optional, ``{key: (keys whose default depends on it)}``, top-level keys): when a later
    source changes ``key``, the settings that depend on it go back to their defaults unless that source sets them
    too; the stage resolves those defaults once everything they depend on is known.
    """
    defaults = to_dict(cls())
    dependents = getattr(cls, "DEPENDENTS", {})
    data = copy.deepcopy(defaults)
    layers = [(name, renamed(cls, values)) for name, values in base]
    if path is not None:
        layers.append((str(path), renamed(cls, read_yaml(path, f"config file not found: {path}"), note=log.warning)))
    overrides = [renamed_key(cls, item.partition("=")[0], log.warning) + item[item.index("="):] if "=" in item else item for item in overrides]
    layers += [("overrides", _override_values(data, overrides)), ("options", given or {})]
    for source, values in layers:
        _layer(data, defaults, values, source, dependents)
    return from_dict(cls, data)


def _override_values(data: dict, overrides: Sequence[str]) -> dict:
    """``key=value`` overrides as a nested dict of the values they set (checked against ``data``'s keys)."""
    applied = apply_overrides(copy.deepcopy(data), overrides)
    out: dict = {}
    for item in overrides:
        *parents, leaf = item.partition("=")[0].split(".")
        node, src = out, applied
        for p in parents:
            node, src = node.setdefault(p, {}), src[p]
        node[leaf] = src[leaf]
    return out


def changed_settings(old: dict, new: dict, where: str = "") -> dict[str, tuple]:
    """``{"section.key": (old, new)}`` for every key whose value differs between two nested settings dicts (a
    run's recorded configuration and the one asked for; two records of what made a prediction), in the order
    of ``old``'s keys, then ``new``'s."""
    out = {}
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(changed_settings(a, b, f"{where}{key}."))
        elif a != b:
            out[f"{where}{key}"] = (a, b)
    return out


def describe_changes(differ: dict[str, tuple]) -> str:
    """:func:`changed_settings` in words, for a message: ``train.lr: 0.001 there, 0.5 now; ...``."""
    return "; ".join(f"{key}: {a} there, {b} now" for key, (a, b) in differ.items())


def dump_yaml(config: Any) -> str:
    """Settings (a dataclass tree, or a dict such as a plan's sections) as YAML, keys in their order."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def describe(cls: type, where: str = "") -> list[tuple[str, Any, str, str]]:
    """``(key, default, allowed, meaning)`` for every setting of ``cls``, sections expanded."""
    rows = []
    defaults = cls()
    for f, rule in _rules(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(describe(type(value), f"{where}{f.name}."))
        elif rule is not None:
            rows.append((f"{where}{f.name}", to_dict(value) if isinstance(value, tuple) else value, rule.allowed, rule.help))
    return rows


def format_settings(cls: type, where: str = "") -> str:
    """The settings of ``cls`` as aligned text lines: key, default, allowed values, meaning."""
    rows = describe(cls, where)
    width = max(len(k) for k, *_ in rows)
    lines = []
    for key, default, allowed, meaning in rows:
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        lines.append(f"  {key:<{width}}  {shown}")
        lines.append(f"  {'':<{width}}    {meaning}; {allowed}")
    return "\n".join(lines)
