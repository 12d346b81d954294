"""Every test in this folder runs real processes (servers, workers, the command line): it is marked ``e2e``.

``pytest -m "not e2e"`` is then the fast layer; tests elsewhere that start server processes carry the marker
themselves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)
