"""Shared test helpers: compose configs with Hydra's compose API, outputs under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import scoregeo_cli  # noqa: F401  (sets HF_HUB_OFFLINE and the torchvision import fix)
from scoregeo_cli.app import CONF_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(overrides) -> DictConfig with output_root under tmp_path."""

    def _compose(overrides: list[str] | None = None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            return compose("config", overrides=[f"output_root={tmp_path}", *(overrides or [])],
                           return_hydra_config=False)

    yield _compose
    GlobalHydra.instance().clear()


def pytest_configure(config):
    """Tests run torch on SCOREGEO_TEST_THREADS threads (default 1, as `scoregeo run` does:
    on a shared 2-core machine one thread is fastest)."""
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("SCOREGEO_TEST_THREADS", "1")))
