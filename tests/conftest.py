"""Shared fixtures: real images under ../shared/data (skipped when absent), PyTorch reference."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-image folder `../shared/data`; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real images not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def torch():
    """PyTorch (CPU), the independent reference for parity tests."""
    return pytest.importorskip("torch")
