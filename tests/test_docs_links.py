"""Every relative link, anchor and repository path the README and docs/ name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"`((?:benchmarks|recipes|rlvr_extrap|tests|docs)/[^`\s*<]*)`")  # globs and placeholders skipped


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.*)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def broken(page: Path) -> list[str]:
    text, found = page.read_text(), []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            found.append(f"link {target}")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            found.append(f"anchor {target}")
    for raw in PATH.findall(text):
        stem = raw.replace("...", "").rstrip("/")
        if "{" in stem:  # `benchmarks/results/x.{md,json}`
            head, options, tail = re.match(r"(.*)\{(.*)\}(.*)", stem).groups()
            candidates = [head + option + tail for option in options.split(",")]
        else:
            candidates = [stem]
        found += [f"path {c}" for c in candidates if not (ROOT / c).exists()]
    return found


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_links_and_paths_resolve(page: Path) -> None:
    assert broken(page) == []


def test_the_check_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n[a](missing.md) [b](#title) [c](#nowhere) `benchmarks/no_such_file.py`\n")
    assert broken(page) == ["link missing.md", "anchor #nowhere", "path benchmarks/no_such_file.py"]
