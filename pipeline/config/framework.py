"""The config framework the stage configs are built on: a field with its help (``option``), the checks their
``__post_init__`` run, reading a YAML section (``load``), and the click options generated from the fields
(``click_options``). Nothing here knows a stage.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any

import click
import yaml


class ConfigError(ValueError):
    """A config file or flag value that cannot be used; the message names it."""


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxdict, _BRIEF.maxtuple, _BRIEF.maxstring, _BRIEF.maxother = (
    2,
    4,
    4,
    4,
    60,
    60,
)


def brief(value: Any) -> str:
    """``repr(value)`` cut short: a few items of each container, two levels deep, so that a value from a
    hostile config file costs the error message a bounded amount whatever it holds."""
    return _BRIEF.repr(value)


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    factory: Callable[[], Any] | None = None,
    cli: bool = True,
    operational: bool = False,
    comma_list: bool = False,
) -> Any:
    """A config field with its help text (shown by ``--help``) and, optionally, allowed values.

    ``operational``: the field changes how a run is carried out, not what it computes (a resumed run may change it).
    ``comma_list``: a list field whose items may each be comma-separated (``--tasks a,b --tasks c``), split by
    :func:`load`.
    """
    meta = {"help": help, "choices": choices, "cli": cli, "operational": operational, "comma_list": comma_list}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def operational_fields(cls: type) -> frozenset[str]:
    """Names of the fields of ``cls`` declared with ``option(..., operational=True)``."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("operational"))


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_choice(cfg: Any, name: str) -> None:
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(cfg)}[name]
    value = getattr(cfg, name)
    if choices and value not in choices:
        raise ConfigError(f"{flag_name(name)}: {brief(value)} is not one of {', '.join(choices)}")


def check_positive(cfg: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and (value < 0 if allow_zero else value <= 0):
            raise ConfigError(f"{flag_name(name)}: must be {'≥ 0' if allow_zero else '> 0'}, got {brief(value)}")


def check_all_choices(cfg: Any) -> None:
    for f in dataclasses.fields(cfg):
        if f.metadata.get("choices"):
            check_choice(cfg, f.name)


def check_finite(cfg: Any) -> None:
    """Every float field a finite number: NaN passes every comparison-based check, inf makes no sense here."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag_name(f.name)}: must be a finite number, got {brief(value)}")


# ---------------------------------------------------------------------------------------------- loading


def _coerce(name: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType) and args:
        return _coerce(name, args[0], value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{flag_name(name)}: expected a mapping, got {brief(value)}")
        if args[1] is str:  # a nested mapping of text, {a: {b: c}}, is the flat {a.b: c} (per-task field maps)
            value = {
                f"{k}.{k2}" if isinstance(v, dict) else k: v2
                for k, v in value.items()
                for k2, v2 in (v.items() if isinstance(v, dict) else [(None, v)])
            }
        return {str(k): _coerce(name, args[1], v) for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{flag_name(name)}: expected a list, got {brief(value)}")
        return tuple(_coerce(name, args[0], v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{flag_name(name)}: expected true or false, got {brief(value)}")
        return value
    if hint in (int, float, str):
        if hint is str and not isinstance(value, str | int | float):
            raise ConfigError(f"{flag_name(name)}: expected text, got {brief(value)}")
        try:
            coerced = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag_name(name)}: expected {hint.__name__}, got {brief(value)}") from None
        if hint is int and coerced != value and not isinstance(value, str):
            raise ConfigError(f"{flag_name(name)}: expected an integer, got {brief(value)}")
        return coerced
    return value


# The sections a config file may hold, one per stage that reads one.
SECTIONS = ("teacher_cache", "distill", "eval")
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 16  # nested mappings and lists; a stage config needs 4


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML without aliases and with bounded nesting: a config then holds at most what its bytes spell out.

    An alias repeats a whole subtree for a few bytes, so nine levels of ten (515 bytes) stand for 10^9 items
    that any walk, copy or message of the value expands (the "billion laughs"); a config has no need of them.
    The composer recurses once per level, so depth is bounded before Python's stack is.
    """

    def compose_document(self):
        self._depth = 0
        return super().compose_document()

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a config file", self.peek_event().start_mark
            )
        self._depth += 1
        if self._depth > MAX_CONFIG_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_CONFIG_DEPTH} levels deep", self.peek_event().start_mark
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_section(path: str | Path | None, section: str) -> dict:
    """The mapping under ``section`` in a YAML config file ({} when no file); unknown sections are errors."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config: {path} is larger than {MAX_CONFIG_BYTES} bytes; is it really a config file?")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_ConfigLoader) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config: {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except yaml.YAMLError as e:
        message = " ".join(str(e).split())
        raise ConfigError(f"--config: {path} is not valid YAML: {message}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of stage sections")
    unknown = sorted(str(k) for k in data if k not in SECTIONS)
    if unknown:
        raise ConfigError(f"--config: unknown section {brief(unknown[0])} in {path}; known: {', '.join(SECTIONS)}")
    value = data.get(section, {}) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"--config: section {section!r} of {path} must be a mapping")
    return value


def load(cls: type, path: str | Path | None, section: str, overrides: dict[str, Any] | None = None) -> Any:
    """Build ``cls`` from section ``section`` of the YAML file at ``path``, then flags that were given."""
    values = read_section(path, section)
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(
            f"--config: unknown key {brief(unknown[0])} in section {section!r} of {path}; "
            f"known: {', '.join(sorted(hints))}"
        )
    values.update({k: v for k, v in (overrides or {}).items() if v not in (None, ()) and k in hints})
    try:
        coerced = {k: _coerce(k, hints[k], v) for k, v in values.items()}
        for f in dataclasses.fields(cls):
            if f.metadata.get("comma_list") and coerced.get(f.name) is not None:
                # "--tasks a,b", "--tasks a --tasks b" and a YAML list all mean the same list
                items = (s.strip() for item in coerced[f.name] for s in str(item).split(","))
                coerced[f.name] = tuple(dict.fromkeys(s for s in items if s))
        return cls(**coerced)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def to_dict(cfg: Any) -> dict:
    """JSON-ready config, recorded in every artifact."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


