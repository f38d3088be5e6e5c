"""What every command shares: options generated from config dataclasses, the ``--opt key=value``
parser, and the printout of one generation (text, then a stats line or one JSON object).

A command is written once as a body over config objects::

    @command(GenerateConfig)
    def generate(cfg: GenerateConfig) -> None: ...

``command`` builds the typer function from the configs' fields that carry an ``option(...)``
spec (``paradec.options``): one parameter per field, in field order, config after config, with
the field's flags, type, default and help; typer parses the command line into them and the body
receives the configs built from the values (fields without a spec keep their defaults).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import typing
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import typer

from ..errors import ParadecError
from ..options import CliField, cli_fields, is_tuple, make


def _cli_type(hint: Any) -> Any:
    """The type typer parses a field into: ``tuple[X, ...]`` and ``list[X]`` are a repeatable
    ``List[X]`` option; ``X | None`` stays optional."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if optional and len(args) == 1:
        return Optional[_cli_type(args[0])]
    if is_tuple(hint) or typing.get_origin(hint) is list:
        return Optional[List[typing.get_args(hint)[0]]]
    return hint


def _parameter(f: CliField) -> inspect.Parameter:
    default = ... if f.default is dataclasses.MISSING else f.default
    if isinstance(default, tuple):
        default = list(default) or None  # typer's repeatable options take a list (None: not given)
    keywords = dict(f.spec.extra)
    if f.spec.help:
        keywords["help"] = f.spec.help
    info = typer.Option(default, *f.spec.flags, **keywords) if f.spec.flags else typer.Argument(default, **keywords)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=_cli_type(f.hint))


def command(*configs: type) -> Callable[[Callable], Callable]:
    """Decorator: a command body over config objects -> the typer command (see the module doc)."""
    fields = [f for cls in configs for f in cli_fields(cls)]
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise TypeError(f"configs {configs} share an option name")
    params = [_parameter(f) for f in fields]

    def wrap(body: Callable) -> Callable:
        def run(**values: Any) -> Any:
            return body(*(make(cls, values) for cls in configs))

        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):  # typer shows the body's docstring
            setattr(run, attr, getattr(body, attr))
        run.__signature__ = inspect.Signature(params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        run.configs = configs  # read by the tests: every option comes from these
        return run

    return wrap


def given(cfg: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags of ``cfg``'s options that differ from their defaults (were given), in order."""
    return [f.flag for f in cli_fields(type(cfg)) if f.name not in skip and getattr(cfg, f.name) != f.default]


def command_line(prog: str, cfg: Any, always: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> str:
    """The command that reproduces ``cfg`` (recorded beside what it made): ``prog``, then in
    option order the fields in ``always`` and every other not at its default, except ``skip``."""
    parts = [prog]
    for f in cli_fields(type(cfg)):
        value = getattr(cfg, f.name)
        if f.name in skip or (f.name not in always and value == f.default):
            continue
        if isinstance(value, bool):
            on, _, off = f.spec.flags[0].partition("/")
            parts += [on if value else off] if (value or off) else []
        else:
            parts.append(f"{f.flag} {value}")
    return " ".join(parts)


def parse_options(pairs: typing.Iterable[str] | None) -> dict[str, str]:
    """``--opt key=value`` (repeatable) -> ``{key: value}``, values still text."""
    out = {}
    for kv in pairs or []:
        if "=" not in kv:
            raise ParadecError(f"--opt expects key=value, got '{kv}'")
        k, v = kv.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@dataclass(frozen=True)
class Generation:
    """One finished generation, as ``paradec generate`` prints it. ``backend`` is set for an AR
    engine's run (its stats carry forwards, acceptance and constraint figures); a dLLM's stats
    already hold their own."""

    text: str
    token_ids: list[int]
    model: str
    method: str
    stats: Any  # decode.Stats or dllm.stats.DiffusionStats
    backend: str | None = None

    def to_json(self) -> dict:
        s = self.stats
        out: dict[str, Any] = {"text": self.text, "token_ids": self.token_ids, "model": self.model, "method": self.method}
        if self.backend is None:
            return {**out, "stats": {**s.to_dict(), "tokens_per_s": s.tokens_per_s}}
        return {**out, "backend": self.backend, "stats": {**s.to_dict(), "forwards": s.forwards,
                                                          "mean_accepted": s.mean_accepted, "tokens_per_s": s.tokens_per_s}}

    def stats_line(self) -> str:
        s, digits = self.stats, 3 if self.backend is None else 2
        line = (f"[{self.method}] {s.new_tokens} tokens in {s.total_s:.{digits}f}s = {s.tokens_per_s:.1f} tok/s | "
                f"{s.forwards} forwards, {s.mean_accepted:.2f} tokens/forward | stop: {s.stop_reason}")
        if self.backend is None:
            return line
        line += f" | {self.backend}"
        if s.constrained:
            line += f" | forced {s.forced_tokens}, likely {s.likely_tokens}, pruned {s.pruned_nodes}" + (
                " | INCOMPLETE (not a full match)" if s.incomplete else "")
        return line


def print_generation(g: Generation, as_json: bool, streamed: bool = False) -> None:
    """The JSON object on stdout, or the text (unless it was ``streamed`` already) and the stats
    line on stderr."""
    if as_json:
        print(json.dumps(g.to_json()))
        return
    if streamed:
        sys.stdout.write("\n")
    else:
        print(g.text)
    print(g.stats_line(), file=sys.stderr)
