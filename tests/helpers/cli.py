"""Run the ``paradec`` CLI in-process: (exit code, stdout, stderr)."""

import sys

import pytest

from paradec import cli


def run_cli(args, capsys):
    old = sys.argv
    sys.argv = ["paradec", *args]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return e.value.code, out, err