# ---------------------------------------------------------------------------------------------- click


class _MappingParam(click.ParamType):
    """``name=value,name=value`` on the command line."""

    name = "NAME=VALUE,..."

    def __init__(self, value_type: type):
        self.value_type = value_type

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict:
        if isinstance(value, dict):
            return value
        out = {}
        for item in filter(None, (s.strip() for s in str(value).split(","))):
            key, sep, raw = item.partition("=")
            if not sep:
                self.fail(f"{item!r} is not NAME=VALUE", param, ctx)
            try:
                out[key.strip()] = self.value_type(raw.strip())
            except ValueError:
                self.fail(f"{item!r}: {raw!r} is not a {self.value_type.__name__}", param, ctx)
        return out


def click_options(cls: type, *, skip: tuple[str, ...] = ()) -> Callable:
    """Decorator adding one option per field of ``cls``; every default is None so only given flags override."""
    hints = typing.get_type_hints(cls)

    def decorate(fn: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            if not f.metadata.get("cli", True) or f.name in skip:
                continue
            hint = hints[f.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help_text = f"{f.metadata['help']}  [default: {_show(default)}]"
            kwargs: dict[str, Any] = {"default": None, "help": help_text}
            name = flag_name(f.name)
            if base is bool:
                fn = click.option(f"{name}/--no-{f.name.replace('_', '-')}", f.name, **kwargs)(fn)
                continue
            if typing.get_origin(base) is dict:
                kwargs["type"] = _MappingParam(typing.get_args(base)[1])
            elif typing.get_origin(base) is tuple:
                kwargs.update(type=typing.get_args(base)[0], multiple=True, default=None)
            elif f.metadata.get("choices"):
                kwargs["type"] = click.Choice(f.metadata["choices"])
            else:
                kwargs["type"] = base
            fn = click.option(name, f.name, **kwargs)(fn)
        return fn

    return decorate


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)
