"""The `dyllm` console command's entry point, kept outside the dyllm package.

Every command starts by importing torch, which takes a few seconds. A console script imports its
entry module before it can catch anything, so if that module were inside dyllm, a Ctrl-C during
those seconds would end in Python's KeyboardInterrupt traceback. This module imports nothing
heavy: it catches the interrupt around the import of `dyllm.cli` and ends like the command's own
interrupt handling, with one line and status 130.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Import the command line, then run it; an interrupt while importing exits 130."""
    try:
        from dyllm.cli import main as run_command_line
    except KeyboardInterrupt:
        print("dyllm: interrupted", file=sys.stderr)
        return 130
    return run_command_line()


if __name__ == "__main__":
    raise SystemExit(main())
