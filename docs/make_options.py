"""Write docs/options.md, the options reference, from ``dataclasses.fields(ExtrapolationArguments)``.

``python docs/make_options.py`` writes the page; ``python docs/make_options.py --check`` exits 1 when the
committed page differs from what the fields would give. The groups and the options most users set are read from
the class docstring (HfArgumentParser hands every ``field(metadata=...)`` key to argparse, so they cannot live in
the metadata); the measurements behind some defaults are in ``NOTES`` below, each with the results file it is
copied from, so that the help strings say only what an option does and refuses.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from dataclasses import MISSING, Field, fields
from pathlib import Path

from rlvr_extrap.config import ExtrapolationArguments

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "options.md"
REGENERATE = "python docs/make_options.py"
COMMON_HEADING = "Most users set"
FIELD_NAME = re.compile(r"\bextrap_\w+")
CODE = re.compile(r"(\bextrap_\w+|[\w./-]*<\w+>[\w./<>-]*)")  # field names and paths such as <output_dir>/extrap/

# field name -> (results file, measurement copied from it): rendered as the page's "Notes" section
NOTES: dict[str, tuple[str, str]] = {
    "extrap_worker_threads": (
        "benchmarks/results/overhead.md",
        'On SmolLM2 trained on 2 CPU cores (section "smollm2, worker threads 2 (before) and 1"), the median '
        "training step was 1.396 times the vanilla one with 2 worker threads, and 0.990 times with 1.",
    ),
    "extrap_min_skill": (
        "benchmarks/results/forecast.md",
        'Over the whole toy regime map (table "Other bars", judged by weights), 0.76 of the jumps a bar of 0.2 '
        "let through were good, against 0.67 at a bar of 0; the gate's calls were right 0.78 of the time at both.",
    ),
    "extrap_guard": (
        "benchmarks/results/steps_saved_guard.md",
        "On the embedded toy the probe (5 greedy passes over 32 train prompts) cost 0.012 of the run with relex "
        "from base and 0.008 with linear local (w=6), means over seeds.",
    ),
}


def _docstring_sections(cls: type) -> tuple[dict[str, list[str]], list[str]]:
    """The ``> Group: fields`` paragraphs and the ``Most users set:`` list of the class docstring."""
    groups: dict[str, list[str]] = {}
    common: list[str] = []
    current: list[str] | None = None
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
        if line.startswith("> "):
            name, _, rest = line[2:].rpartition(":")
            current = groups.setdefault(name.strip(), [])
        elif line.startswith(f"{COMMON_HEADING}:"):
            current, rest = common, line
        elif not line.strip():
            current = None
            continue
        else:
            rest = line
        if current is not None:
            current.extend(FIELD_NAME.findall(rest))
    return groups, common


def option_groups(cls: type = ExtrapolationArguments) -> dict[str, list[Field]]:
    """Group name -> its fields, in the docstring's order; raises ValueError unless each field is in one group."""
    by_name = {f.name: f for f in fields(cls)}
    groups, _ = _docstring_sections(cls)
    listed = [name for names in groups.values() for name in names]
    unknown = sorted(set(listed) - set(by_name))
    missing = sorted(set(by_name) - set(listed))
    twice = sorted({name for name in listed if listed.count(name) > 1})
    if unknown or missing or twice:
        raise ValueError(
            f"{cls.__name__}'s docstring groups must name every field once: not fields {unknown}, "
            f"in no group {missing}, in several {twice}"
        )
    no_help = [name for name in listed if not by_name[name].metadata.get("help")]
    if no_help:
        raise ValueError(f"fields without a help string: {no_help}")
    return {group: [by_name[name] for name in names] for group, names in groups.items()}


def common_options(cls: type = ExtrapolationArguments) -> list[Field]:
    """The fields the docstring's ``Most users set:`` paragraph names, in its order."""
    by_name = {f.name: f for f in fields(cls)}
    _, common = _docstring_sections(cls)
    unknown = [name for name in common if name not in by_name]
    if unknown:
        raise ValueError(f"{COMMON_HEADING!r} names {unknown}, which are not fields of {cls.__name__}")
    return [by_name[name] for name in common]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _cell(text: str) -> str:
    """Plain text for a table cell: field names and paths as code, pipes and other angle brackets escaped."""
    parts = CODE.split(text.replace("|", "\\|"))
    return "".join(f"`{part}`" if i % 2 else part.replace("<", "&lt;") for i, part in enumerate(parts))


def _type(f: Field, cls: type) -> str:
    # The annotation as written (a string under ``from __future__ import annotations``), not ``f.type``: transformers'
    # HfArgumentParser replaces ``f.type`` with the resolved class in place, so it depends on what ran before.
    annotation = next(
        k.__dict__["__annotations__"][f.name] for k in cls.__mro__ if f.name in k.__dict__.get("__annotations__", {})
    )
    annotation = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return " or ".join(f"`{part}`" for part in annotation.split(" | "))


def _default(f: Field) -> str:
    value = f.default_factory() if f.default_factory is not MISSING else f.default
    return f"`{value!r}`"


def _summary(help_text: str) -> str:
    """The help's first sentence."""
    return help_text.split(". ", maxsplit=1)[0].rstrip(".")


def render(cls: type = ExtrapolationArguments) -> str:
    """The options page for ``cls``."""
    groups = option_groups(cls)
    group_of = {f.name: group for group, group_fields in groups.items() for f in group_fields}
    lines = [
        f"<!-- Generated by docs/make_options.py from {cls.__name__}; do not edit. Regenerate: {REGENERATE} -->",
        "",
        "# Options",
        "",
        "Every option is a field of `ExtrapolationArguments`, which `ExtrapGRPOConfig` (a `GRPOConfig` subclass) "
        "mixes in, and a command-line flag through `TrlParser`. Extrapolation is off until `--extrap_method` is set.",
        "",
        "## The options most runs set",
        "",
        "| flag | default | what it does |",
        "|---|---|---|",
    ]
    lines += [
        f"| [`--{f.name}`](#{_anchor(group_of[f.name])}) | {_default(f)} | {_cell(_summary(f.metadata['help']))} |"
        for f in common_options(cls)
    ]
    for group, group_fields in groups.items():
        lines += ["", f"## {group}", "", "| flag | type | default | what it does |", "|---|---|---|---|"]
        lines += [
            f"| `--{f.name}` | {_type(f, cls)} | {_default(f)} | {_cell(f.metadata['help'])} |" for f in group_fields
        ]
    notes = [(name, NOTES[name]) for name in group_of if name in NOTES]
    if notes:
        lines += ["", "## Notes", "", "Measurements behind some defaults, copied from the results files named."]
        lines += [""] + [f"- `--{name}` ([{source}](../{source})): {text}" for name, (source, text) in notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed page differs; write nothing")
    args = parser.parse_args(argv)
    page = render(ExtrapolationArguments)  # the module's name, so a test can swap the class
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != page:
            print(f"{PAGE.relative_to(ROOT)} differs from the config fields; run: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
