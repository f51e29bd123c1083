"""Fixtures shared by every test directory."""

import pytest


@pytest.fixture(scope="session")
def prompt():
    """The instruction the decoding tests decode (one place, so every test decodes the same)."""
    return "go forward two meters then turn left"
