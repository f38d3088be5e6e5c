"""``paradec`` command line: the app, its commands (one module each; their options are generated
from config dataclasses by ``common.command``) and ``main``. Importing it is cheap: models, torch
and servers load only when a command runs."""

from __future__ import annotations

import sys

import typer

from ..errors import ParadecError
from .bench import bench
from .convert import convert
from .demo import demo
from .dllm import dllm_app
from .generate import generate
from .head import head_app
from .models import methods, models
from .serve import serve

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="paradec: lossless speculative decoding. Many tokens per model call, exactly the model's output.",
)
for _name, _fn in (("generate", generate), ("models", models), ("methods", methods), ("demo", demo), ("bench", bench),
                   ("convert", convert), ("serve", serve)):
    app.command(_name)(_fn)
app.add_typer(dllm_app, name="dllm")
app.add_typer(head_app, name="head")


def main() -> None:
    try:
        rv = app(standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except ParadecError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except typer.Abort:
        print("aborted", file=sys.stderr)
        code = 130
    except typer.TyperException as e:  # usage errors: bad option values, missing arguments
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        print(f"error: {' '.join(msg.split())}", file=sys.stderr)
        code = getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
