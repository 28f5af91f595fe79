"""One rule for test prerequisites: skip on a developer's machine, fail in CI.

CI (CI=true) always has ../shared/data and the `weed` binary from the test extra, so a
missing one there is a broken setup, never a silently skipped test.
"""

from __future__ import annotations

import os

import pytest


def need(available: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) the calling test when `what` is not available."""
    if available:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} is not available here")
