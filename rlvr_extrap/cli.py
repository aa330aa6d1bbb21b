"""The ``rlvr-extrap`` command: one subcommand per module, each registering itself with ``add_parser``."""

from __future__ import annotations

import argparse
import sys

from . import demo, offline

SUBCOMMANDS = [demo, offline]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlvr-extrap", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line, no traceback
        print(f"rlvr-extrap {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
