"""``python -m paradec.cli``: the same entry point as the ``paradec`` script."""

from . import main

main()
