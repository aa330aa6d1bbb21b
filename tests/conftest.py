"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rlvr_extrap.toy import build_toy_model, default_toy_path


@pytest.fixture(scope="session")
def toy_model_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the toy model once per session in a temporary cache that `RLVR_EXTRAP_CACHE` points at."""
    cache = tmp_path_factory.mktemp("rlvr_extrap_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLVR_EXTRAP_CACHE", str(cache))
        yield build_toy_model(default_toy_path(), progress=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "distributed: launches multi-process (torchrun, gloo on CPU) training; deselect with -m 'not distributed'",
    )
