"""The regime map's command line: ``python benchmarks/forecast collect|analyze|render ...`` from the repository
root."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == HERE:
    sys.path[0] = str(HERE.parent)  # run as a folder: import from benchmarks/, as its scripts do

from common import RESULTS  # noqa: E402

import forecast  # noqa: E402
from forecast.grids import CACHE, GRIDS, MODELS  # noqa: E402
from forecast.recording import collect, load_cache  # noqa: E402
from forecast.rendering import analyze, render  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/forecast",
        description=forecast.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="train the grid's missing runs into the cache")
    c.add_argument("--model", choices=sorted(GRIDS), default="toy")
    c.add_argument("--steps", type=int, default=None, help="run length (default: the grid's, 200 toy, 60 smollm2)")
    c.add_argument("--large-prompts", type=int, default=None, help="prompts per step of the large-batch runs")
    c.add_argument("--large-steps", type=int, default=None, help="length of the large-batch runs (default --steps)")
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--cache", type=Path, default=CACHE)
    a = sub.add_parser("analyze", help="the regime map from the cache")
    a.add_argument("--cache", type=Path, default=CACHE)
    a.add_argument("--quick", action="store_true", help="fewer variants and origins (a smoke test)")
    a.add_argument("--out", type=Path, default=RESULTS)
    a.add_argument("--name", default="forecast", help="results file stem (e.g. forecast_smollm2)")
    a.add_argument(
        "--only", action="append", default=[], help="only runs whose id contains this (repeatable; wildcards: *)"
    )
    a.add_argument("--note", default="", help="a paragraph for the top of the md (e.g. how the grid deviates)")
    a.add_argument("--rescore", action="store_true", help="ignore cached scores (after changing an extrapolator)")
    a.add_argument("--score-only", action="store_true", help="score the cached runs, write no results")
    a.add_argument(
        "--fresh", action="store_true", help="ignore the committed results (default: keep their runs the cache lacks)"
    )
    a.add_argument(
        "--weights-only", action="store_true", help="weight-space skill only: no held-out accuracy of predictions"
    )
    r = sub.add_parser("render", help="write <name>.md again from the committed <name>.json (no cache needed)")
    r.add_argument("--out", type=Path, default=RESULTS)
    r.add_argument("--name", default="forecast", help="results file stem (e.g. forecast_smollm2)")
    args = parser.parse_args(argv)
    if args.command == "render":
        render(args.out, args.name)
    elif args.command == "collect":
        lengths = {"steps": args.steps, "large_prompts": args.large_prompts, "large_steps": args.large_steps}
        grid = GRIDS[args.model](**{k: v for k, v in lengths.items() if v is not None})
        collect(grid, args.workers, args.cache)
    else:
        if args.weights_only:  # each (H, h, variant) with accuracy costs a held-out evaluation of the model
            for name, support in MODELS.items():
                MODELS[name] = replace(support, accuracy_pairs=())
        runs = load_cache(args.cache, tuple(args.only))  # only those: a full-parameter run is GBs of snapshots
        analyze(
            runs,
            args.quick,
            args.out,
            cache=args.cache,
            rescore=args.rescore,
            score_only=args.score_only,
            note=args.note,
            name=args.name,
            only=tuple(args.only),
            fresh=args.fresh,
        )


if __name__ == "__main__":
    sys.exit(main())
