"""The ``rlvr-extrap`` command: one subcommand per module, each registering itself with ``add_parser``.

Bad input of any kind (arguments, paths, checkpoint files) ends the command with one line on stderr naming
the input and the fix, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from rlvr_extrap.experiments import demo
from rlvr_extrap.offline import commands as offline

SUBCOMMANDS = [demo, offline]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (argparse prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="rlvr-extrap", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)  # subparsers are OneLineParsers too
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    args = parser.parse_args(argv)
    prefix = f"rlvr-extrap {args.command}: error:"
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line, no traceback
        print(f"{prefix} {err}", file=sys.stderr)
        return 2
    except OSError as err:  # unreadable or unwritable paths, full disks
        where = f"{err.filename}: " if err.filename else ""
        print(f"{prefix} {where}{err.strerror or err}; check the path, its permissions and free space", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlvr-extrap {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
