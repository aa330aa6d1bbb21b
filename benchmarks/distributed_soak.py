"""Run a test command N times in a row while other processes keep every CPU busy; count the passes.

    python benchmarks/distributed_soak.py --runs 10 --busy 2 --out benchmarks/results/distributed_soak.md \\
        -- python -m pytest -q -p no:cacheprovider tests/test_distributed.py -k fsdp2

Each run's exit status, wall time and last output line go to the table in ``--out``; the full output of a
failed run is kept beside it (``<out stem>-run<N>.log``). The busy processes are plain Python spin loops.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rlvr_extrap.utils.files import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="spin-loop processes kept running")
    parser.add_argument("--out", type=Path, required=True, help="markdown file for the results")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to repeat, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to repeat after --")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the finally below: stop the spin loops
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    rows, passed = [], 0
    try:
        for run in range(1, args.runs + 1):
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            output = done.stdout + done.stderr
            last = (output.strip().splitlines() or [""])[-1]
            passed += done.returncode == 0
            if done.returncode != 0:
                atomic_write_text(args.out.with_name(f"{args.out.stem}-run{run}.log"), output)
            rows.append(f"| {run} | {done.returncode} | {seconds:.0f} | {last.replace('|', '/')} |")
            print(rows[-1], flush=True)
    finally:
        for process in busy:
            process.kill()
    header = [
        f"# Soak: {passed} of {len(rows)} runs passed",
        "",
        f"- command: `{shlex.join(command)}`",
        f"- load: {args.busy} spin-loop process(es) on {os.cpu_count()} CPU(s), plus whatever else the machine ran",
        f"- finished {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} ({platform.platform()})",
        "",
        "| run | exit status | seconds | last output line |",
        "|---|---|---|---|",
    ]
    atomic_write_text(args.out, "\n".join(header + rows) + "\n")
    print(f"{passed} of {len(rows)} passed; results in {args.out}")


if __name__ == "__main__":
    main()
