"""``paradec serve``: the OpenAI API over one model, in this process or on Ray Serve."""

from __future__ import annotations

import dataclasses

from ..server.config import ServeOptions
from .common import command, parse_options


@command(ServeOptions)
def serve(opts: ServeOptions) -> None:
    """Serve the OpenAI API (completions, chat completions, streaming) with speculative decoding."""
    from ..server.launch import serve as run

    config = opts.server()  # the limits are checked here, before anything loads
    cluster = opts.cluster()
    run(opts.launch(), dataclasses.replace(config, options=parse_options(opts.opt)), cluster)
