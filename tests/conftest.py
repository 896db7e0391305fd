"""Shared test set-up: single-threaded torch (CI has 2 cores), deterministic seeds, offline Hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

pytest_plugins = ["tests.segmenter_fixtures", "tests.demo_fixtures"]  # shared fixtures: tiny segmenter, demo models

try:
    import torch  # noqa: E402

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard requirement; the import error shows in the tests
    torch = None


@pytest.fixture(autouse=True)
def _seed() -> None:
    if torch is not None:
        torch.manual_seed(0)
