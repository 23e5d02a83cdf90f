"""Shared fixtures: real Anny, real renderers, real shards (small images keep the suite fast)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.recipes import small_recipe

# Anny builds ~800 MB of model data on first use: keep one cache for the whole test session
# (and across CI runs on the same machine) instead of one per test.
os.environ.setdefault("SYNTHGEN_CACHE_DIR", str(Path.home() / ".cache" / "synthgen"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def anny_factory():
    from synthgen.images import ImageFactory

    return ImageFactory(small_recipe(image={"width": 256, "height": 256}))


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    """One real dataset written by the real pipeline (6 samples, 3 shards), reused by readers."""
    from synthgen.run import generate

    out = tmp_path_factory.mktemp("dataset")
    recipe = small_recipe(output={"shard_size": 2, "vertices": True})
    generate(recipe, out, workers=1, progress=False)
    return out, recipe


@pytest.fixture
def network_attempts(monkeypatch):
    """Addresses that code under test tried to connect to (each attempt fails at once): "fails
    at once" means no download is even tried, which a wall-clock bound cannot show on a busy machine."""
    import socket

    attempts = []

    def refuse(sock, address, *args):
        attempts.append(address)
        raise OSError(f"tests: no network ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts
