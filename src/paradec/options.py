"""Typed options: one definition per option, on a frozen config dataclass.

- ``option(default, "--flag", "-f", help=...)`` declares a dataclass field together with how the
  command line shows it (flags, help); the CLI (its ``common`` module) builds each command's options from
  these fields, so an option's name, type, default and help are written once.
- ``cli_fields(cls)`` lists a config's command-line fields; ``make(cls, values)`` builds the config
  from command-line values (by field name).
- ``like(cls, name)`` reuses the option of another config's field (a command that mixes configs).
- ``build(cls, options)`` makes the config from a dict of values, checking each against its
  field's type (strict, as the server's JSON is); ``from_text`` first parses ``key=value`` text
  (``--opt``) to the fields' types.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from .errors import ParadecError
from .params import is_int, is_number, text

CLI = "paradec.options.cli"  # metadata key of a field's command-line spec


@dataclasses.dataclass(frozen=True)
class CliSpec:
    """How a config field appears on the command line."""

    flags: tuple[str, ...] = ()  # e.g. ("--max-new-tokens", "-n"); empty: a positional argument
    help: str = ""
    extra: tuple[tuple[str, Any], ...] = ()  # further typer.Option keywords (min, max, show_default ...)


def option(default: Any = dataclasses.MISSING, *flags: str, help: str = "", factory: Any = dataclasses.MISSING,
           **extra: Any) -> Any:
    """A dataclass field with its command-line spec: ``x: int = option(3, "--x", help="...")``."""
    meta = {CLI: CliSpec(tuple(flags), help, tuple(sorted(extra.items())))}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def cli_spec(f: dataclasses.Field) -> CliSpec | None:
    return f.metadata.get(CLI)


def like(cls: type, name: str) -> Any:
    """The option defined on ``cls``'s field ``name`` (default and command-line spec), for a
    command whose options mix several configs in its own order: defined once, shown where used."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory, metadata=f.metadata)
    return dataclasses.field(default=f.default, metadata=f.metadata)


@dataclasses.dataclass(frozen=True)
class CliField:
    """One config field shown on the command line."""

    owner: type
    name: str
    hint: Any  # the field's type, resolved
    default: Any
    spec: CliSpec

    @property
    def flag(self) -> str:
        """The long flag (``--batch`` for ``--batch/--no-batch``), or the argument's name."""
        return self.spec.flags[0].split("/")[0] if self.spec.flags else self.name


def cli_fields(cls: type) -> list[CliField]:
    """The fields of config ``cls`` that carry a command-line spec, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = cli_spec(f)
        if spec is not None:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out.append(CliField(cls, f.name, hints[f.name], default, spec))
    return out


def is_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple


def make(cls: type, values: dict[str, Any], **extra: Any):
    """Config ``cls`` from command-line values (by field name; repeatable options to tuples) and
    ``extra`` fields; its other fields keep their defaults."""
    kw = {}
    for f in cli_fields(cls):
        if f.name in values:
            v = values[f.name]
            kw[f.name] = tuple(v or ()) if is_tuple(f.hint) else v
    return cls(**kw, **extra)


def _field_types(cls: type) -> dict[str, type]:
    default = cls()
    return {f.name: type(getattr(default, f.name)) for f in dataclasses.fields(cls)}


def _typed(want: type, v: Any, name: str = "option") -> Any:
    """``v`` if it is of type ``want`` (ints are floats too); else None."""
    if want is bool:
        return v if isinstance(v, bool) else None
    if want is int:
        return v if is_int(v) else None
    if want is float:
        return float(v) if is_number(v) and math.isfinite(v) else None
    if want is str and isinstance(v, str):
        text(f"option {name}", v)  # valid UTF-8 (a lone surrogate cannot name a file or a template)
        return v
    return v if isinstance(v, want) else None


def build(cls: type, options: dict[str, Any]):
    """The config ``cls(**options)``, every value checked against its field's type."""
    types = _field_types(cls)
    unknown = sorted(set(options) - set(types))
    if unknown:
        raise ParadecError(f"unknown option(s) {', '.join(map(str, unknown))} (valid: {', '.join(types)})"[:400])
    typed = {}
    for k, v in options.items():
        got = _typed(types[k], v, k)
        if got is None:
            what = "a finite number" if types[k] is float else types[k].__name__
            raise ParadecError(f"option {k} expects {what}, got {type(v).__name__} {v!r}"[:300])
        typed[k] = got
    try:
        return cls(**typed)
    except ValueError as e:
        raise ParadecError(str(e).splitlines()[0] if str(e) else f"invalid options for {cls.__name__}") from None


def from_text(cls: type | None, options: dict[str, Any]) -> dict[str, Any]:
    """Options given as text (``key=value``) parsed to their fields' types; other values and
    unknown keys pass through for ``build`` to judge."""
    if cls is None:
        return dict(options)
    types = _field_types(cls)
    out = {}
    for k, v in options.items():
        want = types.get(k)
        if isinstance(v, str) and want in (bool, int, float):
            s = v.strip().lower()
            try:
                if want is bool:
                    if s not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(v)
                    v = s in ("true", "1", "yes")
                else:
                    v = want(s)
            except ValueError:
                what = "a number" if want is float else want.__name__
                raise ParadecError(f"option {k} expects {what}, got {v!r}"[:300]) from None
        out[k] = v
    return out
