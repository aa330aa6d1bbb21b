"""Model caches are built once, by one process, and published only when complete (rlvr_extrap.utils.files.build_once)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlvr_extrap.experiments.toy.model import default_toy_path, load_toy_model
from rlvr_extrap.utils.build import BuildError, build_once

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "RLVR_EXTRAP_CACHE": str(cache), "PYTHONPATH": str(ROOT)}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".stale-" in p.name)


@pytest.mark.distributed
def test_two_ranks_racing_on_an_empty_cache_both_load_the_one_complete_toy(tmp_path):
    """Both ranks of a gloo group load `toy` from an empty cache at once (rank 1 used to publish a folder
    without config or weights: save_pretrained writes nothing on a rank other than 0)."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    command = ["torchrun", "--standalone", "--nproc_per_node", "2", str(TESTS / "cache_race_script.py"), str(out)]
    done = subprocess.run(command, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r.get("error") for r in reports] == [None, None], reports
    assert reports[0]["weights"] == reports[1]["weights"]
    assert sorted(p.name for p in (cache / "toy-v1").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert not _leftovers(cache)


BUILDER = """
import sys, time
from pathlib import Path
from rlvr_extrap.utils.build import build_once

path, log = Path(sys.argv[1]), Path(sys.argv[2])
def build(tmp):
    with log.open("a") as f:
        f.write("built\\n")
    for name in ("a", "b", "c"):  # slowly, so that the other process arrives while this one builds
        time.sleep(0.5)
        (tmp / name).write_text(name)
def complete(p):
    return all((p / n).is_file() for n in "abc")
build_once(path, complete, build)
print(sorted(q.name for q in path.iterdir()))
"""


def test_two_processes_racing_on_an_empty_cache_build_once(tmp_path):
    path, log = tmp_path / "cache" / "thing", tmp_path / "log"
    command = [sys.executable, "-c", BUILDER, str(path), str(log)]
    racers = [subprocess.Popen(command, env=_env(tmp_path), stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [racer.communicate(timeout=300)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0]
    assert log.read_text() == "built\n"  # one builder; the other waited and found it complete
    assert [line.strip() for line in outputs] == ["['a', 'b', 'c']"] * 2
    assert not _leftovers(path.parent)


def test_an_incomplete_build_is_never_published(tmp_path):
    path = tmp_path / "thing"

    def build(tmp: Path) -> None:
        (tmp / "a").write_text("a")  # "b" never written: what rank 1's save_pretrained left

    with pytest.raises(BuildError) as info:
        build_once(path, lambda p: (p / "a").is_file() and (p / "b").is_file(), build)
    assert str(info.value) == f"{path}: the build wrote an incomplete folder (a); nothing was published; run again"
    assert not path.exists() and not _leftovers(tmp_path)


KILLED = """
import sys
from rlvr_extrap.experiments.toy.model import load_toy_model
load_toy_model()
"""


def test_a_killed_toy_build_publishes_nothing_and_the_next_load_builds_it(tmp_path):
    """SIGKILL to the loading process and its builder mid-build; the next load cleans up and builds."""
    cache = tmp_path / "cache"
    loader = subprocess.Popen(
        [sys.executable, "-c", KILLED], env=_env(cache), stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while not list(cache.glob(".toy-v1.tmp-*")):  # the builder has started
            assert loader.poll() is None, "the load ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(loader.pid, signal.SIGKILL)  # the loader and its builder process, as a kill of the job would
        loader.wait()
    assert not (cache / "toy-v1").exists() and _leftovers(cache)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLVR_EXTRAP_CACHE", str(cache))
        model, _ = load_toy_model()
        assert default_toy_path() == cache / "toy-v1"
    assert model.num_parameters() > 0 and not _leftovers(cache)
