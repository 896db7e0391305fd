"""An exact-message assertion shared by the tests that pin the messages users read."""

from __future__ import annotations

import re

import pytest


def raises_exactly(message: str, error: type[Exception] = ValueError):
    """``pytest.raises`` for ``error`` with exactly ``message``: the whole text, read literally (no pattern)."""
    return pytest.raises(error, match=f"^{re.escape(message)}$")
